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

SUMMARY_KEYS = {"data.ratio", "epoch.ratio", "overhead.ratio", "diagnosis.fraction_of_epoch", "study.trials_per_hour",
                "study.overhead_ratio"}


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
    stages = result["study"]["breakdown"]  # the whole study (search, confirmation, report) split by stage
    assert {"ray_start_s", "setup_s", "search", "between_s", "confirmation", "answer_report_s",
            "shutdown_s"} <= set(stages)
    assert stages["search"]["trials"] == 2 and stages["confirmation"]["trials"] == 2
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


def _trial(folder: Path, name: str, epochs: list[tuple[float, float]]) -> None:
    """A trial folder whose result.json reports (time/epoch_s, time_this_iter_s) per epoch."""
    (folder / name).mkdir(parents=True)
    (folder / name / "result.json").write_text("".join(
        json.dumps({"epoch": e, "time/epoch_s": a, "time_this_iter_s": b}) + "\n" for e, (a, b) in enumerate(epochs)))


def test_study_cost_splits_the_wall_time_by_stage(tmp_path):
    """Hand-made output lines (arrival seconds) and trial folders: every figure computed here by hand. Two trials at
    a time; the search runs trials a (2 epochs) and b (1 epoch), the confirmation trial c."""
    from drl_tune.bench.study_cost import describe, study_cost

    _trial(tmp_path, "joint_a", [(2.0, 2.5), (2.0, 2.25)])  # 4 s compute, 0.75 s in-trial overhead
    _trial(tmp_path, "drl_b", [(3.0, 3.5)])                 # 3 s compute, 0.5 s
    _trial(tmp_path / "confirm", "joint_c", [(1.0, 1.5)])   # 1 s compute, 0.5 s
    lines = [(3.0, "ray: started a local Ray (2 CPUs, 0 GPUs) on 1 node in 1.5 s"), (3.5, "study 's': space demo"),
             (5.0, "[10:00:00] trial a started (joint, lr=0.01)"), (5.5, "[10:00:00] trial b started (drl, lr=0.01)"),
             (10.0, "[10:00:05] trial b finished (drl) after 1 epochs, best val acc 0.5"),
             (11.0, "[10:00:06] trial a finished (joint) after 2 epochs, best val acc 0.6"),
             (12.0, "search of study 's' (2 trials, 7 s): one seed per trial"),
             (13.0, "confirmation: the top 1 configuration(s) of each method ..."),
             (15.0, "[10:00:10] trial c started (joint, lr=0.01)"),
             (17.0, "[10:00:12] trial c finished (joint) after 1 epochs, best val acc 0.6"),
             (18.0, "answer of study 's' (15 s in all):"), (20.0, "results: runs/studies/s")]
    cost = study_cost(lines, 21.0, tmp_path, slots=2)
    st = cost["stages"]
    assert st["ray_start_s"] == 3.0 and st["setup_s"] == 2.0 and st["ray_init_s"] == 1.5
    search = st["search"]  # 5.0 -> 12.0: 7 s of wall, 14 slot-seconds; lifetimes a 6 s, b 4.5 s
    assert search["wall_s"] == pytest.approx(7.0) and search["trials"] == 2 and search["trial_epochs"] == 3
    assert search["compute_s"] == pytest.approx(7.0 / 2) and search["in_trial_overhead_s"] == pytest.approx(1.25 / 2)
    assert search["trial_startup_s"] == pytest.approx((10.5 - 7.0 - 1.25) / 2)
    assert search["idle_slots_s"] == pytest.approx((14.0 - 10.5) / 2)
    parts = ("compute_s", "in_trial_overhead_s", "trial_startup_s", "idle_slots_s")
    assert sum(search[k] for k in parts) == pytest.approx(search["wall_s"])
    assert st["between_s"] == pytest.approx(3.0)  # search's end -> the first confirmation trial started
    confirmation = st["confirmation"]  # 15 -> 18; c lived 2 s: 1 compute, 0.5 in-trial, 0.5 start-up
    assert confirmation["trials"] == 1 and confirmation["compute_s"] == pytest.approx(0.5)
    assert confirmation["trial_startup_s"] == pytest.approx(0.25) and confirmation["idle_slots_s"] == pytest.approx(2.0)
    assert st["answer_report_s"] == pytest.approx(2.0) and st["shutdown_s"] == pytest.approx(1.0)
    assert cost["compute_wall_s"] == pytest.approx(4.0)  # (7 + 1) s of trial compute, 2 at a time
    assert cost["overhead_ratio"] == pytest.approx(21.0 / 4.0)
    assert cost["overhead_ratio_after_ray_start"] == pytest.approx(18.0 / 4.0)
    assert "overhead_ratio 5.25x" in describe(cost)[0]
    # the goal: 1.2 x 4 s of compute + Ray's own 1.5 s start = 6.3 s, missed by 21 - 6.3 s
    assert cost["goal_s"] == pytest.approx(1.2 * 4.0 + 1.5) and not cost["meets_goal"]
    assert "goal: wall <= 1.2 x compute + Ray's own start = 6 s: missed by 15 s" in describe(cost)[1]


def test_study_cost_counts_a_confirmation_trial_started_during_the_search_in_both_stages(tmp_path):
    """A confirmation trial that started before the search's end (study.confirmation.EarlyConfirmation) counts in
    each stage for the part of its life inside it; the stages' parts still sum to their wall times, and the
    study's compute is every trial's, once."""
    from drl_tune.bench.study_cost import describe, study_cost

    _trial(tmp_path, "joint_a", [(2.0, 2.5), (2.0, 2.25)])  # search, 4 s compute, lives 5 -> 11
    _trial(tmp_path, "drl_b", [(3.0, 3.5)])                 # search, 3 s compute, lives 5.5 -> 10
    _trial(tmp_path / "confirm", "joint_c", [(4.0, 5.0)])   # confirmation, 4 s compute, lives 10 -> 16
    lines = [(3.0, "ray: started a local Ray (2 CPUs, 0 GPUs) on 1 node in 1.5 s"),
             (5.0, "[10:00:00] trial a started (joint, lr=0.01)"), (5.5, "[10:00:00] trial b started (drl, lr=0.01)"),
             (10.0, "[10:00:05] trial b finished (drl) after 1 epochs, best val acc 0.5"),
             (10.0, "confirmation of drl started while the search's last trials of joint run (1 trials)"),
             (10.0, "[10:00:05] trial c started (drl, lr=0.01)"),
             (11.0, "[10:00:06] trial a finished (joint) after 2 epochs, best val acc 0.6"),
             (12.0, "search of study 's' (2 trials, 7 s): one seed per trial"),
             (12.5, "confirmation: the top 1 configuration(s) of each method ..."),
             (16.0, "[10:00:11] trial c finished (drl) after 1 epochs, best val acc 0.6"),
             (17.0, "answer of study 's' (15 s in all):"), (18.0, "results: runs/studies/s")]
    cost = study_cost(lines, 19.0, tmp_path, slots=2)
    st = cost["stages"]
    assert st["confirmation_started_early_s"] == pytest.approx(2.0) and st["between_s"] == 0.0
    search, confirmation = st["search"], st["confirmation"]  # c: 2 of its 6 s in the search, 4 after
    assert search["trials"] == 3 and search["trial_epochs"] == 3 and confirmation["trial_epochs"] == 1
    assert search["compute_s"] == pytest.approx((7.0 + 4.0 * 2 / 6) / 2)
    assert search["idle_slots_s"] == pytest.approx((14.0 - 6.0 - 4.5 - 2.0) / 2)
    assert confirmation["wall_s"] == pytest.approx(5.0) and confirmation["compute_s"] == pytest.approx(4.0 * 4 / 6 / 2)
    assert confirmation["idle_slots_s"] == pytest.approx((10.0 - 4.0) / 2)
    parts = ("compute_s", "in_trial_overhead_s", "trial_startup_s", "idle_slots_s")
    for stage in (search, confirmation):
        assert sum(stage[k] for k in parts) == pytest.approx(stage["wall_s"])
    assert cost["compute_wall_s"] == pytest.approx((4.0 + 3.0 + 4.0) / 2) and cost["trial_epochs"] == 4
    assert "the confirmation started 2.0 s before the search's end" in "\n".join(describe(cost))
