"""A study interrupted mid-way (SIGINT to the driver, as Ctrl-C) resumes with ``--resume`` and ends with
exactly the requested number of trials, each with exactly one MLflow child run and one value per epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from drl_tune.plan import PLAN_FILE, Plan
from tests.conftest import TINY

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1}
defaults: {method: drl, lr: 0.05, drl.diagnosis_interval: 2, drl.max_reinits: 1}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: loguniform, low: 0.01, high: 0.1}
scheduler: {type: none}
study: {num_samples: 4, max_concurrent: 1, seed: 1, overrides: {epochs: 5}, confirm: {seeds: 0}}
resources: {cpus_per_trial: 1}
"""

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, sets: bool = True) -> list[str]:
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("epochs", "lr", "threads")]
    return [sys.executable, "-m", "drl_tune.run", *args, *(tiny if sets else [])]


@pytest.mark.slow
def test_interrupted_study_resumes_to_exactly_the_requested_trials(tmp_path):
    space = tmp_path / "resume.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "studies"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(cli("--space", str(space), "--storage", str(storage), "--name", "r"),
                             stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while "terminated" not in (tmp_path / "first.log").read_text():  # one trial done, the next running
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(1)
    time.sleep(4)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()
    assert "finish it with  python -m drl_tune.run --resume --name r" in (tmp_path / "first.log").read_text()

    done = subprocess.run(cli("--resume", "--storage", str(storage), "--name", "r", sets=False), capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "search of study 'r' (4 trials" in done.stdout

    plan = Plan.from_json((storage / "r" / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert len(runs) == 4 and len({r.data.tags["drl_tune.trial_id"] for r in runs}) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert sorted(steps) == list(range(5)), steps  # every epoch once, none lost or repeated
    assert client.get_run(plan.parent_run_id).info.status == "FINISHED"
    # the interrupted trial continued from its checkpoint: no trial ever started over at epoch 0
    for result in (storage / "r").glob("*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs.count(0) == 1 and max(epochs) == 4, (result, epochs)
