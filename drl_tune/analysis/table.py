"""Table 1 of a paper from finished studies: one column group per dataset (one study each), one row per method.

:func:`build_table` is a pure function of the study folders (their ``answer.json`` and trial histories);
:func:`write_table` writes it as Markdown, LaTeX (booktabs), CSV, JSON (every number, full precision) and one HTML
page, with the critical-difference picture. What each number is, and where it comes from:

* **test acc**, **balance gap**: the answer's ``test/acc_at_best_val`` and ``balance/gap`` (each at the trial's
  best-validation epoch), mean [95% t interval] over the fresh confirmation seeds, copied from ``answer.json``. A
  method with several confirmed configurations (``top_k`` > 1) is shown by the one with the best mean *validation*
  accuracy, as the answer picks joint's reference.
* **macro-F1**: the answer does not hold it; it is read from the confirmation trials' histories
  (``test/macro_f1`` at each trial's ``best_epoch``) and given the answer's t interval. Absent when the histories
  are not there or do not report it (the notes say so).
* **Δ vs joint**: the answer's paired difference against the reference joint configuration (same seeds), its
  unadjusted 95% interval, and its verdict: Holm's (adjusted p < 0.05) when the answer compared several
  configurations with joint, the interval's otherwise — ``significant`` exactly as ``answer.json`` says it. Nothing
  is recomputed.
* **mean rank**: in each dataset the methods are ranked on mean test acc (1 = best, ties share the mean rank);
  a method's mean rank is the mean over the datasets that have it. The interval is a percentile bootstrap over the
  confirmation seeds: within each dataset the seeds are resampled with replacement, jointly for every method (a
  seed is the same data order and initialisation for all), the means and ranks recomputed (2000 resamples, seed
  0). It shows how much seed noise moves the ranks, not what other datasets would do.
* **critical difference** (Demšar 2006): Friedman's test over the datasets (methods present in every dataset),
  Nemenyi's post-hoc test (``scikit_posthocs.posthoc_nemenyi_friedman``) and its critical difference
  CD = q_α √(k(k+1)/6N), drawn with ``scikit_posthocs.critical_difference_diagram``. Needs ≥ 2 datasets and ≥ 2
  methods; otherwise the outputs say why instead of drawing.
* **tuning**: per method and dataset, the search trials it got, the epochs they trained, the hours they took
  (Σ ``time/epoch_s`` over the search's trial-epochs: each trial's own wall-clock time on its resources, CPU or
  GPU), and its epoch cost relative to joint (mean ``time/epoch_s`` over its search epochs / joint's).
* **test-selected**: what the official DRL script's and BalanceBenchmark's selection (the best *test* accuracy over
  epochs) would have reported for the same confirmed configuration: per confirmation trial max over epochs of
  ``test/acc``, mean [95% CI] over its seeds, beside the honest figure and the per-seed gain (test-selected −
  test acc at best val, same trial).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from drl_tune.analysis import published as pub
from drl_tune.analysis.colors import method_color
from drl_tune.analysis.load import SELECT_METRIC, TEST_METRIC, Study, load_study
from drl_tune.ground.io import atomic_write_bytes, atomic_write_text
from drl_tune.ground.stats import t_interval

GAP_METRIC = "balance/gap"
F1_METRIC = "test/macro_f1"
EPOCH_TIME = "time/epoch_s"
REFERENCE = "joint"
ALPHA = 0.05
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
CD_PNG = "critical_difference.png"
OUTPUTS = ("table.md", "table.tex", "table.csv", "table.json", "table.html")
INSTALL = "pip install -e '.[analysis]' -c constraints.txt"


class TableError(ValueError):
    """Studies that cannot make a table (no answer, no datasets): one message naming the study and what to do."""


@dataclass
class Table:
    """Table 1 as plain data (every field JSON-ready): ``rows`` one per (dataset, method), ``ranks`` one per
    method, ``configs`` every confirmed configuration's test-selected figure, ``cd`` the Friedman/Nemenyi result
    (or ``cd["reason"]`` why there is none), ``notes`` the sentences the outputs print under the table."""

    datasets: list[str]
    methods: list[str]
    studies: dict[str, str]
    rows: list[dict[str, Any]]
    ranks: dict[str, dict[str, Any]]
    configs: list[dict[str, Any]]
    cd: dict[str, Any]
    notes: list[str]
    how: dict[str, str] = field(default_factory=dict)
    loaded: dict[str, Study] = field(default_factory=dict, repr=False, compare=False)

    def row(self, dataset: str, method: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["dataset"] == dataset and r["method"] == method), None)

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it would deep-copy the loaded studies' frames only to drop them
        return _finite(json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)
                                              if f.name != "loaded"}, default=_plain)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        return cls(**{k: data[k] for k in ("datasets", "methods", "studies", "rows", "ranks", "configs", "cd",
                                           "notes")}, how=data.get("how", {}))


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _finite(obj: Any) -> Any:
    """NaN → None (strict JSON); numpy scalars → Python numbers."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------
# reading one study


def _representative(configs: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per method, the confirmed configuration the table shows: joint's reference, else the best mean validation
    accuracy (the lowest rank when that is missing)."""
    out: dict[str, dict[str, Any]] = {}
    for c in configs:
        m = c["method"]
        if reference and m == reference["method"]:
            if c["rank"] == reference["rank"]:
                out[m] = c
            continue
        val = (c["stats"].get(SELECT_METRIC) or {}).get("mean")
        key = (val if val is not None else -math.inf, -c["rank"])
        best = out.get(m)
        if best is None or key > ((best["stats"].get(SELECT_METRIC) or {}).get("mean") or -math.inf, -best["rank"]):
            out[m] = c
    return out


def _histories(study: Study, config: dict[str, Any]) -> dict[str, pd.DataFrame] | None:
    """The confirmation trials of ``config`` (its ``trials`` ids, in seed order) → their epoch rows; None unless
    every one is there."""
    epochs = study.epochs
    if epochs.empty or not config.get("trials"):
        return None
    confirm = epochs[epochs["stage"] == "confirm"]
    out = {}
    for tid in config["trials"]:
        rows = confirm[confirm["trial_id"] == str(tid)].sort_values("epoch")
        if rows.empty:
            return None
        out[str(tid)] = rows
    return out


def _at_best(rows: pd.DataFrame, key: str) -> float | None:
    last = rows.iloc[-1]
    best_epoch = last.get("best_epoch")
    if key not in rows or best_epoch is None or pd.isna(best_epoch):
        return None
    hit = rows[rows["epoch"] == int(best_epoch)]
    value = hit.iloc[-1][key] if len(hit) else math.nan
    return None if pd.isna(value) else float(value)


def _interval(values: list[float]) -> dict[str, Any]:
    return t_interval(values).to_dict()


def _test_selected(histories: dict[str, pd.DataFrame] | None) -> tuple[dict | None, dict | None]:
    """(max over epochs of test/acc per trial, its gain over test acc at best val in the same trial), as intervals
    over the trials; (None, None) without histories or without ``test/acc``."""
    if not histories:
        return None, None
    picked, gains = [], []
    for rows in histories.values():
        if "test/acc" not in rows or rows["test/acc"].isna().all() or TEST_METRIC not in rows:
            return None, None
        best_test = float(rows["test/acc"].max())
        honest = rows.iloc[-1][TEST_METRIC]
        if pd.isna(honest):
            return None, None
        picked.append(best_test)
        gains.append(best_test - float(honest))
    return _interval(picked), _interval(gains)


def _macro_f1(histories: dict[str, pd.DataFrame] | None) -> dict | None:
    if not histories:
        return None
    values = [_at_best(rows, F1_METRIC) for rows in histories.values()]
    found = [v for v in values if v is not None]
    return _interval(found) if found and len(found) == len(values) else None


def _tuning(study: Study) -> dict[str, dict[str, Any]]:
    """Per method: search trials, search epochs, hours (Σ time/epoch_s / 3600), mean time/epoch_s."""
    trials, epochs = study.trials, study.epochs
    search_t = trials[trials["stage"] == "search"]
    search_e = epochs[epochs["stage"] == "search"] if not epochs.empty else epochs
    out = {}
    for method in sorted(set(search_t["method"])):
        mine = search_e[search_e["method"] == method] if not search_e.empty else search_e
        times = mine[EPOCH_TIME].dropna() if EPOCH_TIME in mine else pd.Series(dtype=float)
        out[method] = {"search_trials": int((search_t["method"] == method).sum()),
                       "search_errored": int(((search_t["method"] == method) & (search_t["status"] == "error")).sum()),
                       "search_epochs": int(len(mine)),
                       "search_hours": float(times.sum()) / 3600 if len(times) else None,
                       "epoch_s_mean": float(times.mean()) if len(times) else None}
    return out


def _stat(prefix: str, s: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("mean", "std", "ci_low", "ci_high", "n")
    return {f"{prefix}_{k}": (s or {}).get(k) for k in keys}


def _dataset_rows(dataset: str, study: Study, answer: dict[str, Any], methods: list[str] | None,
                  notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ref = answer.get("reference")
    chosen = _representative(answer["configs"], ref)
    tuning = _tuning(study)
    data_name = (study.plan.get("constants") or {}).get("data.name")
    joint_epoch = (tuning.get(REFERENCE) or {}).get("epoch_s_mean")
    paired = {(p["method"], p["rank"]): p for p in answer.get("paired", []) if p["metric"] == TEST_METRIC}
    rows, configs = [], []
    no_f1, no_hist = [], []
    for c in answer["configs"]:
        hist = _histories(study, c)
        picked, gain = _test_selected(hist)
        if hist is None:
            no_hist.append(f"{c['method']}#{c['rank']}")
        configs.append({"dataset": dataset, "method": c["method"], "rank": c["rank"],
                        "source_trial": c.get("source_trial"), "seeds": c.get("seeds"), "trials": c.get("trials"),
                        "shown": chosen.get(c["method"]) is c,
                        "test_acc_at_best_val": c["stats"].get(TEST_METRIC), "test_selected": picked,
                        "test_selected_gain": gain})
    for method, c in chosen.items():
        if methods is not None and method not in methods:
            continue
        stats = c["stats"]
        hist = _histories(study, c)
        f1 = _macro_f1(hist)
        if f1 is None:
            no_f1.append(method)
        cfg = next(x for x in configs if x["shown"] and x["method"] == method)
        p = paired.get((method, c["rank"]), {})
        is_ref = ref is not None and ref["method"] == method and ref["rank"] == c["rank"]
        tune = tuning.get(method, {})
        epoch_s = tune.get("epoch_s_mean")
        published = pub.published(data_name, method)
        row = {"dataset": dataset, "study": answer.get("study"), "method": method, "config_rank": c["rank"],
               "source_trial": c.get("source_trial"),
               "seeds": len(c.get("seeds") or []) or (stats.get(TEST_METRIC) or {}).get("n") or 0,
               "failed_seeds": len(c.get("failed_seeds") or []), "reference": is_ref,
               **_stat("test_acc", stats.get(TEST_METRIC)), **_stat("macro_f1", f1),
               **_stat("gap", stats.get(GAP_METRIC)), **_stat("val_acc", stats.get(SELECT_METRIC)),
               "diff_mean": p.get("mean"), "diff_ci_low": p.get("ci_low"), "diff_ci_high": p.get("ci_high"),
               "diff_n": p.get("n"), "diff_p": p.get("p"), "diff_p_holm": p.get("p_holm"),
               "diff_comparisons": p.get("comparisons"), "diff_significant": p.get("significant"),
               "diff_significant_unadjusted": p.get("significant_unadjusted"),
               **_stat("test_selected", cfg["test_selected"]),
               "test_selected_gain_mean": (cfg["test_selected_gain"] or {}).get("mean"),
               "test_selected_gain_ci_low": (cfg["test_selected_gain"] or {}).get("ci_low"),
               "test_selected_gain_ci_high": (cfg["test_selected_gain"] or {}).get("ci_high"),
               "search_trials": tune.get("search_trials"), "search_errored": tune.get("search_errored"),
               "search_epochs": tune.get("search_epochs"), "search_hours": tune.get("search_hours"),
               "epoch_s_mean": epoch_s,
               "epoch_cost_vs_joint": epoch_s / joint_epoch if epoch_s is not None and joint_epoch else None,
               "published_acc": (published or {}).get("acc"), "published_macro_f1": (published or {}).get("macro_f1"),
               "published_source": (published or {}).get("source")}
        rows.append(row)
    if no_hist:
        notes.append(f"{dataset}: no per-epoch history for the confirmation trials of {', '.join(no_hist)}: their "
                     f"test-selected figure (and macro-F1) is left out")
    elif no_f1:
        notes.append(f"{dataset}: the confirmation trials of {', '.join(no_f1)} report no {F1_METRIC}: macro-F1 "
                     f"left out")
    column = pub.DATASETS.get(str(data_name))
    if column and rows:
        none = [r["method"] for r in rows if r["published_acc"] is None]
        notes.append(f"{dataset} ({column}): † = {pub.SOURCE}'s published test accuracy, "
                     f"{pub.CAVEAT} ({pub.CITATION}); it is not ranked with ours and compares with our "
                     f"test-selected figure, not with the honest one"
                     + (f"; none published for {', '.join(none)}" if none else ""))
    if not ref:
        notes.append(f"{dataset}: no joint configuration was confirmed, so there is no paired difference against "
                     f"joint training")
    return rows, configs


# ---------------------------------------------------------------------------------------------------------
# ranks and the critical difference


def _rank_desc(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = the highest value, ties share their mean rank."""
    return st.rankdata(-values, axis=-1, method="average")


def mean_ranks(rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]], methods: list[str],
               datasets: list[str], n_boot: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """Each method's rank per dataset (on mean test acc), their mean over the datasets that have the method, and a
    percentile bootstrap interval over the confirmation seeds (resampled jointly per dataset)."""
    rng = np.random.default_rng(seed)
    boot_sum = {m: np.zeros(n_boot) for m in methods}
    count = dict.fromkeys(methods, 0)
    per_dataset: dict[str, dict[str, float]] = {m: {} for m in methods}
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset and r["method"] in methods
                and r["test_acc_mean"] is not None]
        if not mine:
            continue
        names = [r["method"] for r in mine]
        observed = _rank_desc(np.array([r["test_acc_mean"] for r in mine]))
        by_cfg = {(c["method"], c["rank"]): c for c in answers[dataset]["configs"]}
        per_seed = []
        for r in mine:
            c = by_cfg[(r["method"], r["config_rank"])]
            seeds = c.get("seeds") or answers[dataset].get("seeds") or []
            values = c["stats"][TEST_METRIC].get("values") or []
            if len(values) != len(seeds) or not values:  # an answer without its per-seed values: no resampling
                seeds, values = ["mean"], [r["test_acc_mean"]]
            per_seed.append(dict(zip(seeds, values, strict=True)))
        seeds = sorted({s for d in per_seed for s in d}, key=str)
        matrix = np.array([[d.get(s, np.nan) for s in seeds] for d in per_seed])  # methods × seeds
        idx = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        sampled = matrix[:, idx]  # methods × boot × seeds
        with warnings.catch_warnings():  # a method that lacks every resampled seed falls back to its mean
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(sampled, axis=2)
        fallback = np.array([r["test_acc_mean"] for r in mine])[:, None]
        means = np.where(np.isnan(means), fallback, means)
        boot_ranks = _rank_desc(means.T)  # boot × methods
        for i, m in enumerate(names):
            per_dataset[m][dataset] = float(observed[i])
            boot_sum[m] += boot_ranks[:, i]
            count[m] += 1
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        if not count[m]:
            out[m] = {"mean_rank": None, "low": None, "high": None, "datasets": 0, "per_dataset": {}}
            continue
        boot = boot_sum[m] / count[m]
        out[m] = {"mean_rank": float(np.mean(list(per_dataset[m].values()))),
                  "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
                  "datasets": count[m], "per_dataset": per_dataset[m]}
    return out


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference for k methods over n datasets (Demšar 2006, eq. 5): q_α √(k(k+1)/6n), with
    q_α the studentized range quantile over √2 (k = 3: 2.343, k = 4: 2.569 at α = 0.05, Demšar's table 5)."""
    q = float(st.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def critical_difference(rows: list[dict[str, Any]], methods: list[str], datasets: list[str]) -> dict[str, Any]:
    """Friedman's test and Nemenyi's post-hoc over the datasets, on the methods present in every dataset."""
    complete = [m for m in methods if all(_cell(rows, d, m) is not None for d in datasets)]
    left_out = [m for m in methods if m not in complete]
    base = {"datasets": len(datasets), "methods": complete, "left_out": left_out, "alpha": ALPHA}
    if len(datasets) < 2:
        return base | {"reason": f"the Friedman/Nemenyi test and its critical-difference picture need at least 2 "
                                 f"datasets; this table has {len(datasets)}, so none is drawn"}
    if len(complete) < 2:
        return base | {"reason": f"the Friedman/Nemenyi test needs at least 2 methods present in every dataset; "
                                 f"{len(complete)} are ({', '.join(complete) or 'none'}), so no picture is drawn"}
    try:
        import scikit_posthocs as sp
    except ImportError:
        return base | {"reason": f"scikit-posthocs is not installed ({INSTALL}): no critical-difference test"}
    matrix = np.array([[_cell(rows, d, m) for m in complete] for d in datasets])  # datasets × methods
    n, k = matrix.shape
    ranks = _rank_desc(matrix).mean(axis=0)
    friedman: dict[str, Any] = {"statistic": None, "p": None, "iman_davenport_F": None, "iman_davenport_p": None}
    if k >= 3:
        chi2, p = st.friedmanchisquare(*matrix.T)
        friedman |= {"statistic": float(chi2), "p": float(p)}
        denom = n * (k - 1) - chi2
        if denom > 0:  # Iman & Davenport's F (Demšar's recommended form), df (k−1, (k−1)(n−1))
            f = (n - 1) * chi2 / denom
            friedman |= {"iman_davenport_F": float(f),
                         "iman_davenport_p": float(st.f.sf(f, k - 1, (k - 1) * (n - 1)))}
    else:
        friedman["note"] = "Friedman's test needs at least 3 methods (scipy); with 2 only Nemenyi's pair is given"
    pvalues = sp.posthoc_nemenyi_friedman(matrix)
    pvalues.index = pvalues.columns = complete
    return base | {"friedman": friedman, "mean_ranks": dict(zip(complete, map(float, ranks), strict=True)),
                   "cd": nemenyi_cd(k, n), "nemenyi_p": {a: {b: float(pvalues.loc[a, b]) for b in complete}
                                                         for a in complete}}


def _cell(rows: list[dict[str, Any]], dataset: str, method: str) -> float | None:
    r = next((r for r in rows if r["dataset"] == dataset and r["method"] == method), None)
    return None if r is None else r["test_acc_mean"]


# ---------------------------------------------------------------------------------------------------------
# the table


def build_table(studies: Mapping[str, Path | str], methods: list[str] | None = None,
                n_boot: int = BOOTSTRAP) -> Table:
    """Table 1 from finished study folders: ``studies`` maps a dataset label (shown as the column) to its study
    folder; ``methods`` picks and orders the rows (default: joint first, then the others alphabetically)."""
    if not studies:
        raise TableError("no studies given: pass at least one finished study folder per dataset")
    loaded: dict[str, Study] = {}
    answers: dict[str, dict[str, Any]] = {}
    for dataset, folder in studies.items():
        study = load_study(folder)
        if not study.answer:
            raise TableError(f"study {study.name!r} ({folder}) for dataset {dataset!r} has no answer.json: confirm it "
                             f"first (python -m drl_tune.confirm --path {folder})")
        loaded[dataset], answers[dataset] = study, study.answer
    datasets = list(studies)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    for dataset in datasets:
        dataset_rows, dataset_configs = _dataset_rows(dataset, loaded[dataset], answers[dataset], methods, notes)
        rows += dataset_rows
        configs += dataset_configs
    present = {r["method"] for r in rows}
    if methods is None:
        methods = sorted(present, key=lambda m: (m != REFERENCE, m))
    else:
        missing = [m for m in methods if m not in present]
        if missing:
            notes.append(f"not confirmed in any study: {', '.join(missing)} (left out)")
        methods = [m for m in methods if m in present]
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (datasets.index(r["dataset"]), order[r["method"]]))
    ranks = mean_ranks(rows, answers, methods, datasets, n_boot=n_boot)
    for r in rows:
        r["rank_in_dataset"] = ranks[r["method"]]["per_dataset"].get(r["dataset"])
        r |= {"mean_rank": ranks[r["method"]]["mean_rank"], "mean_rank_low": ranks[r["method"]]["low"],
              "mean_rank_high": ranks[r["method"]]["high"]}
    cd = critical_difference(rows, methods, datasets)
    partial = [m for m in methods if ranks[m]["datasets"] < len(datasets)]
    sentence = (f"The ranks rest on {len(datasets)} dataset{'s' if len(datasets) != 1 else ''} "
                f"({', '.join(datasets)})")
    if partial:
        sentence += "; " + ", ".join(f"{m} on {ranks[m]['datasets']}" for m in partial)
    notes.insert(0, sentence + ".")
    if "reason" in cd:
        notes.append(cd["reason"][0].upper() + cd["reason"][1:] + ".")
    elif cd["left_out"]:
        notes.append(f"The critical-difference test leaves out {', '.join(cd['left_out'])} (not in every dataset).")
    how = {
        "test_acc": "test/acc_at_best_val from answer.json: mean [95% t interval] over the fresh confirmation seeds",
        "macro_f1": "test/macro_f1 at each confirmation trial's best-validation epoch, from its history "
                    "(answer.json does not hold it), t interval over the seeds",
        "gap": "balance/gap at the best-validation epoch from answer.json",
        "diff": "answer.json's paired difference against joint's reference configuration (same seeds) and its "
                "verdict: Holm-adjusted p < 0.05 when several configurations were compared, else the 95% interval "
                "excludes 0",
        "mean_rank": f"rank of the mean test acc within each dataset (1 = best), averaged over datasets; interval: "
                     f"2.5-97.5% percentile bootstrap, confirmation seeds resampled jointly within each dataset "
                     f"({n_boot} resamples, seed {BOOTSTRAP_SEED})",
        "cd": "Friedman test + Nemenyi post-hoc (Demsar 2006) over datasets, scikit-posthocs",
        "tuning": "search trials, their epochs, hours = sum of time/epoch_s over the search's trial-epochs / 3600, "
                  "epoch cost = mean time/epoch_s / joint's",
        "test_selected": "max over epochs of test/acc per confirmation trial, mean over the seeds (the official "
                         "DRL script's / BalanceBenchmark's selection); gain = that - test acc at best val",
    }
    return Table(datasets, methods, {d: str(Path(p)) for d, p in studies.items()}, rows, ranks, configs, cd, notes,
                 how, loaded)


# ---------------------------------------------------------------------------------------------------------
# rendering


def _f(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(row: dict[str, Any] | None, prefix: str, digits: int = 3, signed: bool = False, mark: str = "") -> str:
    if row is None or row.get(f"{prefix}_mean") is None:
        return "–"
    mean = _f(row[f"{prefix}_mean"], digits, signed) + mark
    if row.get(f"{prefix}_ci_low") is None:
        return mean
    return f"{mean} [{_f(row[f'{prefix}_ci_low'], digits, signed)}, {_f(row[f'{prefix}_ci_high'], digits, signed)}]"


def _mark(row: dict[str, Any] | None) -> str:
    """'↑' / '↓': significantly above / below joint as answer.json decides (Holm with several comparisons)."""
    if not row or not row.get("diff_significant") or row.get("diff_mean") is None:
        return ""
    return "↑" if row["diff_mean"] > 0 else "↓"


def _rank_text(table: Table, method: str) -> str:
    r = table.ranks[method]
    if r["mean_rank"] is None:
        return "–"
    return f"{r['mean_rank']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def legend(table: Table) -> str:
    seeds = sorted({r["seeds"] for r in table.rows})
    return (f"Test accuracy at the best-validation epoch, mean [95% CI] over {'/'.join(map(str, seeds))} fresh "
            f"seeds; macro-F1 at the same epoch; balance gap = |probe accuracy difference| at that epoch (lower = "
            f"more balanced). ↑/↓: the paired difference against joint training is significant at 5% "
            f"(Holm-adjusted across the methods compared with joint in that dataset). Mean rank over datasets "
            f"(1 = best) with a 95% seed-bootstrap interval."
            + (f" †: {pub.SOURCE}'s published figure ({pub.CAVEAT}; see the notes)."
               if any(with_published(table, d) for d in table.datasets) else ""))


def with_published(table: Table, dataset: str) -> bool:
    """Whether the dataset's column group carries BalanceBenchmark's published figure (a dataset it reports)."""
    return any(r.get("published_acc") is not None for r in table.rows if r["dataset"] == dataset)


def group_columns(table: Table, dataset: str) -> list[str]:
    return ["test acc", "macro-F1", "gap"] + ([f"{pub.SOURCE}†"] if with_published(table, dataset) else [])


def main_grid(table: Table) -> tuple[list[str], list[list[str]]]:
    """Table 1's cells: method | per dataset: test acc [CI] + mark, macro-F1, gap | mean rank [interval]."""
    headers = ["method"]
    for d in table.datasets:
        headers += [f"{d} {sub}" for sub in group_columns(table, d)]
    headers.append("mean rank")
    body = []
    for m in table.methods:
        line = [m]
        for d in table.datasets:
            r = table.row(d, m)
            r = r or {}
            line += [_ci(r, "test_acc", mark=_mark(r)), _f(r.get("macro_f1_mean")), _f(r.get("gap_mean"))]
            if with_published(table, d):
                line.append(_f(r.get("published_acc"), 4))
        line.append(_rank_text(table, m))
        body.append(line)
    return headers, body


def detail_grid(table: Table) -> tuple[list[str], list[list[str]]]:
    headers = ["dataset", "method", "seeds", "Δ test acc vs joint [95% CI]", "p (Holm)", "significant",
               "test-selected acc", "test-selected − honest", "search trials", "search epochs", "search hours",
               "epoch cost × joint"]
    body = []
    for r in table.rows:
        if r["reference"]:
            diff, p, sig = "reference", "–", "–"
        elif r["diff_mean"] is None:
            diff, p, sig = "–", "–", "–"
        else:
            diff = _ci(r, "diff", signed=True)
            p = "–" if r["diff_p_holm"] is None else f"{r['diff_p_holm']:.3g}"
            if r["diff_comparisons"] and r["diff_comparisons"] > 1:
                p += f" ({r['diff_comparisons']} comparisons)"
            sig = "yes" if r["diff_significant"] else "no"
        body.append([r["dataset"], r["method"], str(r["seeds"]), diff, p, sig, _ci(r, "test_selected"),
                     _f(r["test_selected_gain_mean"], signed=True), _f(r["search_trials"], 0)
                     if r["search_trials"] is not None else "–",
                     str(r["search_epochs"]) if r["search_epochs"] is not None else "–", _f(r["search_hours"], 2),
                     _f(r["epoch_cost_vs_joint"], 2)])
    return headers, body


def cd_text(table: Table) -> str:
    cd = table.cd
    if "reason" in cd:
        return cd["reason"][0].upper() + cd["reason"][1:] + "."
    fr = cd["friedman"]
    if fr.get("p") is not None:
        head = (f"Friedman χ² = {fr['statistic']:.2f}, p = {fr['p']:.3g} (Iman–Davenport F = "
                f"{_f(fr.get('iman_davenport_F'), 2)}, p = {_f(fr.get('iman_davenport_p'), 3)})")
    else:
        head = fr.get("note", "no Friedman test")
    pairs = [f"{a} vs {b}" for i, a in enumerate(cd["methods"]) for b in cd["methods"][i + 1:]
             if cd["nemenyi_p"][a][b] < cd["alpha"]]
    return (f"{head}; Nemenyi CD = {cd['cd']:.2f} ranks at α = {cd['alpha']} over {cd['datasets']} datasets and "
            f"{len(cd['methods'])} methods; pairs Nemenyi separates: {', '.join(pairs) if pairs else 'none'}.")


def _md_table(headers: list[str], body: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(table: Table) -> str:
    h, b = main_grid(table)
    dh, db = detail_grid(table)
    out = ["# Table 1", "", _md_table(h, b), "", legend(table), "", *[f"* {n}" for n in table.notes], "",
           "## Paired differences, test-selected figures and tuning", "", _md_table(dh, db), "",
           "Test-selected: the mean over the seeds of each confirmation trial's best *test* accuracy over epochs "
           "(the official DRL script's and BalanceBenchmark's selection), beside the honest test accuracy at the "
           "best-validation epoch; the difference is what selecting on test adds.", "",
           "## Critical difference", "", cd_text(table)]
    if "reason" not in table.cd:
        out += ["", f"![critical difference]({CD_PNG})"]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


CAPTION_ARROW = "$\\{}arrow$"


def _tex_text(text: str, arrows: str = "$^{{\\{}arrow}}$") -> str:
    text = tex_escape(text).replace("↑", arrows.format("up")).replace("↓", arrows.format("down"))
    for char, tex in (("–", "--"), ("−", "-"), ("×", r"$\times$"), ("≥", r"$\geq$"), ("Δ", r"$\Delta$"),
                      ("α", r"$\alpha$"), ("χ²", r"$\chi^2$"), ("†", r"$^\dagger$")):
        text = text.replace(char, tex)
    return text


def _tex_cell(text: str) -> str:
    text = _tex_text(text)
    if " [" in text:  # the interval in small type under the mean's width
        mean, rest = text.split(" [", 1)
        text = f"{mean} {{\\scriptsize [{rest}}}"
    return text


def to_latex(table: Table) -> str:
    h, b = main_grid(table)
    widths = [len(group_columns(table, x)) for x in table.datasets]
    starts = [2 + sum(widths[:i]) for i in range(len(widths))]
    cols = "l" + "".join("r" * w for w in widths) + "r"
    group = " & ".join(f"\\multicolumn{{{w}}}{{c}}{{{tex_escape(x)}}}"
                       for x, w in zip(table.datasets, widths, strict=True))
    rules = " ".join(f"\\cmidrule(lr){{{a}-{a + w - 1}}}" for a, w in zip(starts, widths, strict=True))
    sub = " & ".join(" & ".join(("acc", "F1", "gap", r"BB$^\dagger$")[:w]) for w in widths)
    lines = [r"% Table 1 (drl_tune.analysis.table); needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\small", f"\\caption{{{_tex_text(legend(table), CAPTION_ARROW)}}}",
             r"\label{tab:main}", f"\\begin{{tabular}}{{{cols}}}", r"\toprule",
             f" & {group} & \\\\", rules, f"method & {sub} & mean rank \\\\", r"\midrule"]
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in b]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    dh, db = detail_grid(table)
    lines += [r"\begin{table}[t]", r"\centering", r"\scriptsize",
              r"\caption{Paired differences against joint training (Holm-adjusted), what selecting on test would "
              r"have reported, and the tuning each method got.}", r"\label{tab:details}",
              f"\\begin{{tabular}}{{ll{'r' * (len(dh) - 2)}}}", r"\toprule",
              " & ".join(_tex_cell(x) for x in dh) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in db]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_csv(table: Table) -> str:
    """One row per (dataset, method), every number at full precision (the mean rank repeated on each row)."""
    columns = list(dict.fromkeys(k for r in table.rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for r in table.rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def cd_figure(table: Table) -> Any:
    """The critical-difference picture (scikit-posthocs' diagram: methods on their mean rank, a bar joins those
    Nemenyi cannot tell apart, the CD drawn above the axis); None when the table has no test."""
    if "reason" in table.cd:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    cd = table.cd
    methods = cd["methods"]
    ranks = pd.Series(cd["mean_ranks"])
    pvalues = pd.DataFrame(cd["nemenyi_p"]).loc[methods, methods]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.35 * len(methods)))
    sp.critical_difference_diagram(ranks, pvalues, ax=ax, alpha=cd["alpha"],
                                   color_palette={m: method_color(m, methods) for m in methods},
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
                                   label_props={"fontsize": 10}, elbow_props={"linewidth": 1.2})
    k = len(methods)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_xticks(range(1, k + 1))
    # the CD as a bar of its length above the rank axis and its tick labels, from rank 1 (Demšar's figure 1)
    low, top = ax.get_ylim()
    y = 1.6
    ax.plot([1, 1 + cd["cd"]], [y, y], color="black", linewidth=1.5, clip_on=False)
    for x in (1, 1 + cd["cd"]):
        ax.plot([x, x], [y - 0.15, y + 0.15], color="black", linewidth=1.5, clip_on=False)
    ax.text(1 + cd["cd"] / 2, y + 0.25, f"CD = {cd['cd']:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(low, y + 0.9)
    fr = cd["friedman"]
    friedman = (f"Friedman χ² = {fr['statistic']:.2f}, p = {fr['p']:.3g}" if fr.get("p") is not None
                else "Friedman: needs ≥ 3 methods")
    ax.set_title(f"Mean rank on test acc at best val over {cd['datasets']} datasets (1 = best)\n{friedman}; "
                 f"Nemenyi CD = {cd['cd']:.2f} at α = {cd['alpha']}; bars join methods not separated",
                 fontsize=9, pad=22)
    fig.tight_layout()
    return fig


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _html_table(headers: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def to_html(table: Table, cd_png: bytes | None, tradeoffs: dict[str, bytes]) -> str:
    h, b = main_grid(table)
    dh, db = detail_grid(table)

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Table 1</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border-top:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
             "<h1>Table 1</h1>", _html_table(h, b), f"<p>{html.escape(legend(table))}</p>", "<ul>",
             *[f"<li>{html.escape(n)}</li>" for n in table.notes], "</ul>",
             "<h2>Paired differences, test-selected figures and tuning</h2>", _html_table(dh, db),
             "<h2>Critical difference</h2>", f"<p>{html.escape(cd_text(table))}</p>"]
    if cd_png:
        parts.append(img(cd_png, "critical-difference diagram"))
    for dataset, data in tradeoffs.items():
        parts += [f"<h2>{html.escape(dataset)}: accuracy against balance</h2>", img(data, f"{dataset} trade-off")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_table(table: Table, out_dir: Path | str, tradeoff: bool = True) -> list[Path]:
    """table.md, table.tex, table.csv, table.json, table.html and (with ≥ 2 datasets) critical_difference.png in
    ``out_dir``; the HTML embeds the picture and, with ``tradeoff``, each dataset's trade-off plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = cd_figure(table)
    cd_png = _png(fig) if fig is not None else None
    if cd_png is not None:
        paths.append(atomic_write_bytes(out / CD_PNG, cd_png))
    elif (out / CD_PNG).exists():
        (out / CD_PNG).unlink()  # a picture from an earlier, larger table would contradict this one
    tradeoffs: dict[str, bytes] = {}
    if tradeoff and table.loaded:
        from drl_tune.analysis import plots

        for dataset, study in table.loaded.items():
            try:
                tradeoffs[dataset] = _png(plots.tradeoff(study))
            except Exception as err:  # noqa: BLE001 — an optional picture: the table stands without it
                table.notes.append(f"{dataset}: no trade-off plot ({type(err).__name__}: {err})")
    texts = {"table.md": to_markdown(table), "table.tex": to_latex(table), "table.csv": to_csv(table),
             "table.json": json.dumps(table.to_dict(), indent=2, allow_nan=False) + "\n",
             "table.html": to_html(table, cd_png, tradeoffs)}
    for name in OUTPUTS:
        paths.append(atomic_write_text(out / name, texts[name]))
    return paths
