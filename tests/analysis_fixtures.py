"""A hand-made ``answer.json`` in the confirmation stage's schema (HELPERS.md / issue 8), for testing the plots
and the report before (and independently of) the confirmation stage: fixed per-seed values, statistics computed
here with scipy's t distribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats as st

SEEDS = [101, 102, 103]
VALUES = {  # (method, rank) -> metric -> per-seed values
    ("drl", 1): {"test/acc_at_best_val": [0.62, 0.58, 0.66], "balance/gap": [0.30, 0.26, 0.35],
                 "val/acc_visual": [0.40, 0.44, 0.37]},
    ("joint", 1): {"test/acc_at_best_val": [0.55, 0.54, 0.60], "balance/gap": [0.42, 0.40, 0.45],
                   "val/acc_visual": [0.33, 0.35, 0.30]},
}


def interval(values: list[float]) -> dict:
    a = np.asarray(values, float)
    n, mean, sd = len(a), float(a.mean()), float(a.std(ddof=1))
    half = float(st.t.ppf(0.975, n - 1) * sd / np.sqrt(n))
    return {"mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n,
            "values": list(values)}


def make_answer(study: str, source_trials: dict[str, str] | None = None) -> dict:
    configs = []
    for (method, rank), metrics in VALUES.items():
        configs.append({"method": method, "rank": rank, "source_trial": (source_trials or {}).get(method, "x"),
                        "config": {"lr": 0.01}, "trials": [f"{method}{s}" for s in SEEDS],
                        "stats": {k: interval(v) for k, v in metrics.items()}})
    paired = []
    for metric in VALUES[("drl", 1)]:
        d = np.subtract(VALUES[("drl", 1)][metric], VALUES[("joint", 1)][metric]).tolist()
        s = interval(d)
        sig = s["ci_low"] > 0 or s["ci_high"] < 0
        paired.append({"method": "drl", "rank": 1, "metric": metric, "mean": s["mean"], "std": s["std"],
                       "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"], "significant": sig,
                       "sentence": f"drl - joint on {metric}: {s['mean']:+.3f} "
                                   f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"})
    return {"study": study, "select_metric": "val/acc_best", "seeds": SEEDS, "top_k": 1,
            "metrics": list(VALUES[("drl", 1)]), "configs": configs, "reference": {"method": "joint", "rank": 1},
            "paired": paired, "headline": [p["sentence"] for p in paired]}


def write_answer(study_dir: Path, source_trials: dict[str, str] | None = None) -> Path:
    path = Path(study_dir) / "answer.json"
    path.write_text(json.dumps(make_answer(Path(study_dir).name, source_trials), indent=2))
    return path
