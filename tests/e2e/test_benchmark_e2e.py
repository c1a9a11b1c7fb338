"""python -m drl_tune.benchmark end to end: two datasets, joint, DRL and a method from a file outside the package,
on a local Ray; interrupted after the first dataset's answer and resumed; the table in every format holds every
method, and its numbers are the studies' answers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.test_study_e2e import tiny_sets
from tests.methods.test_user_methods import GOOD

SPACE = """\
name: {name}
dataset: {{name: synthetic, synthetic.seed: {seed}}}
fixed: {{threads: 1, epochs: 2}}
defaults: {{method: joint, lr: 0.05, drl.diagnosis_interval: 1, drl.max_reinits: 1}}
search:
  method: {{type: choice, values: [joint, drl]}}
  lr: {{type: loguniform, low: 0.02, high: 0.08}}
scheduler: {{type: none}}
study: {{num_samples: 2, max_concurrent: 2, seed: 0, max_failures: 0}}
resources: {{cpus_per_trial: 1}}
"""


@pytest.mark.slow
def test_a_two_dataset_benchmark_with_a_users_method_resumes_to_its_table(tmp_path):
    method_file = tmp_path / "elsewhere" / "smooth.py"
    method_file.parent.mkdir()
    method_file.write_text(GOOD)
    spaces = []
    for name, seed in (("set_a", 1), ("set_b", 2)):
        spaces.append(tmp_path / f"{name}.yaml")
        spaces[-1].write_text(SPACE.format(name=name, seed=seed))
    storage = tmp_path / "studies"
    common = ["--name", "B", "--storage", str(storage), "--progress-interval", "600"]
    first = subprocess.Popen([sys.executable, "-m", "drl_tune.benchmark", "--spaces", *map(str, spaces), "--methods",
                              "joint,drl,smooth_ce", "--methods-from", str(method_file), "--confirm-seeds", "2",
                              *common, *tiny_sets()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=tmp_path, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 600
    assert first.stdout is not None
    for line in first.stdout:  # stop the benchmark once its first dataset is answered
        lines.append(line)
        if "[1/2] set_a: answered in" in line:
            os.killpg(first.pid, signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(lines[-50:])
    first.communicate(timeout=300)
    assert (storage / "B" / "studies" / "set_a" / "answer.json").is_file(), "".join(lines[-50:])
    method_file.unlink()  # the benchmark recorded the file's text
    done = subprocess.run([sys.executable, "-m", "drl_tune.benchmark", "--resume", *common], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "[1/2] set_a: answered already" in out and "[2/2] set_b: " in out
    folder = storage / "B"
    for suffix in ("md", "tex", "csv", "json", "html"):
        text = (folder / f"table.{suffix}").read_text()
        assert "smooth" in text and "drl" in text and "joint" in text, suffix
    table = json.loads((folder / "table.json").read_text())
    rows = list(csv.DictReader((folder / "table.csv").open()))
    assert rows
    for label in ("set_a", "set_b"):
        answer = json.loads((folder / "studies" / label / "answer.json").read_text())
        for config in answer["configs"]:
            mean = config["stats"]["test/acc_at_best_val"]["mean"]
            assert round(mean, 6) in _numbers(table), (label, config["method"])  # the answer's own number
    assert (folder / "mlflow.db").is_file()


def _numbers(obj) -> set[float]:
    if isinstance(obj, dict):
        return set().union(*(_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_numbers(v) for v in obj)) if obj else set()
    return {round(obj, 6)} if isinstance(obj, float) else set()
