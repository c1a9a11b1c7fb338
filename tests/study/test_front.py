"""Multi-objective studies, fast parts: the objectives a space may name, the searched front and which points of it
are confirmed, the verdicts with intervals, the Optuna database for the dashboard, the figure. Expected numbers are
worked out by hand in each test."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from drl_tune.study.confirmation import TrialRecord, front_entries
from drl_tune.study.front import dominates, front_section, front_table, non_dominated, select_front
from drl_tune.study.plan import build_plan
from drl_tune.study.spaces import SpaceError, load_space, parse_objectives

ACC_GAP = [{"metric": "val/acc_best", "mode": "max", "key": "val/acc_best", "summary": "val/acc_best"},
           {"metric": "balance/gap", "mode": "min", "key": "at_best_val/balance_gap", "summary": "balance/gap"}]


def test_objectives_name_validation_figures_at_the_best_validation_epoch():
    objs = parse_objectives(["val/acc_best:max", "balance/gap:min", "val/acc_weak"], "visual", "--objectives")
    assert [(o.metric, o.mode, o.key, o.summary) for o in objs] == [
        ("val/acc_best", "max", "val/acc_best", "val/acc_best"),
        ("balance/gap", "min", "at_best_val/balance_gap", "balance/gap"),
        ("val/acc_weak", "max", "at_best_val/acc_visual", "val/acc_visual")]
    assert parse_objectives([{"metric": "val/acc_best"}, {"metric": "val/acc_audio"}], "", "x")[1].key == \
        "at_best_val/acc_audio"
    for raw, message in [
        (["val/acc_best", "test/acc_at_best_val"], "is not an objective.*a test figure is never selected on"),
        (["val/acc_best", "val/acc_weak"], "val/acc_weak needs 'study.weak_modality'"),
        (["balance/gap", "val/acc_best"], "the first objective must be val/acc_best"),
        (["val/acc_best"], "one objective is a single-objective study"),
        (["val/acc_best", "balance/gap:up"], "mode of 'balance/gap' must be min or max"),
        (["val/acc_best", "balance/gap", "balance/gap"], "listed twice"),
    ]:
        with pytest.raises(SpaceError, match=message):
            parse_objectives(raw, "", "--objectives")


def test_demo_pareto_plan_says_what_it_optimises(tmp_path):
    plan = build_plan(load_space("demo_pareto"), overrides={}, name="p", storage=tmp_path, mlflow_uri=None)
    assert [o["metric"] for o in plan.objectives] == ["val/acc_best", "balance/gap"]
    text = plan.describe()
    assert "objectives: max val/acc_best, min balance/gap (each at the trial's best-validation epoch)" in text
    assert "Optuna TPE (adaptive, multi-objective)" in text and "early stopping: none" in text
    assert "3 configuration(s) of the searched Pareto front, spread along it" in text
    assert plan.balanced_methods == ["drl", "joint"] and plan.num_samples == 16


def test_dominance_front_and_spread_by_hand():
    assert dominates([0.8, 0.1], [0.7, 0.2], ["max", "min"]) and not dominates([0.8, 0.3], [0.7, 0.2], ["max", "min"])
    assert not dominates([0.8, 0.1], [0.8, 0.1], ["max", "min"])  # equal is not better
    points = [[0.80, 0.30], [0.75, 0.10], [0.70, 0.20], [0.60, 0.05], [math.nan, 0.0]]
    assert non_dominated(points, ["max", "min"]) == [0, 1, 3]  # (0.70, 0.20) is beaten by (0.75, 0.10)


def record(tid: str, method: str, acc: float, gap: float, status: str = "completed", **config) -> TrialRecord:
    rows = [{"epoch": 0.0, "val/acc_best": acc, "best_epoch": 0.0, "balance/gap": gap, "val/acc_audio": 0.6,
             "test/acc_at_best_val": acc - 0.01, "timestamp": 1_700_000_000 + len(tid)}]
    return TrialRecord(tid, method, {"method": method, "seed": 0, "epochs": 1, **config}, status, rows)


def test_the_confirmed_points_are_spread_along_the_front():
    records = [record("a", "drl", 0.80, 0.30, lr=1), record("b", "joint", 0.78, 0.20, lr=2),
               record("c", "drl", 0.75, 0.10, lr=3), record("d", "joint", 0.70, 0.05, lr=4),
               record("e", "joint", 0.60, 0.02, lr=5), record("f", "drl", 0.79, 0.35, lr=6),  # f: dominated by a
               record("g", "drl", 0.95, 0.00, "stopped", lr=7),  # stopped: not a candidate while others completed
               record("h", "drl", 0.90, 0.01, "error", lr=8)]
    # the front, by the first objective: a b c d e; three of five spread along it: first, middle, last
    assert [r.trial_id for r in select_front(records, ACC_GAP, 3)] == ["a", "c", "e"]
    assert [r.trial_id for r in select_front(records, ACC_GAP, 9)] == ["a", "b", "c", "d", "e"]
    entries = front_entries(records, 3, 2, ACC_GAP, None)
    assert [(e.method, e.rank, e.front, e.source_trial) for e in entries[::2]] == [
        ("drl", 1, 1, "a"), ("drl", 2, 2, "c"), ("joint", 1, 3, "e")]
    assert sorted({e.seed for e in entries}) == [1, 2]  # fresh seeds: the search used seed 0


def interval(mean: float, half: float) -> dict[str, float]:
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": 3, "std": half}


def test_verdicts_with_intervals_by_hand():
    configs = [  # A: accurate, unbalanced; B: dominated by A on the means only; C: balanced; D: clearly worse than C
        {"method": "drl", "rank": 1, "front": 1, "stats": {"val/acc_best": interval(0.80, 0.02),
                                                           "balance/gap": interval(0.30, 0.02)}},
        {"method": "drl", "rank": 2, "front": 2, "stats": {"val/acc_best": interval(0.79, 0.02),
                                                           "balance/gap": interval(0.31, 0.02)}},
        {"method": "joint", "rank": 1, "front": 3, "stats": {"val/acc_best": interval(0.70, 0.01),
                                                             "balance/gap": interval(0.05, 0.01)}},
        {"method": "joint", "rank": 2, "front": 4, "stats": {"val/acc_best": interval(0.60, 0.01),
                                                             "balance/gap": interval(0.20, 0.01)}},
    ]
    front = {p["label"]: p for p in front_section(configs, ACC_GAP)}
    assert front["drl#2"]["dominated_on_means_by"] == ["drl#1"] and front["drl#2"]["dominated_with_confidence_by"] == []
    assert front["drl#2"]["non_dominated"]  # its intervals overlap drl#1's: the seeds cannot separate them
    # joint#2: C's worst (acc 0.69, gap 0.06) beats its best (acc 0.61, gap 0.19) on both
    assert front["joint#2"]["dominated_with_confidence_by"] == ["joint#1"] and not front["joint#2"]["non_dominated"]
    assert front["drl#1"]["non_dominated"] and front["joint#1"]["non_dominated"]
    text = front_table({"front": list(front.values()), "objectives": ACC_GAP})
    assert "3 of 4 points remain non-dominated once the intervals are taken into account: drl#1, drl#2, joint#1" in text
    assert "0.800 [0.780, 0.820]" in text


def test_optuna_db_holds_the_search_for_the_dashboard(tmp_path):
    from drl_tune.study.optuna_db import write_optuna_db

    plan = build_plan(load_space("demo_pareto"), overrides={}, name="p", storage=tmp_path, mlflow_uri=None)
    records = [record("a", "drl", 0.80, 0.30, lr=0.01, **{"drl.lam": 3.0}), record("b", "joint", 0.70, 0.05,
                                                                                    lr=0.02),
               record("c", "joint", 0.60, 0.20, lr=0.03), record("d", "drl", 0.5, 0.1, "error", lr=0.04)]
    for _ in range(2):  # a rewrite, not an append
        path = write_optuna_db(plan, records)
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{path}")
    assert study.metric_names == ["val/acc_best", "balance/gap"] and len(study.trials) == 4
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert by_id["a"].values == [0.80, 0.30] and by_id["a"].params == {"method": "drl", "lr": 0.01, "drl.lam": 3.0}
    assert by_id["d"].state == optuna.trial.TrialState.FAIL and by_id["a"].intermediate_values == {0: 0.80}
    assert sorted(t.user_attrs["trial_id"] for t in study.best_trials) == ["a", "b"]  # Optuna's own front


def test_pareto_figure_draws_the_front_and_the_confirmed_points(tmp_path):
    from drl_tune.analysis import plots
    from drl_tune.analysis.front_plot import pareto, searched_front
    from drl_tune.analysis.load import load_tune
    from tests.analysis.test_analysis import make_study

    folder = make_study(tmp_path)
    plan = json.loads((folder / "drl_tune_study.json").read_text())
    plan["objectives"] = ACC_GAP
    (folder / "drl_tune_study.json").write_text(json.dumps(plan))
    study = load_tune(folder)
    # at best val: d1 0.55 / gap 0.2 (epoch 4), d2 0.6 / 0.2, j1 0.44 / 0.2, j2 0.5 / 0.2: all gaps 0.2 -> d2 alone
    front = searched_front(study)
    assert front["trial_id"].tolist() == ["d2"]
    point = {"val/acc_best": interval(0.6, 0.05), "balance/gap": interval(0.2, 0.03)}
    study.answer = {"front": [{"method": "drl", "rank": 1, "label": "drl#1", "non_dominated": True,
                               "objectives": point}]}
    fig = pareto(study)
    ax = fig.axes[0]
    assert {c.get_gid() for c in ax.collections} >= {"search-drl", "search-joint"}
    line = next(ln for ln in ax.lines if ln.get_gid() == "searched-front")
    assert line.get_xydata().tolist() == [[pytest.approx(0.2), pytest.approx(0.6)]]
    assert any(ln.get_gid() == "confirmed-drl#1" for ln in ax.lines)
    assert "pareto" in plots.all_figures(study, tmp_path / "figs")
