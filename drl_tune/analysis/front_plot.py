"""A multi-objective study's picture: the searched Pareto front and the confirmed points with their 2-D intervals.

The objectives are the ones the search optimised (the plan's ``objectives``), each at the trial's best-validation
epoch; the front is computed on the same trials the confirmation chose from (those that ran all their epochs, or all
finished ones when every trial was stopped early) by :func:`drl_tune.study.front.non_dominated`. With more than two
objectives the figure shows the first two and says so.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from drl_tune.analysis.colors import method_color
from drl_tune.analysis.load import Study
from drl_tune.study.front import front_order


def objectives(study: Study) -> list[dict[str, str]]:
    return list(study.plan.get("objectives") or [])


def searched_front(study: Study) -> pd.DataFrame:
    """The search trials on the Pareto front of the study's objectives (one row each, the objectives' columns and
    the trial's configuration), in the order of the first objective, best first; empty for a single-objective
    study."""
    objs = objectives(study)
    if not objs:
        return pd.DataFrame()
    cols = [o["summary"] for o in objs]
    search = study.finished()
    search = search[search["stage"] == "search"].reset_index(drop=True)
    if search.empty or any(c not in search for c in cols):
        return search.iloc[0:0]
    order = front_order(search["status"].tolist(), search[cols].to_numpy(dtype=float).tolist(),
                        [o["mode"] for o in objs])
    return search.loc[order].reset_index(drop=True)


def pareto(study: Study) -> Figure:
    """x: the second objective, y: the first; every search trial (one colour per method), the searched front
    (dashed), the confirmed points with their 95% intervals on both objectives (filled: still non-dominated with the
    intervals; hollow: dominated with confidence)."""
    objs = objectives(study)
    if len(objs) < 2:
        raise ValueError(f"study {study.name!r} is not a multi-objective study")
    y_obj, x_obj = objs[0], objs[1]
    search = study.finished()
    search = search[search["stage"] == "search"]
    methods = sorted(search["method"].unique())
    fig, ax = plt.subplots(figsize=(8.5, 6))
    for method in methods:
        mine = search[search["method"] == method]
        done, stopped = mine[mine["status"] == "completed"], mine[mine["status"] == "stopped"]
        ax.scatter(done[x_obj["summary"]], done[y_obj["summary"]], s=28, alpha=0.6, color=method_color(method),
                   label=f"{method}: search trials ({len(done)})", gid=f"search-{method}")
        if len(stopped):  # their balance is an early epoch's: not candidates for the front while others completed
            ax.scatter(stopped[x_obj["summary"]], stopped[y_obj["summary"]], s=28, facecolors="white",
                       edgecolors=method_color(method), label=f"{method}: stopped early by ASHA ({len(stopped)})",
                       gid=f"stopped-{method}")
    front = searched_front(study)
    if len(front):
        ordered = front.sort_values(x_obj["summary"])
        ax.plot(ordered[x_obj["summary"]], ordered[y_obj["summary"]], "--", color="black", lw=1, drawstyle="steps-post"
                if x_obj["mode"] == "min" else "steps-pre", label=f"searched front ({len(front)} trials, one seed)",
                gid="searched-front")
    for point in (study.answer or {}).get("front", []):
        x, y = point["objectives"][x_obj["metric"]], point["objectives"][y_obj["metric"]]
        color = method_color(point["method"])
        ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["ci_low"]], [x["ci_high"] - x["mean"]]],
                    yerr=[[y["mean"] - y["ci_low"]], [y["ci_high"] - y["mean"]]], fmt="D", ms=9, capsize=4,
                    color=color, mfc=color if point["non_dominated"] else "white", mew=2,
                    gid=f"confirmed-{point['label']}")
        ax.annotate(point["label"], (x["mean"], y["mean"]), textcoords="offset points", xytext=(8, 6), fontsize=9)
    ax.set_xlabel(f"{x_obj['metric']} at best-val epoch ({'lower' if x_obj['mode'] == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y_obj['metric']} ({'higher' if y_obj['mode'] == 'max' else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    note = ("diamonds: confirmed front points, mean and 95% t-interval over fresh seeds on both objectives; filled = "
            "no other point dominates it with its interval, hollow = dominated with confidence")
    if len(objs) > 2:
        note += f"; {len(objs) - 2} further objective(s) not drawn: " + ", ".join(o["metric"] for o in objs[2:])
    fig.text(0.01, -0.02, note, fontsize=8, wrap=True, va="top", ha="left", gid="pareto-note")
    ax.set_title(f"Study {study.name!r}: the searched Pareto front and the confirmed points", fontsize=11)
    fig.tight_layout()
    return fig
