"""The statistics a study's answer rests on: Student-t intervals over seeds, paired differences, a Pareto front.

Pure functions on plain numbers (no pandas, no torch), shared by the confirmation stage and the analysis.

* :func:`t_interval`: mean ± t(1 − (1 − level)/2, n − 1) · s/√n, s the sample standard deviation (ddof 1).
* :func:`paired_difference`: the same interval over d_s = a_s − b_s for seeds s measured under both
  configurations (same seed ⇒ same data order and initialisation, so the seed-to-seed noise shared by the two
  largely cancels — the reason the paired interval is narrower than comparing two unpaired means).
* :func:`non_dominated`: the points no other point beats on every objective (the confirmed front, the trade-off plots).
* :func:`paired_t_pvalue`, :func:`holm`: the two-sided paired-t p-value of a difference, and Holm's step-down
  adjustment of several (each method against the same reference: one family of comparisons).
* :func:`paired_t_power`, :func:`min_detectable_difference`, :func:`seeds_needed`: what N seeds can detect, from
  the noncentral t distribution of the paired t statistic (the exact power of the test, not a normal
  approximation).
* :func:`expected_max`: the expected best score of ``n`` trials drawn from a search's observed scores, with its
  standard deviation (Dodge et al., EMNLP 2019, "Show Your Work": the budget curve).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval over ``n`` values (``values`` kept for tables/plots)."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    level: float
    values: tuple[float, ...]

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0 (``significant`` at 1 − level)."""
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["values"] = list(self.values)
        out["half_width"] = self.half_width
        return out


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (NaNs are an error: drop failed seeds first).

    With one value the interval is undefined: std and bounds are NaN (never a fake zero-width interval)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("t_interval needs at least one value")
    if any(math.isnan(x) for x in xs):
        raise ValueError("t_interval got NaN; leave out the seeds whose run failed")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, level, tuple(xs))
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(_scipy_stats.t.ppf(1 - (1 - level) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n, level, tuple(xs))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """t interval of a_s − b_s; ``a`` and ``b`` are aligned by seed (same length, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values must align seed by seed: {len(a)} vs {len(b)}")
    return t_interval([float(x) - float(y) for x, y in zip(a, b, strict=True)], level)


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` at least as good as ``b`` on every objective and better on one (``modes``: max or min each)."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    at_least = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return at_least and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


def non_dominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in their given order (points with a NaN are never on the
    front); any number of objectives, ``modes`` saying max or min for each."""
    ok = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    return [i for i in ok if not any(dominates(points[j], points[i], modes) for j in ok if j != i)]


def paired_t_pvalue(diff: Interval) -> float:
    """Two-sided p-value of the paired t test of mean(d) = 0 for the differences behind ``diff`` (NaN below 2
    seeds, 0 when every difference is the same non-zero number, 1 when all are 0)."""
    if diff.n < 2:
        return math.nan
    if diff.std == 0:
        return 1.0 if diff.mean == 0 else 0.0
    return float(_scipy_stats.ttest_1samp(diff.values, 0.0).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order (NaN stays NaN and is not counted).

    The i-th smallest of m p-values is multiplied by m − i + 1, then the running maximum is taken so the adjusted
    values keep the order of the raw ones, capped at 1; "significant at 5%" after adjustment means adjusted
    p < 0.05. Written here because neither scipy (``false_discovery_control`` is Benjamini–Hochberg) nor our
    dependencies provide Holm (statsmodels is not among them)."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(indexed)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired_t_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test at level ``alpha`` with ``n`` seeds, when the true mean difference is
    ``delta`` and the differences' standard deviation ``sd``: P(|T| > t_crit), T ~ noncentral t(n − 1, δ√n/σ)."""
    if n < 2 or not sd > 0:
        raise ValueError(f"power needs n >= 2 and sd > 0, got n={n}, sd={sd}")
    df = n - 1
    crit = float(_scipy_stats.t.ppf(1 - alpha / 2, df))
    nc = abs(delta) * math.sqrt(n) / sd
    if nc > 1e6:  # scipy's noncentral t turns NaN past ~1e10 (a float-noise sd); the power is 1.0 long before
        return 1.0
    upper = float(_scipy_stats.nct.sf(crit, df, nc))
    lower = float(_scipy_stats.nct.cdf(-crit, df, nc))
    # scipy's noncentral t also returns NaN in some far tails (seen for df = 1, nc ≈ 11): the lower tail is then
    # bounded by P(T < 0) = Φ(−nc), negligible there; the upper one is 1 − P(T ≤ crit)
    if not math.isfinite(lower):
        lower = float(_scipy_stats.norm.cdf(-nc))
    if not math.isfinite(upper):
        upper = 1.0 - float(_scipy_stats.nct.cdf(crit, df, nc))
    power = upper + lower
    if not math.isfinite(power):
        raise ValueError(f"the noncentral t power is not finite for n={n}, nc={nc}")
    return min(1.0, power)


def min_detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true |mean difference| the paired t test with ``n`` seeds detects with probability
    ``power`` (the differences' std ``sd``, e.g. the observed one)."""
    from scipy.optimize import brentq

    if paired_t_power(0.0, sd, n, alpha) >= power:
        return 0.0
    high = sd
    while paired_t_power(high, sd, n, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_t_power(d, sd, n, alpha) - power, 0.0, high, xtol=1e-12 * max(sd, 1e-12)))


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 100_000) -> int | None:
    """The fewest seeds with which the paired t test detects a true difference ``delta`` with probability
    ``power``; None when even ``max_n`` would not (or ``delta`` is 0)."""
    if delta == 0:
        return None
    high = 2  # power grows with n: double until it is reached, then bisect
    while paired_t_power(delta, sd, high, alpha) < power:
        if high >= max_n:
            return None
        high = min(2 * high, max_n)
    low = max(2, high // 2)
    while low < high:
        mid = (low + high) // 2
        if paired_t_power(delta, sd, mid, alpha) >= power:
            high = mid
        else:
            low = mid + 1
    return low


@dataclass(frozen=True)
class ExpectedMax:
    """The best of ``n`` draws from ``N`` observed scores: its expectation and standard deviation."""

    n: int
    mean: float
    std: float


def expected_max(values: Sequence[float], n: int) -> ExpectedMax:
    """Expected maximum of ``n`` i.i.d. draws (with replacement) from the empirical distribution of ``values``.

    With the N values sorted, v_(1) ≤ … ≤ v_(N), the best of n draws is v_(i) or below with probability (i/N)^n, so
    E[max] = Σ_i v_(i) · ((i/N)^n − ((i−1)/N)^n) and E[max²] likewise (Dodge et al. 2019, eq. 1). Exact for the
    observed values of an i.i.d. (random) search; for an adaptive searcher (TPE) the draws are not i.i.d. and this is
    an approximation. Ties need no care: equal values simply share their probability mass."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("expected_max needs at least one value")
    if any(math.isnan(x) for x in xs):
        raise ValueError("expected_max got NaN; leave out the trials that reported no score")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    size = len(xs)
    mean = second = 0.0
    for i, x in enumerate(xs, start=1):
        weight = (i / size) ** n - ((i - 1) / size) ** n
        mean += weight * x
        second += weight * x * x
    return ExpectedMax(n, mean, math.sqrt(max(0.0, second - mean * mean)))
