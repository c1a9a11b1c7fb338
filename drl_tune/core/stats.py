"""The statistics a study's answer rests on: Student-t intervals over seeds, paired differences, a Pareto front.

Pure functions on plain numbers (no pandas, no torch), shared by the confirmation stage and the analysis.

* :func:`t_interval`: mean ± t(1 − (1 − level)/2, n − 1) · s/√n, s the sample standard deviation (ddof 1).
* :func:`paired_difference`: the same interval over d_s = a_s − b_s for seeds s measured under both
  configurations (same seed ⇒ same data order and initialisation, so the seed-to-seed noise shared by the two
  largely cancels — the reason the paired interval is narrower than comparing two unpaired means).
* :func:`pareto_front`: the points no other point beats on both objectives (trade-off plots).
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


def pareto_front(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the non-dominated points, sorted by the first coordinate.

    A point is dominated when another is at least as good on both coordinates and better on one;
    ``maximize`` says the direction of each (e.g. ``(True, False)`` for accuracy up, balance gap down)."""
    sign = [1.0 if m else -1.0 for m in maximize]
    pts = [(sign[0] * x, sign[1] * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(pts):
        if any(math.isnan(v) for v in (x, y)):
            continue
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(pts) if j != i and not any(math.isnan(v) for v in (ox, oy))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
