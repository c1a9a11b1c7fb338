"""The diagnosis benchmark runs end to end at tiny sizes (its figures are not asserted)."""

from __future__ import annotations

import json
import math

import pytest

from drl_tune.bench.diagnosis_speed import main, restart_cost, run_diagnosis_bench


def test_diagnosis_bench_smoke():
    tiny_epoch = {"width": 2, "image_size": 16, "audio_frames": 16, "n_mels": 16, "batch_size": 2, "batches": 1,
                  "n_train": 40}
    result = run_diagnosis_bench([40], dim=8, device="cpu", restarts=1, epoch_kwargs=tiny_epoch, log=lambda s: None)
    d = result["diagnosis"]
    assert [r["n"] for r in d["rows"]] == [40]
    for row in d["rows"]:
        assert row["sklearn_s"] > 0 and row["torch_s"] > 0 and math.isfinite(row["ratio"])
        assert all(0 < p <= 1 for pair in row["sklearn_purity"] + row["torch_purity"] for p in pair)
    assert math.isfinite(d["fraction_of_epoch"]) and d["fraction_of_epoch"] > 0
    json.dumps(result)  # what --json writes


def test_diagnosis_bench_cli_rejects_bad_input(capsys):
    assert main(["--backends", "faiss", "--no-epoch"]) == 2
    assert "--backends: unknown 'faiss'" in capsys.readouterr().err
    assert main(["--sizes", "3", "--no-epoch"]) == 2


@pytest.mark.slow  # generates the demo data set and evaluates once
def test_restart_cost_smoke():
    cost = restart_cost(epochs=0, restarts=(1,), repeats=1, log=lambda s: None)
    assert cost["diagnosis_s"] > 0 and set(cost["extra_fraction"]) == {1}
