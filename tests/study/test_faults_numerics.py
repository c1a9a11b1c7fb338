"""Bad numerics: a trial whose loss turns non-finite ends errored — with the reason in the summary table and
on its MLflow run (FAILED, tag ``drl_tune.error``) — without retries that would only diverge again (runs
restore exactly), and the study goes on; the best configuration ignores the errored trial."""

from __future__ import annotations

import shutil
import tempfile
import textwrap

import pytest
import ray
from mlflow import MlflowClient

from drl_tune.run import main
from drl_tune.study.faults import ERROR_FILE
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.study.tracking import ERROR_TAG
from tests.conftest import init_local_ray
from tests.e2e.test_study_e2e import tiny_sets

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint}
defaults: {lr: 0.05}
search:
  lr: {type: choice, values: [0.05, 1.0e+6]}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 1, seed: 0, max_failures: 2, confirm: {seeds: 0}, overrides: {epochs: 2}}
resources: {cpus_per_trial: 1}
"""


@pytest.fixture
def private_ray():
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    init_local_ray(attempts=2, _temp_dir=folder)
    yield
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def test_nonfinite_trial_errors_with_its_reason_and_the_study_goes_on(private_ray, tmp_path, capsys):
    space = tmp_path / "nan.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "studies"
    code = main(["--space", str(space), "--storage", str(storage), "--name", "nan", "--progress-interval", "0",
                 *tiny_sets()])
    out = capsys.readouterr().out
    assert code == 0, out  # one trial errored, the other completed: the study succeeded
    summary = out[out.index("search of study 'nan'"):]
    assert "errored trials:" in summary and "FloatingPointError: training loss became" in summary, summary

    plan = Plan.from_json((storage / "nan" / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    by_lr = {float(r.data.params["lr"]): r for r in runs}
    assert sorted(by_lr) == [0.05, 1e6]
    bad, good = by_lr[1e6], by_lr[0.05]
    assert bad.info.status == "FAILED" and bad.data.tags["drl_tune.outcome"] == "error"
    assert bad.data.tags[ERROR_TAG].startswith("FloatingPointError: training loss became"), bad.data.tags
    assert good.info.status == "FINISHED" and ERROR_TAG not in good.data.tags
    best_trial = summary.splitlines()[3].split()[1]  # the joint row's "best trial" column
    assert best_trial == good.data.tags["drl_tune.trial_id"]

    # the retries (max_failures 2) stopped at once instead of diverging again from the checkpoint
    folder = next(p for p in (storage / "nan").glob("joint_*") if (p / ERROR_FILE).exists())
    errors = (folder / "error.txt").read_text()
    assert errors.count("Failure #") == 3 and errors.count("drl_tune.study.faults.RepeatedFailure: ") == 2, errors
