"""The answer's statistics on hand-made numbers, checked against hand calculations and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from drl_tune.core.stats import paired_difference, pareto_front, t_interval
from drl_tune.study.confirmation import (
    ConfirmError,
    TrialRecord,
    fresh_seeds,
    plan_confirmation,
    select_top,
    sentence,
)


def test_t_interval_by_hand():
    # values 1, 2, 3, 4, 5: mean 3, s = sqrt(10/4) = 1.5811; t(0.975, 4) = 2.776445
    iv = t_interval([1, 2, 3, 4, 5])
    assert iv.mean == pytest.approx(3.0)
    assert iv.std == pytest.approx(math.sqrt(2.5))
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.ci_low == pytest.approx(3 - half, abs=1e-5) and iv.ci_high == pytest.approx(3 + half, abs=1e-5)
    assert iv.half_width == pytest.approx(half, abs=1e-5) and iv.n == 5


def test_t_interval_matches_scipy_and_levels():
    values = [0.71, 0.74, 0.69, 0.77, 0.73, 0.70]
    low, high = scipy_stats.t.interval(0.9, len(values) - 1, loc=sum(values) / 6, scale=scipy_stats.sem(values))
    iv = t_interval(values, level=0.9)
    assert (iv.ci_low, iv.ci_high) == pytest.approx((low, high))
    # three seeds: the 95% interval is t(0.975, 2) = 4.30 standard errors each side
    three = t_interval([0.0, 1.0, 2.0])
    assert three.half_width / (three.std / math.sqrt(3)) == pytest.approx(4.3027, abs=1e-4)


def test_t_interval_edge_cases():
    one = t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.ci_low) and not one.excludes_zero
    assert t_interval([2.0, 2.0, 2.0]).half_width == 0.0
    with pytest.raises(ValueError, match="NaN"):
        t_interval([0.1, float("nan")])
    with pytest.raises(ValueError):
        t_interval([])


def test_paired_difference_by_hand():
    drl = [0.80, 0.78, 0.83, 0.79]
    joint = [0.77, 0.76, 0.80, 0.77]
    # d = 0.03, 0.02, 0.03, 0.02 -> mean 0.025, s = 0.005774, t(0.975, 3) = 3.182446
    diff = paired_difference(drl, joint)
    assert diff.mean == pytest.approx(0.025)
    half = 3.182446 * 0.0057735 / 2
    assert diff.ci_low == pytest.approx(0.025 - half, abs=1e-5)
    assert diff.excludes_zero  # every seed favours drl
    result = scipy_stats.ttest_rel(drl, joint)
    assert result.pvalue < 0.05  # the same verdict as scipy's paired t-test
    # an unpaired look at the same numbers is far less sure: the seed effect is shared
    assert t_interval(drl).ci_low < t_interval(joint).ci_high
    with pytest.raises(ValueError, match="align"):
        paired_difference([1, 2], [1])


def test_paired_difference_not_significant_and_sentence():
    diff = paired_difference([0.80, 0.76, 0.79], [0.78, 0.78, 0.78])
    assert not diff.excludes_zero
    text = sentence("drl", "joint", "test/acc_at_best_val", diff)
    assert text.startswith("drl − joint: +0.3 points test acc at best val (95% CI ")
    assert text.endswith("not significant at 3 seeds")


def test_pareto_front():
    points = [(0.8, 0.1), (0.7, 0.05), (0.75, 0.2), (0.8, 0.3), (0.6, 0.01)]
    # accuracy up, gap down: (0.75, 0.2) is beaten by (0.8, 0.1); (0.8, 0.3) too
    assert pareto_front(points, maximize=(True, False)) == [4, 1, 0]
    assert pareto_front(points) == [3]
    assert pareto_front([(0.5, float("nan")), (0.4, 0.4)]) == [1]


def record(trial_id, method, val, status="completed", seed=0, **config):
    return TrialRecord(trial_id, method, {"method": method, "seed": seed, **config}, status,
                       rows=[{"epoch": 0, "val/acc_best": val}])


def test_select_top_uses_validation_and_dedupes_configs():
    records = [
        record("a", "drl", 0.70, lr=0.1), record("b", "drl", 0.80, lr=0.2), record("c", "drl", 0.75, lr=0.2),
        record("d", "drl", 0.99, status="error", lr=0.3), record("e", "drl", 0.95, status="stopped", lr=0.4),
        record("f", "joint", 0.60, status="stopped", lr=0.1), record("g", "joint", 0.50, status="stopped", lr=0.2),
    ]
    chosen = select_top(records, top_k=2)
    # completed trials first; the same config (lr 0.2) counts once; errored never
    assert [r.trial_id for r in chosen["drl"]] == ["b", "a"]
    # a method whose trials were all stopped early falls back to them
    assert [r.trial_id for r in chosen["joint"]] == ["f", "g"]


def test_plan_confirmation_fresh_seeds_and_counts():
    records = [record("a", "drl", 0.7, seed=1, lr=0.1), record("b", "joint", 0.6, seed=3, lr=0.1),
               record("c", "joint", 0.65, seed=0, lr=0.2)]
    entries = plan_confirmation(records, top_k=2, n_seeds=3)
    assert fresh_seeds({0, 1, 3}, 3) == [2, 4, 5]
    assert {e.seed for e in entries} == {2, 4, 5}  # never a seed the search used
    assert len(entries) == (1 + 2) * 3  # drl has one config, joint two
    assert {(e.method, e.rank, e.source_trial) for e in entries} == {("drl", 1, "a"), ("joint", 1, "c"),
                                                                      ("joint", 2, "b")}
    assert all(e.config["lr"] == next(r for r in records if r.trial_id == e.source_trial).config["lr"]
               for e in entries)


def test_plan_confirmation_bad_input():
    records = [record("a", "drl", 0.7), record("b", "joint", 0.6, status="error")]
    with pytest.raises(ConfirmError, match="no finished trial of method joint"):
        plan_confirmation(records, 1, 2)
    assert {e.method for e in plan_confirmation(records, 1, 2, strict=False)} == {"drl"}
    assert {e.method for e in plan_confirmation(records, 1, 2, methods=["drl"])} == {"drl"}
    with pytest.raises(ConfirmError, match="top_k >= 1"):
        plan_confirmation(records, 0, 2)
    with pytest.raises(ConfirmError, match="not finished"):
        plan_confirmation([record("a", "drl", 0.7, status="running")], 1, 2)
    with pytest.raises(ConfirmError, match="no trials"):
        plan_confirmation([], 1, 2)
