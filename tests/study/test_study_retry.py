"""A trial that crashes mid-run is retried from its last checkpoint (``study.max_failures``) and ends with
exactly the metrics of a run that never crashed; MLflow keeps one child run with each epoch once.

The crash is injected in the Ray worker: the trial's ``tune.report`` raises once, right after the second
epoch's report (so a checkpoint of epoch 1 exists). Real Ray, real MLflow, real checkpoints.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.cloudpickle
from mlflow import MlflowClient

from drl_tune.run import main
from drl_tune.study import tune as study
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.training.config import make_config, parse_assignments
from drl_tune.training.engine import Engine
from tests.e2e.test_study_e2e import local_ray, tiny_sets  # noqa: F401  (local_ray is a fixture)

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint, lr: 0.05, epochs: 4}
search:
  fusion: {type: choice, values: [concat]}
scheduler: {type: none}
study: {num_samples: 1, max_concurrent: 1, seed: 0, max_failures: 1, confirm: {seeds: 0}}
resources: {cpus_per_trial: 1}
"""


def crash_once_after_epoch_1(marker: str):
    """``train_trial`` whose second report raises once (``marker`` records that it did; ``marker.epochs``
    every reported epoch of every attempt)."""

    def flaky_trial(config):
        import os

        from ray import tune

        from drl_tune.study import trainable as worker_trainable

        reports = []

        def report(metrics, checkpoint=None):
            tune.report(metrics, checkpoint=checkpoint)
            reports.append(metrics["epoch"])
            with open(marker + ".epochs", "a") as log:  # every epoch any attempt reported
                log.write(f"{int(metrics['epoch'])}\n")
            if len(reports) == 2 and not os.path.exists(marker):
                Path(marker).touch()
                raise RuntimeError("injected crash after epoch 1")

        worker_trainable.tune = SimpleNamespace(report=report, get_checkpoint=tune.get_checkpoint,
                                                Checkpoint=tune.Checkpoint)
        worker_trainable.train_trial(config)

    return flaky_trial


def test_crashed_trial_is_retried_from_its_checkpoint(local_ray, tmp_path, monkeypatch, capsys):  # noqa: F811
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    marker = tmp_path / "crashed"
    monkeypatch.setattr(study, "train_trial", crash_once_after_epoch_1(str(marker)))  # what make_trainable wraps
    space = tmp_path / "retry.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "studies"
    code = main(["--space", str(space), "--storage", str(storage), "--name", "retry", "--progress-interval", "0",
                 *tiny_sets()])
    out = capsys.readouterr().out
    assert code == 0, out
    assert marker.exists()  # the crash did happen
    # the retry resumed after epoch 1 (from scratch would have reported 0, 1, 0, 1, 2, 3)
    assert Path(str(marker) + ".epochs").read_text().split() == ["0", "1", "2", "3"]

    plan = Plan.from_json((storage / "retry" / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the retry continued the same child run
    history = client.get_metric_history(runs[0].info.run_id, "val/acc")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3]

    # the same configuration, never interrupted, in this process
    values = parse_assignments([a.removeprefix("--set=") for a in tiny_sets()])
    config = make_config(values | {"threads": 1, "method": "joint", "lr": 0.05, "epochs": 4, "fusion": "concat"})
    engine = Engine(config)
    expected = [engine.run_epoch()["val/acc"] for _ in range(4)]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected, abs=1e-9)
