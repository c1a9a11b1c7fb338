"""End to end on a real (2-CPU, local) Ray and a real MLflow sqlite store, tiny settings.

A constructed space makes the outcomes certain: ``lr`` is a choice of a good rate, a rate so small the
model never moves (ASHA must stop it at its first rung), and a rate so large the loss turns non-finite
(that trial must error without taking the study down). Trials run one at a time, so ASHA sees the same
order every run.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from drl_tune.run import main
from drl_tune.study.faults import ERROR_FILE, WORKER_FILE
from drl_tune.study.history import read_result_json
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import TINY

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1}
defaults: {method: drl, lr: 0.05, drl.diagnosis_interval: 1, drl.max_reinits: 1}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: choice, values: [0.05, 1.0e-9, 1.0e+5]}
  drl.lam: {type: uniform, low: 1, high: 5}
scheduler: {type: asha, metric: val/acc_best, grace_period: 2, reduction_factor: 2}
study: {num_samples: 6, max_concurrent: 1, seed: 3, max_failures: 0, overrides: {epochs: 3}}
resources: {cpus_per_trial: 1}
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


def tiny_sets(**extra) -> list[str]:
    # 240 training samples at batch 16: the smallest set on which lr 0.05 clearly learns within 2 epochs
    values = {k: v for k, v in TINY.items() if k not in ("epochs", "lr", "threads")}
    values |= {"data.synthetic.n_train": 240, "batch_size": 16} | extra
    return [f"--set={k}={v}" for k, v in values.items()]


def children(client: MlflowClient, plan: Plan) -> list:
    return client.search_runs([plan.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")


def test_study_end_to_end(local_ray, tmp_path, capsys):
    space = tmp_path / "e2e.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "studies"
    code = main(["--space", str(space), "--storage", str(storage), "--name", "e2e", "--progress-interval", "0",
                 "--confirm-seeds", "0", *tiny_sets()])
    out = capsys.readouterr().out
    # the study's own output only: no Tune box, no TensorBoard hint (there is no TensorBoard logger at all)
    assert "Configuration for experiment" not in out and "TensorBoard" not in out, out[:3000]
    assert code == 0, out
    assert not list((storage / "e2e").rglob("events.out.tfevents*"))  # and no TensorBoard files
    assert list((storage / "e2e").glob("*/result.json")) and list((storage / "e2e").glob("*/progress.csv"))
    plan = Plan.from_json((storage / "e2e" / PLAN_FILE).read_text())
    assert plan.mlflow_uri == f"sqlite:///{(storage / 'e2e' / 'mlflow.db').resolve()}"
    assert sorted(p.name for p in storage.iterdir()) == ["e2e"]  # the database made ahead left no folder behind

    client = MlflowClient(plan.mlflow_uri)
    parent = client.get_run(plan.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["drl_tune.space"] == "e2e"
    assert {a.path for a in client.list_artifacts(plan.parent_run_id)} >= {"e2e.yaml", PLAN_FILE, "plan.txt",
                                                                          "summary.txt"}
    runs = children(client, plan)
    assert len(runs) == 6  # exactly one child run per trial: --confirm-seeds 0 added no confirmation
    assert {r.data.tags["drl_tune.stage"] for r in runs} == {"search"}
    assert not (storage / "e2e" / "confirm").exists() and not (storage / "e2e" / "answer.json").exists()
    assert len({r.data.tags["drl_tune.trial_id"] for r in runs}) == 6
    outcome = {r.data.tags["drl_tune.trial_id"]: r.data.tags.get("drl_tune.outcome") for r in runs}
    by_lr = {}
    for run in runs:
        params = run.data.params
        assert params["epochs"] == "3" and params["model.width"] == "4"  # the full flattened config
        assert ("drl.lam" in params) == (params["method"] == "drl")  # conditional keys only with their method
        by_lr.setdefault(float(params["lr"]), []).append(run)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert steps == list(range(len(steps)))  # step = epoch, each epoch once
        if outcome[run.data.tags["drl_tune.trial_id"]] != "error":
            assert len(client.get_metric_history(run.info.run_id, "balance/gap")) == len(steps) >= 2

    # the official setting ran first and ran to the end, with its DRL re-initialisation logged
    first = min(runs, key=lambda r: r.info.start_time)
    assert first.data.params["method"] == "drl" and float(first.data.params["lr"]) == 0.05
    assert first.data.params["drl.diagnosis_interval"] == "1"
    assert client.get_metric_history(first.info.run_id, "diag/reinits")[0].step == 1
    # ASHA stopped a trial that never learned; the exploding trial errored and the study went on
    assert {1e-9, 1e5} <= set(by_lr)
    assert any(outcome[r.data.tags["drl_tune.trial_id"]] == "stopped_early" for r in by_lr[1e-9])
    assert all(r.info.status == "FAILED" for r in by_lr[1e5])
    for run in by_lr[1e5]:  # the reason sits in the failed trial's own folder, also when its actor was reused
        folder = next((storage / "e2e").glob(f"*_{run.data.tags['drl_tune.trial_id']}"))
        assert "FloatingPointError" in json.loads((folder / ERROR_FILE).read_text())["reason"]
    assert all(r.info.status == "FINISHED" for r in by_lr[0.05])

    # actors are reused (study.REUSE_ACTORS): a trial after a finished or ASHA-stopped one runs in that trial's
    # worker process (no new Ray worker, no second import of torch), and trains exactly as a fresh Engine does
    ordered = sorted(runs, key=lambda r: r.info.start_time)
    folders = [next((storage / "e2e").glob(f"*_{r.data.tags['drl_tune.trial_id']}")) for r in ordered]
    pids = [json.loads((f / WORKER_FILE).read_text())["pid"] for f in folders]
    reused = [i for i in range(1, len(pids)) if pids[i] in pids[:i]]
    assert reused, pids
    trained = [i for i in reused if ordered[i].info.status == "FINISHED"]  # completed or stopped early
    assert trained, [r.info.status for r in ordered]
    for i in trained:
        rows = read_result_json(folders[i])
        engine = Engine(make_config(rows[0]["config"]))
        expected = [engine.run_epoch()["val/acc"] for _ in rows]
        assert [r["val/acc"] for r in rows] == pytest.approx(expected, abs=1e-9)

    summary = out.split("search of study 'e2e'")[1]
    assert "joint" in summary and "drl" in summary and "stopped early" in summary
    assert f"mlflow ui --backend-store-uri '{plan.mlflow_uri}'" in out
    assert ray.is_initialized()  # the study used the caller's Ray and left it running
    assert Path(storage / "e2e" / "e2e.yaml").is_file()
