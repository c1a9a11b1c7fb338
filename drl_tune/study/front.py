"""The Pareto front of a multi-objective study: which search trials to confirm, and which confirmed points stay
non-dominated once their seed-to-seed intervals are taken into account.

Selection (validation only, like the single-objective confirmation): the search trials that ran all their epochs
(a study whose trials were all stopped early falls back to those), one per distinct configuration, are compared on
every objective, each read at the trial's best-validation epoch (``TrialRecord.summary``). The non-dominated ones
form the searched front; ``k`` of them are confirmed, *spread along it* — evenly spaced in the order of the first
objective, both ends included — not the ``k`` most accurate, which would all sit at one end.

After the confirmation each point has a mean and a 95% t-interval per objective. A point is *dominated on the means*
when another point's means are at least as good on every objective and better on one; it is *dominated with
confidence* only when another point's whole interval is better than its whole interval on every objective (for a
maximised objective: the other's lower bound above this one's upper bound). The points no other dominates with
confidence remain on the front: the seeds cannot tell them apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from drl_tune.ground.stats import dominates, non_dominated
from drl_tune.study.tables import render_table


def spread(n: int, k: int) -> list[int]:
    """``k`` of ``n`` positions evenly spaced, both ends included (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def front_order(statuses: Sequence[str], points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """The searched front as indices into ``points``: among the trials that ran all their epochs (all finished ones
    when none did), those no other dominates, in the order of the first objective, best first. The one rule the
    confirmation (:func:`select_front`) and the analysis (``analysis.front.searched_front``) both apply."""
    finished = [i for i, status in enumerate(statuses) if status in ("completed", "stopped")]
    pool = [i for i in finished if statuses[i] == "completed"] or finished
    front = [pool[j] for j in non_dominated([points[i] for i in pool], modes)]
    first_sign = 1.0 if modes[0] == "max" else -1.0
    return sorted(front, key=lambda i: -first_sign * points[i][0])


def select_front(records: list[Any], objectives: list[dict[str, str]], k: int) -> list[Any]:
    """The ``k`` searched-front trials to confirm, spread along the front, in the order of the first objective
    (best first); one trial per configuration up to the seed (a completed one before a stopped one)."""
    keys, modes = [o["summary"] for o in objectives], [o["mode"] for o in objectives]
    distinct: dict[str, Any] = {}
    for record in sorted(records, key=lambda r: r.status != "completed"):  # stable: completed ones first
        if record.status in ("completed", "stopped"):
            # the canonical text of confirmation.config_key, without the seed
            distinct.setdefault(json.dumps({c: v for c, v in record.config.items() if c != "seed"}, sort_keys=True,
                                           default=str), record)
    candidates = list(distinct.values())
    points = [[float(r.summary().get(key, math.nan)) for key in keys] for r in candidates]
    front = front_order([r.status for r in candidates], points, modes)
    return [candidates[front[i]] for i in spread(len(front), k)]


def front_section(configs: list[dict[str, Any]], objectives: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per confirmed configuration: its objectives' means and intervals, and which points dominate it on the means
    and with confidence; ``non_dominated`` is the verdict with the intervals."""
    keys, modes = [o["summary"] for o in objectives], [o["mode"] for o in objectives]
    rows = [c for c in configs if all(k in c["stats"] for k in keys)]
    label = [f"{c['method']}#{c['rank']}" for c in rows]
    means = [[c["stats"][k]["mean"] for k in keys] for c in rows]
    worst = [[c["stats"][k]["ci_low" if m == "max" else "ci_high"] for k, m in zip(keys, modes, strict=True)]
             for c in rows]
    best = [[c["stats"][k]["ci_high" if m == "max" else "ci_low"] for k, m in zip(keys, modes, strict=True)]
            for c in rows]
    out = []
    for i, c in enumerate(rows):
        by_means = [label[j] for j in range(len(rows)) if j != i and dominates(means[j], means[i], modes)]
        # j dominates i with confidence: j's worst case beats i's best case on every objective
        sign = [1.0 if m == "max" else -1.0 for m in modes]
        with_ci = [label[j] for j in range(len(rows)) if j != i and not any(math.isnan(v) for v in worst[j] + best[i])
                   and all(s * w > s * b for s, w, b in zip(sign, worst[j], best[i], strict=True))]
        out.append({"method": c["method"], "rank": c["rank"], "label": label[i], "front_position": c.get("front", 0),
                    "objectives": {o["metric"]: c["stats"][o["summary"]] for o in objectives},
                    "dominated_on_means_by": by_means, "dominated_with_confidence_by": with_ci,
                    "non_dominated": not with_ci})
    return out


def front_table(answer: dict[str, Any]) -> str:
    """The confirmed front as text: mean [95% CI] of each objective, and the verdicts."""
    front = answer.get("front") or []
    if not front:
        return ""
    objectives = answer.get("objectives") or []
    headers = ["point", *[f"{o['mode']} {o['metric']}" for o in objectives], "dominated on means by",
               "dominated with 95% CIs by", "on the confirmed front"]
    rows = []
    for p in front:
        cells = []
        for o in objectives:
            s = p["objectives"].get(o["metric"]) or {}
            cells.append(f"{s.get('mean', math.nan):.3f} [{s.get('ci_low', math.nan):.3f}, "
                         f"{s.get('ci_high', math.nan):.3f}]")
        rows.append([p["label"], *cells, ", ".join(p["dominated_on_means_by"]) or "-",
                     ", ".join(p["dominated_with_confidence_by"]) or "-", "yes" if p["non_dominated"] else "no"])
    kept = [p["label"] for p in front if p["non_dominated"]]
    return ("confirmed Pareto front (each objective at the best-validation epoch, mean [95% CI] over the fresh "
            "seeds):\n" + render_table(headers, rows) + f"\n{len(kept)} of {len(front)} points remain non-dominated "
            f"once the intervals are taken into account: {', '.join(kept)}")
