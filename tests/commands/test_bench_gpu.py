"""``python -m drl_tune.bench gpu``: the one-shot GPU measurement runs end to end at tiny sizes on a CPU with
Ray, MLflow, Optuna and tqdm unimportable (the lent GPU machines have none of them), and its arithmetic — ASHA's
epochs, the gpus_per_trial rule — computes what it says. Its measured figures are not asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from drl_tune.bench import gpu as bench_gpu
from drl_tune.bench import gpu_steps
from drl_tune.bench.gpu import PERF_OFF, TINY, main, nvidia_smi
from drl_tune.bench.gpu_projection import asha_expected_epochs, asha_rungs, recommend_gpus_per_trial, simulate_asha
from drl_tune.bench.gpu_steps import _footprint_mb

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("ray", "mlflow", "optuna", "tqdm")
EVERY_STEP = {"machine", "cache", "train", "profile", "concurrency_2", "reference", "train_off", "projection",
              "kmeans_sizes", "compile", "overhead", "study", "data"}
SHIM = f'''
import sys

# as on the GPU machines: these packages are not there ("import ray" raises ModuleNotFoundError and
# importlib.util.find_spec("ray") is None, as for a package that is not installed)
for name in {BLOCKED!r}:
    sys.modules[name] = None
'''


def test_asha_epochs_of_the_cremad_space():
    # rungs at 25 and 75 (25·3² = 225 > 90); all 40 trials train 25 epochs, a third 50 more, a ninth 15 more
    assert asha_rungs(90, 25, 3) == [25, 75]
    assert asha_expected_epochs(40, 90, 25, 3) == pytest.approx(40 * 25 + 40 / 3 * 50 + 40 / 9 * 15)
    assert asha_rungs(16, 1, 2) == [1, 2, 4, 8, 16]
    assert asha_expected_epochs(16, 16, 1, 2) == pytest.approx(16 * (1 + 1 / 2 + 2 / 4 + 4 / 8 + 8 / 16))


def test_asha_simulation_bounds():
    one = simulate_asha(1, 90, 25, 3, concurrency=1, repeats=3)
    assert one["mean"] == 90  # the first trial at a rung always goes on
    sim = simulate_asha(40, 90, 25, 3, concurrency=8, repeats=50)
    # at least every trial's first rung, at most every trial to the end; asynchrony promotes more than the formula
    assert 40 * 25 <= sim["min"] <= sim["mean"] <= sim["max"] <= 40 * 90
    assert sim["mean"] >= asha_expected_epochs(40, 90, 25, 3) * 0.95


def test_gpus_per_trial_rule():
    def row(rate: float, mb: float) -> dict:
        return {"aggregate_samples_per_s": rate, "footprint": {"per_process_mb": mb}}

    # 80 GB, 4 GB per trial: 16 fit; throughput saturates at 4 (8 is within 5% of the best, 2 is not) -> 4 per
    # GPU: as many as the throughput needs, no more (ASHA decides sooner with fewer trials at a time)
    rec = recommend_gpus_per_trial(80_000, {1: row(1000, 4000), 2: row(1700, 4000), 4: row(2000, 4000),
                                            8: row(1960, 4100)})
    assert rec["trials_per_gpu"] == 4 and rec["gpus_per_trial"] == 0.25 and rec["most_measured_that_fit"] == 8
    assert rec["fit_by_memory"] == int(80_000 // (4100 * 1.2))
    # memory binds: 30 GB per trial fits twice in 80 GB with the 1.2 margin, so 4 is not recommended
    rec = recommend_gpus_per_trial(80_000, {1: row(1000, 30_000), 2: row(1500, 30_000), 4: row(1600, 30_000)})
    assert rec["trials_per_gpu"] == 2 and rec["gpus_per_trial"] == 0.5
    assert recommend_gpus_per_trial(None, {1: row(1, 1)})["gpus_per_trial"] is None


def _fake_nvidia_smi(folder: Path, gpu_line: str) -> None:
    fake = folder / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\ncase "$1" in\n  --query-gpu=*) echo "{gpu_line}";;\n'
                    '  *) printf "101, 4000\\n202, 4100\\n303, [N/A]\\n";;\nesac\n')
    fake.chmod(0o755)


def test_nvidia_smi_figures_and_the_per_process_footprint(tmp_path, monkeypatch):
    """The GPU-only parsing, with a stand-in nvidia-smi: per-process memory when it lists every worker, else the
    peak reserved memory + the machine step's CUDA context."""
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_nvidia_smi(tmp_path, "12345, 81559")
    smi = nvidia_smi()
    assert smi == {"used_mb": 12345.0, "total_mb": 81559.0, "apps_mb": {"101": 4000.0, "202": 4100.0}}
    run = SimpleNamespace(result={"steps": {"machine": {"context_mb": 500.0}}})
    workers = [{"pid": 101, "memory": {"max_reserved_mb": 3000.0}}, {"pid": 202, "memory": {"max_reserved_mb": 3200.0}}]
    listed = _footprint_mb(run, {"workers": workers, "nvidia_smi": smi})
    assert listed["per_process_mb"] == 4100.0 and "nvidia-smi" in listed["source"]
    unlisted = _footprint_mb(run, {"workers": [{**w, "pid": 999} for w in workers], "nvidia_smi": smi})
    assert unlisted["per_process_mb"] == 3200.0 + 500.0 and unlisted["all_mb"] == [3500.0, 3700.0]
    _fake_nvidia_smi(tmp_path, "[N/A], [N/A]")  # MIG slices and some containers
    assert "error" in nvidia_smi()


def test_a_failing_gpu_path_leaves_the_other_steps_measured_with_it_off(tmp_path, monkeypatch):
    """One device session is all there is: when the GPU-path training step fails, train_off (with the evaluation)
    becomes the baseline and the concurrent processes run with every perf.* switch off. Orchestration only: the
    steps that would start processes are replaced (the smoke test below runs them)."""
    calls, specs = [], []

    def fake_train(run, name, overrides, with_eval):
        calls.append((name, overrides, with_eval))
        if name == "train":
            raise RuntimeError("bf16 kernel missing")
        return {"samples_per_s": 100.0, "footprint": {"per_process_mb": None}}

    def fake_launch(launch_specs, work, timeout_s):
        specs.extend(launch_specs)
        worker = {"t0": 0.0, "t1": 2.0, "samples": 100, "train_epoch_s": [2.0], "memory": {}, "pid": 1}
        return {"workers": [dict(worker) for _ in launch_specs], "nvidia_smi": None}

    monkeypatch.setattr(bench_gpu, "step_machine", lambda run: {"startup_s": 1.0})
    monkeypatch.setattr(bench_gpu, "step_cache", lambda run: {"path": str(tmp_path)})
    monkeypatch.setattr(bench_gpu, "step_train", fake_train)
    monkeypatch.setattr(gpu_steps, "launch", fake_launch)  # the concurrency step's own launcher
    monkeypatch.setattr(bench_gpu, "step_reference", lambda run: {"samples_per_s": 10.0})
    monkeypatch.setattr(bench_gpu, "step_projection", lambda run: {"assumptions": ["a"]})
    monkeypatch.setattr(bench_gpu, "step_kmeans_sizes", lambda run: {})
    monkeypatch.setattr(bench_gpu, "step_profile", lambda run: {})
    result = bench_gpu.run_gpu_bench(sizes=TINY, device="cpu", work=tmp_path, compile_step=False, log=lambda s: None)
    steps = result["steps"]
    assert steps["train"]["status"] == "error" and "bf16 kernel missing" in steps["train"]["error"]
    assert [c[0] for c in calls] == ["train", "train_off"] and calls[1] == ("train_off", PERF_OFF, True)
    assert result["baseline"] == "train_off" and steps["concurrency_2"]["status"] == "done"
    assert len(specs) == 2 and all(spec["overrides"].items() >= PERF_OFF.items() for spec in specs)
    assert steps["concurrency_2"]["speedup_vs_1"] == pytest.approx((200 / 2.0) / 100.0)
    assert steps["projection"]["status"] == "done" and result["summary"]["gpu.fallback_perf_off"] == 1.0


def test_steps_runs_only_the_steps_asked_for_and_what_they_need(tmp_path, monkeypatch):
    """--steps on a device session: machine and cache always run; a chosen step whose input step was not chosen
    is skipped with that reason, the others with 'not asked for'."""
    ran = []
    for name in ("step_machine", "step_cache", "step_train", "step_profile", "step_reference", "step_kmeans_sizes"):
        monkeypatch.setattr(bench_gpu, name, lambda *a, name=name, **k: ran.append(name) or {"samples_per_s": 1.0})
    result = bench_gpu.run_gpu_bench(sizes=TINY, device="cpu", work=tmp_path, log=lambda s: None,
                                     only=frozenset({"profile", "concurrency_2", "reference"}))
    steps = result["steps"]
    assert ran == ["step_machine", "step_cache", "step_profile", "step_reference"]
    assert steps["train"]["reason"] == "not asked for (--steps)" and steps["compile"]["status"] == "skipped"
    assert steps["concurrency_2"]["reason"] == "needs step 'train', which did not succeed"


def test_bad_arguments_stop_with_one_line(capsys):
    assert main(["--clips", "1"]) == 2
    assert "--clips must be >= 2" in capsys.readouterr().err
    assert main(["--concurrency", "2,four"]) == 2
    assert "--concurrency: expected comma-separated integers" in capsys.readouterr().err
    assert main(["--steps", "train,profil"]) == 2
    assert "--steps: unknown step(s) profil; known: machine, cache, train, profile" in capsys.readouterr().err


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


@pytest.mark.slow  # ~7 worker processes, each importing torch: 1-2 minutes on 2 cores
def test_bench_gpu_tiny_runs_without_ray_mlflow_optuna(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the shim works (and reaches workers)
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "drl_tune.bench", "gpu", "--tiny", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["steps"]
    assert set(steps) == EVERY_STEP
    for name, step in steps.items():
        assert step["status"] in ("done", "skipped"), (name, step)
        if step["status"] == "skipped":
            assert step["reason"], name
    # on a CPU every measuring step runs; compile waits for a GPU's budget, the Ray ones always skip
    assert {n for n, s in steps.items() if s["status"] == "done"} == EVERY_STEP - {"compile", "overhead", "study",
                                                                                    "data"}
    assert all(math.isfinite(x) for x in _numbers(steps))
    assert all(math.isfinite(v) and v > 0 for v in result["summary"].values())
    assert {"gpu.epoch_train_s", "gpu.epoch_ratio", "gpu.study_gpu_hours", "gpu.official_gpu_hours"} <= set(
        result["summary"])
    train = steps["train"]
    assert not any(train["perf"].values())  # the GPU path is off on a CPU
    assert "extrapolated" in train and train["epoch_train_s"] == pytest.approx(5954 / train["samples_per_s"])
    projection = steps["projection"]
    assert projection["asha_epochs_formula"] == pytest.approx(asha_expected_epochs(40, 90, 25, 3))
    assert projection["assumptions"] and result["assumptions"] == projection["assumptions"]
    assert len(steps["concurrency_2"]["per_process_samples_per_s"]) == 2
    profile = steps["profile"]
    assert profile["batches"] >= 1 and 0 < profile["host_batch_prep_fraction"] <= 1
    assert profile["top_host"] and all(row["calls"] >= 1 for row in profile["top_host"])
    for line in ("[machine]", "[train]", "[profile]", "[concurrency 2]", "[reference]", "[projection]",
                 "summary: gpu."):
        assert line in proc.stdout, line
