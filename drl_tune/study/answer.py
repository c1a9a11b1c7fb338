"""The study's answer as files and text: ``answer.json`` (strict JSON), ``answer.csv`` (one row per configuration
and metric), ``answer.txt`` and the printed tables, the plain sentences (with Holm's adjustment and what the seeds
could detect: :func:`add_multiplicity_and_power`), and the summary metrics of the study's parent MLflow run. Built
by :func:`drl_tune.study.confirmation.build_answer`; read back by ``python -m drl_tune.confirm --answer`` and the
report."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from drl_tune.ground.io import atomic_write_text
from drl_tune.ground.stats import Interval, holm, min_detectable_difference, seeds_needed
from drl_tune.study.tables import render_table

ANSWER_JSON = "answer.json"
ANSWER_CSV = "answer.csv"
ANSWER_TXT = "answer.txt"
SELECT_METRIC = "val/acc_best"  # validation only: the search's own ranking metric
HEADLINE_METRIC = "test/acc_at_best_val"
BASE_METRICS = ("test/acc_at_best_val", "val/acc_best", "balance/gap")
LABELS = {"test/acc_at_best_val": "test acc at best val", "val/acc_best": "best val acc",
          "balance/gap": "balance gap"}


def metric_label(metric: str) -> str:
    if metric.startswith("val/acc_") and metric not in LABELS:
        return f"{metric.removeprefix('val/acc_')} probe acc"
    return LABELS.get(metric, metric)


def _finite(obj: Any) -> Any:
    """NaN → None, so answer.json is strict JSON (readable by any tool, not only Python)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def power_clause(diff: Interval, mdd: float | None = None, need: int | None = None) -> str:
    """"5 seeds detect ≥ 2.1 points; 1 point would need ≈ 23 seeds": what the paired t test at 5% with these seeds
    detects with 80% power, from the observed std of the differences (empty below 2 seeds or with no spread)."""
    if diff.n < 2 or not math.isfinite(diff.std) or diff.std <= 0:
        return ""
    if mdd is None:  # the caller may have computed both already (the answer stores them)
        mdd, need = min_detectable_difference(diff.std, diff.n), seeds_needed(0.01, diff.std)
    one = f"1 point would need ≈ {need} seeds" if need is not None else "1 point would need more than 100 000 seeds"
    return f"; {diff.n} seeds detect ≥ {100 * mdd:.1f} points; {one}"


def sentence(name: str, reference: str, metric: str, diff: Interval, p_holm: float | None = None,
             comparisons: int = 1, mdd: float | None = None, need: int | None = None) -> str:
    """"drl − joint: +1.2 points test acc at best val (95% CI −0.4 … +2.8), not significant at 5 seeds; 5 seeds
    detect ≥ 2.1 points; 1 point would need ≈ 23 seeds". With several comparisons against the same reference the
    verdict is Holm's (``p_holm``), and says so; the interval shown stays the unadjusted one."""
    n = diff.n
    if n < 2:
        return f"{name} − {reference}: {100 * diff.mean:+.1f} points {metric_label(metric)} from 1 seed (no interval)"
    head = (f"{name} − {reference}: {100 * diff.mean:+.1f} points {metric_label(metric)} "
            f"(95% CI {100 * diff.ci_low:+.1f} … {100 * diff.ci_high:+.1f})")
    if comparisons > 1 and p_holm is not None and math.isfinite(p_holm):
        verdict = "significant" if p_holm < 0.05 else "not significant"
        verdict += f" at {n} seeds after Holm's adjustment for {comparisons} comparisons (p {p_holm:.3g})"
    else:
        verdict = ("significant" if diff.excludes_zero else "not significant") + f" at {n} seeds"
    return f"{head}, {verdict}{power_clause(diff, mdd, need)}"


def _ci(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if stat.get("ci_low") is None:
        return fmt.format(stat["mean"]) + " (1 seed)"
    return f"{fmt.format(stat['mean'])} [{fmt.format(stat['ci_low'])}, {fmt.format(stat['ci_high'])}]"


def answer_tables(answer: dict[str, Any]) -> str:
    """The answer as text: per configuration mean [95% CI]; then the paired differences; then sentences."""
    metrics = answer["metrics"]
    # the keys that differ between the confirmed configurations: shared ones (lr, ...) first — they are what an
    # equal-budget comparison tuned for every method — then the methods' own, at most six columns
    methods = {c["method"] for c in answer["configs"]}
    keys = sorted({k for c in answer["configs"] for k in c["config"]},
                  key=lambda k: (k.split(".")[0] in methods, k))[:6]
    headers = ["method", "rank", "from trial", *keys, "seeds", *[metric_label(m) for m in metrics]]
    rows = [[c["method"], c["rank"], c["source_trial"], *[c["config"].get(k) for k in keys],
             f"{len(c['seeds'])}" + (f" ({len(c['failed_seeds'])} failed)" if c["failed_seeds"] else ""),
             *[_ci(c["stats"].get(m)) for m in metrics]] for c in answer["configs"]]
    seeds = ", ".join(str(s) for s in answer["seeds"])
    out = [f"mean [95% CI] over fresh seeds {seeds}, each metric at the trial's best-validation epoch:",
           render_table(headers, rows)]
    ref = answer.get("reference")
    if ref and answer["paired"]:
        pairs: dict[tuple[str, int], dict[str, dict]] = {}
        for p in answer["paired"]:
            pairs.setdefault((p["method"], p["rank"]), {})[p["metric"]] = p
        headers = ["method", "rank", *[f"Δ {metric_label(m)}" for m in metrics]]
        rows = [[m, r, *[_ci(d.get(metric), signed=True) + (" *" if d.get(metric, {}).get("significant") else "")
                         for metric in metrics]] for (m, r), d in pairs.items()]
        out += ["", f"paired difference against {ref['method']} (rank {ref['rank']}), seed by seed "
                    f"(* = significant at 5%: the 95% CI excludes 0, or Holm-adjusted p < 0.05 with several "
                    f"comparisons):", render_table(headers, rows)]
    if answer.get("front"):
        from drl_tune.study.front import front_table

        out += ["", front_table(answer)]
    out += [""] + answer["headline"]
    return "\n".join(out)


def answer_csv(answer: dict[str, Any]) -> str:
    """One row per (configuration, metric): its interval and its paired difference against joint."""
    paired = {(p["method"], p["rank"], p["metric"]): p for p in answer["paired"]}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "rank", "source_trial", "metric", "n", "mean", "std", "ci_low", "ci_high",
                     "diff_vs_joint_mean", "diff_ci_low", "diff_ci_high", "diff_n", "significant"])
    for c in answer["configs"]:
        for metric in answer["metrics"]:
            s = c["stats"].get(metric)
            if not s:
                continue
            p = paired.get((c["method"], c["rank"], metric), {})
            writer.writerow([c["method"], c["rank"], c["source_trial"], metric, s["n"], s["mean"], s["std"],
                             s["ci_low"], s["ci_high"], p.get("mean", ""), p.get("ci_low", ""),
                             p.get("ci_high", ""), p.get("n", ""), p.get("significant", "")])
    return buffer.getvalue()


def write_answer(study_dir: Path, answer: dict[str, Any]) -> dict[str, Path]:
    """answer.json, answer.csv and answer.txt in the study folder (each written whole, then renamed)."""
    files = {ANSWER_JSON: json.dumps(answer, indent=2), ANSWER_CSV: answer_csv(answer),
             ANSWER_TXT: answer_tables(answer) + "\n"}
    paths = {}
    for name, text in files.items():
        paths[name] = atomic_write_text(study_dir / name, text)
    return paths


def parent_metrics(answer: dict[str, Any]) -> dict[str, float]:
    """Per-method summary metrics for the study's parent MLflow run (the best-validation configuration of
    each method): ``<method>/<metric>_mean`` and ``_ci95`` (half width), and the paired difference vs joint."""
    out: dict[str, float] = {}
    best: dict[str, dict] = {}
    for c in answer["configs"]:
        val = (c["stats"].get(SELECT_METRIC) or {}).get("mean")
        if val is not None and (c["method"] not in best or val > best[c["method"]]["stats"][SELECT_METRIC]["mean"]):
            best[c["method"]] = c
    for method, c in best.items():
        for metric, s in c["stats"].items():
            slug = metric.replace("/", "_")
            if s.get("mean") is not None:
                out[f"{method}/{slug}_mean"] = s["mean"]
            if s.get("half_width") is not None:
                out[f"{method}/{slug}_ci95"] = s["half_width"]
        for p in answer["paired"]:
            if p["method"] == method and p["rank"] == c["rank"] and p.get("mean") is not None:
                slug = p["metric"].replace("/", "_")
                out[f"{method}/diff_vs_joint_{slug}_mean"] = p["mean"]
                if p.get("half_width") is not None:
                    out[f"{method}/diff_vs_joint_{slug}_ci95"] = p["half_width"]
    return out


def add_multiplicity_and_power(paired: list[dict[str, Any]], reference: str, top_k: int) -> None:
    """Per metric, every configuration compared with the reference is one family: Holm-adjust their paired-t
    p-values (``p_holm``, ``comparisons``); ``significant`` is Holm's verdict when the family has more than one
    member (``significant_unadjusted``: the 95% interval excludes 0); add what the seeds could detect
    (``min_detectable``: the difference found with 80% power; ``seeds_for_1pt``, ``seeds_for_observed``) and the
    sentence."""
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for p in paired:
        by_metric.setdefault(p["metric"], []).append(p)
    for family in by_metric.values():
        adjusted = holm([p["p"] for p in family])
        for p, p_holm in zip(family, adjusted, strict=True):
            diff: Interval = p.pop("_diff")
            m = len(family)
            spread = diff.n >= 2 and math.isfinite(diff.std) and diff.std > 0
            mdd = min_detectable_difference(diff.std, diff.n) if spread else None
            need = seeds_needed(0.01, diff.std) if spread else None
            p.update({
                "p_holm": p_holm, "comparisons": m, "significant_unadjusted": diff.excludes_zero,
                "significant": bool(p_holm < 0.05) if m > 1 and math.isfinite(p_holm) else diff.excludes_zero,
                "min_detectable": mdd, "seeds_for_1pt": need,
                "seeds_for_observed": seeds_needed(diff.mean, diff.std) if spread else None,
                "sentence": sentence(f"{p['method']}#{p['rank']}" if top_k > 1 else p["method"], reference,
                                     p["metric"], diff, p_holm=p_holm, comparisons=m, mdd=mdd, need=need),
            })
