"""``python -m drl_tune.bench``: every sub-benchmark runs at tiny sizes and writes its figures (not asserted:
they depend on the machine), and bad arguments stop with one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drl_tune.bench.cli import main

SUMMARY_KEYS = {"data.ratio", "epoch.ratio", "overhead.ratio", "diagnosis.fraction_of_epoch", "study.trials_per_hour"}


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_epoch_bench_runs_at_tiny_sizes(tmp_path):
    out = tmp_path / "b.json"
    assert main(["epoch", "--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for size in ("demo", "cremad"):
        row = result["epoch"]["sizes"][size]
        assert _finite_positive(row["engine_samples_per_s"]) and _finite_positive(row["reference_samples_per_s"])
        assert row["ratio"] == pytest.approx(row["engine_samples_per_s"] / row["reference_samples_per_s"])
        assert not any(row["perf"].values())  # the GPU path is off on a CPU
    assert result["summary"]["epoch.ratio"] == result["epoch"]["sizes"]["cremad"]["ratio"]


def test_data_and_diagnosis_benches_run_at_tiny_sizes(tmp_path):
    out = tmp_path / "b.json"
    assert main(["diagnosis", "--tiny", "--json", str(out)]) == 0
    diagnosis = json.loads(out.read_text())["diagnosis"]
    assert _finite_positive(diagnosis["fraction_of_epoch"]) and diagnosis["rows"][0]["n"] == 60
    assert main(["data", "--tiny", "--json", str(out)]) == 0
    data = json.loads(out.read_text())["data"]
    assert _finite_positive(data["ratio"]) and _finite_positive(data["eval_ratio"])


def test_bad_arguments_stop_with_one_line(capsys):
    with pytest.raises(SystemExit) as stop:  # the flag's domain is checked where argparse parses it
        main(["data", "--batch-size", "1"])
    assert stop.value.code == 2
    assert "argument --batch-size: must be an integer >= 2, got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.slow
def test_bench_all_tiny_writes_every_summary_key(tmp_path):
    """The whole command as a user runs it (one small Ray study and one Tune trial; --tiny runs the study at one
    --max-concurrent only, to keep CI short)."""
    out = tmp_path / "all.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "drl_tune.bench", "all", "--tiny", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["summary"]) >= SUMMARY_KEYS
    assert all(_finite_positive(result["summary"][k]) for k in SUMMARY_KEYS)
    assert [r["max_concurrent"] for r in result["study"]["rows"]] == [1]
    overhead = result["overhead"]
    assert overhead["epochs"] == 2 and overhead["fixed_s"] > 0
    # the second trial ran in the first one's worker (the studies' actor reuse), and the cold start-up was split
    assert overhead["warm_actor_reused"] is True and _finite_positive(overhead["warm_ratio"])
    breakdown = overhead["startup_breakdown"]
    assert set(breakdown) >= {"fit_to_worker_process_s", "worker_process_to_trainable_s", "trainable_to_first_epoch_s",
                              "mlflow_child_run_s", "import_ray_tune_s", "import_libraries_s", "import_drl_tune_s"}
    # a worker Ray prestarted before fit() counts 0 s from fit() to its process
    assert math.isfinite(breakdown["fit_to_worker_process_s"]) and breakdown["fit_to_worker_process_s"] >= 0
    assert all(_finite_positive(v) for k, v in breakdown.items() if k != "fit_to_worker_process_s"), breakdown
    assert "summary: data.ratio" in proc.stdout


def test_methods_bench_times_every_method_against_joint(tmp_path, capsys):
    """``bench methods``: each registered method's epochs in turns with joint's; the ratios are read back from the
    per-epoch CPU times it reports (not asserted against a speed: a timed test on a shared machine would flake)."""
    from drl_tune.methods import REGISTRY

    out = tmp_path / "methods.json"
    assert main(["methods", "--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["methods"]
    assert set(result["methods"]) == set(REGISTRY)
    times = result["cpu_seconds"]
    for name, ratios in result["methods"].items():
        assert len(times[name]) == 2 and all(t > 0 for t in times[name])
        assert ratios["first_epoch_ratio"] == pytest.approx(times[name][0] / times["joint"][0])
        assert ratios["epoch_ratio"] == pytest.approx(times[name][1] / times["joint"][1])
    printed = capsys.readouterr().out
    assert "CPU time per epoch relative to joint" in printed and "methods.gblending.epoch_ratio" in printed
    assert main(["methods", "--tiny", "--methods", "drl,nope"]) == 2
    assert "--methods: unknown method 'nope'" in capsys.readouterr().err
