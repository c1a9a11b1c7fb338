"""The single-run CLI: a real run writes per-epoch JSON; bad input gives one clear message and exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from drl_tune.methods import REGISTRY
from drl_tune.train import main
from tests.conftest import TINY

TINY_SETS = [f"--set={k}={v}" for k, v in TINY.items()]


def test_train_writes_one_json_line_per_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--space", "demo", *TINY_SETS, "--set", "epochs=3", "--set", "method=drl",
                 "--set", "drl.diagnosis_interval=1", "--set", "drl.max_reinits=1", "--out", str(out)])
    assert code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert "diag/alpha_audio" in rows[1] and "diag/alpha_audio" not in rows[2]
    printed = capsys.readouterr().out
    assert printed.count("epoch ") >= 3 and "re-init α" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "drl" and config["drl.diagnosis_interval"] == 1 and config["epochs"] == 3


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_two_demo_epochs_through_the_command(method, tmp_path):
    """``python -m drl_tune.train --space demo --set method=NAME --set epochs=2`` for every registered method, with
    the demo's official settings for it (tiny data): two epochs, each with finite loss and accuracies."""
    out = tmp_path / "run"
    assert main(["--space", "demo", *TINY_SETS, "--set", f"method={method}", "--set", "epochs=2", "--out", str(out),
                 "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["train/loss"]) and 0.0 <= r["val/acc"] <= 1.0 for r in rows), rows


def test_train_resume_continues_the_log(tmp_path):
    out = tmp_path / "run"
    assert main(["--space", "demo", *TINY_SETS, "--set", "epochs=2", "--out", str(out), "--quiet"]) == 0
    assert main(["--space", "demo", *TINY_SETS, "--set", "epochs=3", "--out", str(out), "--quiet", "--resume"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


@pytest.mark.parametrize(("assignment", "message"), [
    ("method=nope", "unknown method 'nope'; registered methods: " + ", ".join(sorted(REGISTRY))),
    ("learning_rate=0.1", "unknown key 'learning_rate'"),
    ("drl.alpah=1", "unknown key 'drl.alpah'"),
    ("drl.lam=-1", "drl.lam must be a finite number >= 0"),
    ("drl.diagnosis_interval=0", "drl.diagnosis_interval must be an integer >= 1, got 0"),
    ("drl.n_clusters=1", "drl.n_clusters must be an integer >= 2, got 1"),
    ("opm.q_base=2", "opm.q_base must be a number in [0, 1], got 2.0"),
    ("valuation.level=batch", "valuation.level must be one of sample, modality"),
    ("epochs=many", "epochs must be an integer"),
    ("fusion=mean", "unknown fusion 'mean'"),
    ("optimizer=rmsprop", "optimizer must be 'sgd' or 'adam'"),
    ("data.name=imagenet", "unknown dataset 'imagenet'"),
    ("noequals", "--set expects key=value"),
])
def test_bad_input_gives_one_clear_message_and_exit_2(assignment, message, tmp_path, capsys):
    code = main(["--space", "demo", *TINY_SETS, "--set", assignment, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "x" / "metrics.jsonl").exists()  # nothing started


def test_unknown_space_names_the_known_ones(capsys):
    assert main(["--space", "no_such_space"]) == 2
    err = capsys.readouterr().err
    assert "no search space named 'no_such_space'" in err and "demo" in err


def test_bad_input_exits_non_zero_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "drl_tune.train", "--space", "demo", "--set", "drl.lam=-2",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "drl.lam must be a finite number >= 0, got -2.0" in proc.stderr
    assert "Traceback" not in proc.stderr
