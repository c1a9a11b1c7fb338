"""Budget curves: how good would each method look after n search trials? (Dodge et al., EMNLP 2019, "Show Your Work")

A method's advantage can depend on the tuning budget it got: at a small budget the method whose official setting
happens to suit the data wins, at a larger one the method with more to gain from tuning may. The budget curve makes
that visible: for each method, the expected best ``val/acc_best`` after n = 1 … N of its search trials
(:func:`drl_tune.ground.stats.expected_max`), with a band of ± one standard deviation of that best.

What the curve assumes, and what the figure says:

* **the draws.** The closed form is exact for i.i.d. draws: a study run with ``--searcher random``. Under TPE (the
  default) later trials depend on earlier ones, and the curve treats them as if they were i.i.d. — an
  approximation, labelled so on the figure.
* **the official settings are not draws.** Each method's first trial is its official setting (enqueued, not
  sampled); it is left out of the draws and drawn as its own dashed line ("tuning beats the default after n
  trials").
* **early stopping.** An ASHA-stopped trial counts with the ``val/acc_best`` it reached when stopped (a lower bound
  of what it would have reached); errored trials, which reached nothing, are left out. The figure gives both counts.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.ticker import MaxNLocator

from drl_tune.analysis.colors import MANY_METHODS, method_color
from drl_tune.analysis.load import SELECT_METRIC, Study
from drl_tune.ground.stats import expected_max

CURVE_COLUMNS = ["method", "n", "expected", "std", "low", "high", "draws", "stopped", "errored", "official",
                 "searcher"]


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def official_mask(study: Study, trials: pd.DataFrame) -> pd.Series:
    """True for the trials whose searched values are a method's official setting (the plan's enqueued points)."""
    points = study.plan.get("points_to_evaluate") or []
    mask = pd.Series(False, index=trials.index)
    for point in points:
        keys = [k for k in point if k in trials.columns]
        if "method" not in point or not keys:
            continue
        mask |= trials.apply(lambda row, p=point, ks=keys: all(_same(row[k], p[k]) for k in ks), axis=1)
    return mask


def searcher(study: Study) -> str:
    """The study's sampler: ``tpe`` or ``random`` (plans written before the choice existed used TPE)."""
    return str(study.plan.get("searcher") or "tpe")


def _search_trials(study: Study, metric: str) -> tuple[pd.DataFrame, pd.Series]:
    """The scored search trials (not errored, with ``metric``) and which of them are official settings."""
    trials = study.trials[study.trials["stage"] == "search"]
    if trials.empty or metric not in trials:
        return trials.iloc[0:0], pd.Series(dtype=bool)
    scored = trials[trials["status"].ne("error") & trials[metric].notna()]
    return scored, official_mask(study, scored)


def official_scores(study: Study, metric: str = SELECT_METRIC) -> dict[str, float]:
    """Each method's official-setting score (the best, if the setting ran more than once: a method with no searched
    keys of its own runs nothing else, e.g. joint training when only DRL's keys are searched)."""
    scored, official = _search_trials(study, metric)
    return {str(m): float(g[metric].max()) for m, g in scored[official].groupby("method")} if len(scored) else {}


def budget_curves(study: Study, metric: str = SELECT_METRIC) -> pd.DataFrame:
    """One row per (method, n): the expected best ``metric`` after n search trials of that method drawn from its
    sampled (non-official) trials, its standard deviation, the band ``[low, high]`` (± 1 s.d., clipped to the
    observed range), how many draws it rests on (``draws``; of them ``stopped`` by ASHA), how many ``errored``
    trials were left out, the official setting's own score (``official``, NaN without one) and the ``searcher``."""
    trials = study.trials[study.trials["stage"] == "search"]
    scored, official = _search_trials(study, metric)
    officials = official_scores(study, metric)
    rows = []
    for method, mine in scored.groupby("method"):
        draws = mine[~official.loc[mine.index]]
        errored = trials[(trials["method"] == method) & (trials["status"] == "error")]
        common = {"method": method, "draws": len(draws), "stopped": int((draws["status"] == "stopped").sum()),
                  "errored": len(errored), "official": officials.get(str(method), math.nan),
                  "searcher": searcher(study)}
        values = draws[metric].astype(float).tolist()
        for n in range(1, len(values) + 1):
            best = expected_max(values, n)
            rows.append({**common, "n": n, "expected": best.mean, "std": best.std,
                         "low": max(best.mean - best.std, min(values)), "high": min(best.mean + best.std, max(values))})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def assumption_note(curves: pd.DataFrame, study: Study) -> str:
    """The sentence under the figure: which draws, which searcher, how early stopping and errors count."""
    kind = searcher(study)
    if kind == "random":
        draws = "Random search: the trials are i.i.d. draws, so the curve is the exact expectation over them."
    else:
        draws = ("TPE is adaptive: its trials are not i.i.d. draws, so this curve is an approximation; run the study "
                 "with --searcher random for an unbiased one.")
    per = curves.drop_duplicates("method")
    stopped = ", ".join(f"{r.method} {r.stopped}/{r.draws}" for r in per.itertuples())
    errored = int(per["errored"].sum())
    return (f"{draws} Official settings are not draws (dashed). ASHA-stopped trials count with the value they "
            f"reached (stopped/draws: {stopped})" + (f"; {errored} errored trial(s) left out." if errored else "."))


def budget(study: Study, metric: str = SELECT_METRIC) -> Figure:
    """The budget-curve figure: per method, expected best ``metric`` against n search trials, ± 1 s.d. band, the
    official setting as a dashed line; the sampling assumption written under it."""
    curves = budget_curves(study, metric)
    if curves.empty:
        raise ValueError(f"study {study.name!r} has no scored search trials besides the official settings")
    officials = official_scores(study, metric)
    methods = sorted(set(curves["method"]) | set(officials))
    many = len(methods) > MANY_METHODS
    fig, ax = plt.subplots(figsize=(11.5 if many else 8.5, 5.2))
    handles, labels = [], []
    for method in methods:  # one legend entry per method: its curve and its official line together
        mine = curves[curves["method"] == method]
        color = method_color(method, methods)
        parts, words = [], []
        if len(mine):
            (curve,) = ax.plot(mine["n"], mine["expected"], "-o", color=color, ms=4, gid=f"budget-{method}")
            ax.fill_between(mine["n"], mine["low"], mine["high"], color=color, alpha=0.18,
                            gid=f"budget-band-{method}")
            parts.append(curve)
            words.append(f"expected best of n ({int(mine['draws'].iloc[0])} sampled trials)")
        official = officials.get(method, math.nan)
        if not math.isnan(official):
            parts.append(ax.axhline(official, color=color, ls="--", lw=1.2, gid=f"budget-official-{method}"))
            words.append(f"official setting {official:.3f}" + ("" if len(mine) else ", nothing else searched"))
        if parts:
            handles.append(tuple(parts))
            labels.append(f"{method}: " + "; ".join(words))
    top = max(int(curves["n"].max()), 1)
    ax.set_xlim(0.5, top + 0.5)
    if top <= 20:  # whole trials only (MaxNLocator falls back to fractions on a span under one)
        ax.set_xticks(range(1, top + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("n: search trials of the method (besides its official setting)")
    ax.set_ylabel(f"expected best {metric} (band: ± 1 s.d.)")
    ax.grid(alpha=0.3)
    legend = {"handles": handles, "labels": labels, "handler_map": {tuple: HandlerTuple(ndivide=None)}}
    if many:  # beside the axes: inside them, 15 methods' entries would cover the curves
        ax.legend(**legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(**legend, fontsize=8, loc="lower right")
    ax.set_title(f"Study {study.name!r}: budget curves ({'random search' if searcher(study) == 'random' else 'TPE'})",
                 fontsize=11)
    fig.text(0.01, -0.02, assumption_note(curves, study), fontsize=8, wrap=True, va="top", ha="left",
             gid="budget-note")
    fig.tight_layout()
    return fig
