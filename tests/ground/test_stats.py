"""The answer's statistics on hand-made numbers, checked against hand calculations and scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from drl_tune.ground.stats import non_dominated, paired_difference, t_interval
from drl_tune.study.answer import sentence
from drl_tune.study.confirmation import (
    ConfirmError,
    TrialRecord,
    fresh_seeds,
    plan_confirmation,
    select_top,
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
    # what 3 seeds can detect at 80% power, and what 1 point would need, from the observed spread of d
    from drl_tune.ground.stats import min_detectable_difference, seeds_needed

    mdd, need = min_detectable_difference(diff.std, 3), seeds_needed(0.01, diff.std)
    assert text.endswith(f"not significant at 3 seeds; 3 seeds detect ≥ {100 * mdd:.1f} points; "
                         f"1 point would need ≈ {need} seeds")
    assert paired_t_power_of(mdd, diff.std, 3) == pytest.approx(0.8)


def paired_t_power_of(delta: float, sd: float, n: int) -> float:
    from drl_tune.ground.stats import paired_t_power

    return paired_t_power(delta, sd, n)


def test_several_comparisons_are_judged_after_holm():
    """Two configurations against joint on one metric: each is significant alone (p < 0.05, interval excludes 0),
    but Holm multiplies the smaller p by 2 (> 0.05), so neither is after adjustment; the sentence says so."""
    from drl_tune.ground.stats import paired_t_pvalue
    from drl_tune.study.confirmation import add_multiplicity_and_power

    d1 = paired_difference([0.795, 0.805, 0.785, 0.825, 0.795], [0.78] * 5)  # p = 0.036
    d2 = paired_difference([0.793, 0.803, 0.785, 0.825, 0.793], [0.78] * 5)  # p = 0.046
    p1, p2 = paired_t_pvalue(d1), paired_t_pvalue(d2)
    assert 0.025 < p1 < p2 < 0.05 and d1.excludes_zero and d2.excludes_zero
    paired = [{"method": m, "rank": 1, "metric": "test/acc_at_best_val", "p": p, "_diff": d}
              for m, p, d in (("drl", p1, d1), ("opm", p2, d2))]
    add_multiplicity_and_power(paired, "joint", top_k=1)
    drl, opm = paired
    assert drl["p_holm"] == pytest.approx(2 * p1) and opm["p_holm"] == pytest.approx(max(2 * p1, p2))
    assert drl["comparisons"] == opm["comparisons"] == 2
    assert drl["significant_unadjusted"] and opm["significant_unadjusted"]
    assert not drl["significant"] and not opm["significant"]
    assert drl["sentence"].split(", ")[1].startswith("not significant at 5 seeds after Holm's adjustment for 2 "
                                                     "comparisons (p 0.0727)")
    assert "_diff" not in drl and drl["seeds_for_1pt"] >= 2 and drl["min_detectable"] > 0
    assert drl["seeds_for_observed"] is not None


def test_non_dominated():
    points = [(0.8, 0.1), (0.7, 0.05), (0.75, 0.2), (0.8, 0.3), (0.6, 0.01)]
    # accuracy up, gap down: (0.75, 0.2) is beaten by (0.8, 0.1); (0.8, 0.3) too
    assert non_dominated(points, ("max", "min")) == [0, 1, 4]
    assert non_dominated(points, ("max", "max")) == [3]
    assert non_dominated([(0.5, float("nan")), (0.4, 0.4)], ("max", "max")) == [1]
    assert non_dominated([(1, 2, 3), (1, 2, 4), (0, 5, 3)], ("max", "max", "min")) == [0, 2]  # any number of objectives


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


# -- multiplicity and power (issue 23, items 3 and 4: the functions; the answer does not use them yet) ----------


def test_holm_on_the_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03,
    # 0.06, 0.06; back in the input order
    from drl_tune.ground.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan, 0.4]) == pytest.approx([0.8, math.nan, 0.8], nan_ok=True)  # NaN not counted
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_paired_t_pvalue_matches_the_closed_form_for_two_degrees_of_freedom():
    # d = 1, 2, 3: mean 2, s = 1, t = 2·√3; for 2 degrees of freedom P(T > t) = (1 − t/√(t² + 2)) / 2
    from drl_tune.ground.stats import paired_t_pvalue, t_interval

    t = 2 * math.sqrt(3)
    assert paired_t_pvalue(t_interval([1.0, 2.0, 3.0])) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert math.isnan(paired_t_pvalue(t_interval([1.0])))
    assert paired_t_pvalue(t_interval([0.0, 0.0])) == 1.0 and paired_t_pvalue(t_interval([0.2, 0.2])) == 0.0


def test_paired_t_power_matches_known_values_and_a_simulation():
    from drl_tune.ground.stats import min_detectable_difference, paired_t_power, seeds_needed

    # G*Power's one-sample t test, two-tailed, α = 0.05: d = 1 with n = 10 -> 0.8031; d = 0.5 with n = 34 -> 0.8078
    assert paired_t_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert paired_t_power(0.05, 0.1, 34) == pytest.approx(0.8078, abs=1e-4)  # only δ/σ matters
    # a simulation of the test itself: 20 000 studies of 10 seeds with differences ~ N(1, 1)
    rng = np.random.default_rng(0)
    diffs = rng.normal(1.0, 1.0, size=(20_000, 10))
    rejected = float(np.mean(scipy_stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05))
    assert rejected == pytest.approx(paired_t_power(1.0, 1.0, 10), abs=0.015)
    # the smallest detectable difference has exactly 80% power; the seeds needed are the first n reaching it
    mdd = min_detectable_difference(1.0, 10)
    assert paired_t_power(mdd, 1.0, 10) == pytest.approx(0.8, abs=1e-9) and 0.99 < mdd < 1.0
    assert seeds_needed(1.0, 1.0) == 10 and paired_t_power(1.0, 1.0, 9) < 0.8
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1e-6, 1.0, max_n=1000) is None
    # two seeds whose differences agree but for float noise (sd ~1e-17): scipy's noncentral t would give NaN
    noisy = paired_difference([0.3, 0.7], [0.1, 0.5])
    assert 0 < noisy.std < 1e-12 and paired_t_power(0.01, noisy.std, 2) == 1.0
    assert 0 <= min_detectable_difference(noisy.std, 2) < 1e-9 and seeds_needed(0.01, noisy.std) == 2


def test_expected_max_matches_brute_force_enumeration_of_every_draw():
    """The budget curve's estimator (Dodge et al. 2019) against its definition: the mean (and s.d.) of max over all
    N^n equally likely ordered draws with replacement, enumerated here; values with a tie and unsorted on purpose."""
    import itertools

    from drl_tune.ground.stats import expected_max

    values = [0.52, 0.61, 0.40, 0.61, 0.75]
    for n in range(1, 5):
        maxima = [max(draw) for draw in itertools.product(values, repeat=n)]
        assert len(maxima) == len(values) ** n
        got = expected_max(values, n)
        assert got.mean == pytest.approx(float(np.mean(maxima)), abs=1e-12)
        assert got.std == pytest.approx(float(np.std(maxima)), abs=1e-12)
    # by hand: two values 0 and 1, two draws: max is 0 only for (0, 0) -> E = 3/4, Var = 3/4 - 9/16 = 3/16
    two = expected_max([1.0, 0.0], 2)
    assert two.mean == pytest.approx(0.75) and two.std == pytest.approx(math.sqrt(3 / 16))
    # one draw is the plain mean; many draws approach the largest value; the curve never falls
    assert expected_max(values, 1).mean == pytest.approx(sum(values) / len(values))
    assert expected_max(values, 200).mean == pytest.approx(0.75, abs=1e-9)
    curve = [expected_max(values, n).mean for n in range(1, 10)]
    assert all(b >= a for a, b in zip(curve, curve[1:], strict=False))
    with pytest.raises(ValueError, match="NaN"):
        expected_max([0.5, math.nan], 2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        expected_max(values, 0)


def test_answer_table_shows_the_shared_keys_first():
    """The confirmed configurations' differing keys: a shared key such as lr (what equal budgets tune for every
    method) is never cut off by the methods' own keys, which sort before it alphabetically."""
    from drl_tune.study.answer import answer_tables

    stat = {"mean": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    drl_config = {"drl.lam": 0.9, "drl.diagnosis_interval": 6, "drl.max_reinits": 2, "drl.n_clusters": 12,
                  "drl.kmeans_n_init": 1, "lr": 0.021}
    answer = {"metrics": ["val/acc_best"], "seeds": [1, 2], "reference": None, "paired": [], "headline": [],
              "configs": [{"method": "drl", "rank": 1, "source_trial": "a", "config": drl_config, "seeds": [1, 2],
                           "failed_seeds": [], "stats": {"val/acc_best": stat}},
                          {"method": "joint", "rank": 1, "source_trial": "b", "config": {"lr": 0.042},
                           "seeds": [1, 2], "failed_seeds": [], "stats": {"val/acc_best": stat}}]}
    header = answer_tables(answer).splitlines()[1].split()
    assert header[4:10] == ["lr", "drl.diagnosis_interval", "drl.kmeans_n_init", "drl.lam", "drl.max_reinits",
                           "drl.n_clusters"]
    assert "0.042" in answer_tables(answer).splitlines()[4]


def test_answer_tables_round_what_people_read_and_the_files_keep_every_digit(tmp_path):
    """answer.txt and the printed tables show a configuration's floats to 4 significant digits; answer.json and
    answer.csv, read by programs, keep the full values."""
    from drl_tune.study.answer import answer_tables, write_answer

    stat = {"mean": 0.8123456789, "std": 0.0123456789, "ci_low": 0.7, "ci_high": 0.9, "n": 2}
    answer = {"metrics": ["val/acc_best"], "seeds": [1, 2], "reference": None, "paired": [], "headline": [],
              "configs": [{"method": "drl", "rank": 1, "source_trial": "a", "seeds": [1, 2], "failed_seeds": [],
                           "config": {"drl.lam": 4.433541515048307, "lr": 0.0027741234, "momentum": 0.8567891,
                                      "drl.n_clusters": 12},
                           "stats": {"val/acc_best": stat}}]}
    row = answer_tables(answer).splitlines()[3].split()
    assert row[:7] == ["drl", "1", "a", "0.002774", "0.8568", "4.434", "12"]  # lr, momentum, then drl's keys
    paths = write_answer(tmp_path, answer)
    assert "4.434" in paths["answer.txt"].read_text() and "4.43354" not in paths["answer.txt"].read_text()
    saved = json.loads(paths["answer.json"].read_text())
    assert saved["configs"][0]["config"] == answer["configs"][0]["config"]
    assert saved["configs"][0]["config"]["momentum"] == 0.8567891
    assert "0.8123456789" in paths["answer.csv"].read_text() and "0.0123456789" in paths["answer.csv"].read_text()
