"""The study's pictures (matplotlib; each saved as PNG and SVG by :func:`save`).

* :func:`tradeoff` — multimodal accuracy (test at the best-validation epoch) against balance: the balance gap
  and the weak modality's probe accuracy; one colour per method, the Pareto front of the search trials, the
  confirmed configurations with their 95% intervals.
* :func:`dynamics` — one DRL trial's per-modality probe accuracy and train/val purity over epochs, its re-init
  epochs marked and α drawn, beside joint training's curves for the same seed.
* :func:`importance` and :func:`knobs` — what matters: Optuna's importance evaluators on a study rebuilt from
  the trials (per method, with that method's own keys), and accuracy against DRL's knobs.
* :func:`drl_tune.analysis.budget.budget` — the budget curves: expected best validation accuracy after n trials
  of each method (its own module).
* :func:`comparison` — the confirmation's answer: mean and 95% interval per configuration, paired difference
  against joint.

Every artist that a test (or a reader of the SVG) needs to find carries a ``gid``.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # the default backend: Agg on a headless machine, inline in Jupyter
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from drl_tune.analysis.budget import budget as budget_figure
from drl_tune.analysis.colors import (  # noqa: F401 (plots.* names)
    EXTRA_COLORS,
    MANY_METHODS,
    METHOD_COLORS,
    method_color,
)
from drl_tune.analysis.front_plot import pareto as pareto_figure
from drl_tune.analysis.load import SELECT_METRIC, TEST_METRIC, Study
from drl_tune.ground.io import atomic_write_with
from drl_tune.ground.readable import sig4
from drl_tune.ground.stats import non_dominated
from drl_tune.study.optuna_db import distribution

DRL_KNOBS = ["drl.lam", "drl.diagnosis_interval", "drl.n_clusters"]
LABELS = {"balance/gap": "balance gap |probe acc difference| at best-val epoch (lower = more balanced)",
          TEST_METRIC: "test accuracy at best-val epoch", SELECT_METRIC: "best validation accuracy"}


def save(fig: Figure, out_dir: Path | str, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.svg`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    atomic_write_with(paths[0], partial(fig.savefig, dpi=150, bbox_inches="tight"))
    atomic_write_with(paths[1], partial(fig.savefig, bbox_inches="tight"))
    return paths


def pareto_mask(x: np.ndarray, y: np.ndarray, x_higher_better: bool) -> np.ndarray:
    """Points no other point beats on both axes (y always higher-better)."""
    front = set(non_dominated(list(zip(x.tolist(), y.tolist(), strict=True)),
                              ("max" if x_higher_better else "min", "max")))
    return np.array([i in front for i in range(len(x))], dtype=bool)


# ---------------------------------------------------------------------------------------------------------
# trade-off


def _confirmed(study: Study, metric: str) -> dict[tuple[str, int], dict[str, float]]:
    """(method, rank) -> that configuration's stats for ``metric`` from answer.json (empty without one)."""
    out = {}
    for cfg in (study.answer or {}).get("configs", []):
        stats = cfg.get("stats", {}).get(metric)
        if stats:
            out[(cfg["method"], int(cfg.get("rank", 1)))] = stats
    return out


def tradeoff(study: Study) -> Figure:
    """Test accuracy at best-val vs balance gap (left) and vs the weak modality's probe accuracy (right)."""
    trials = study.finished()
    trials = trials[trials["stage"] == "search"] if (trials["stage"] == "search").any() else trials
    weak = study.weak_modality()
    panels = [("balance/gap", False, LABELS["balance/gap"])]
    if weak:
        panels.append((f"val/acc_{weak}", True, f"weak modality ({weak}) probe accuracy at best-val epoch"))
    methods = study.methods
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8 if len(methods) <= MANY_METHODS else 6.2),
                             squeeze=False)
    for ax, (xkey, x_higher, xlabel) in zip(axes[0], panels, strict=True):
        data = trials.dropna(subset=[xkey, TEST_METRIC]) if xkey in trials else trials.iloc[0:0]
        for method in methods:
            mine = data[data["method"] == method]
            if mine.empty:
                continue
            stopped = mine["status"] == "stopped"
            sc = ax.scatter(mine[xkey], mine[TEST_METRIC], s=40, color=method_color(method, methods), alpha=0.8,
                            edgecolors="black", linewidths=0.4, label=f"{method} search trials ({len(mine)})", zorder=3)
            sc.set_gid(f"trials-{method}")
            if stopped.any():
                ax.scatter(mine.loc[stopped, xkey], mine.loc[stopped, TEST_METRIC], s=70, facecolors="none",
                           edgecolors="black", linewidths=0.8, zorder=4,
                           label="stopped early by ASHA" if method == methods[0] else None).set_gid(f"stopped-{method}")
        if len(data) >= 2:
            x, y = data[xkey].to_numpy(float), data[TEST_METRIC].to_numpy(float)
            front = pareto_mask(x, y, x_higher)
            order = np.argsort(x[front])
            k = int(front.sum())
            (line,) = ax.plot(x[front][order], y[front][order], "--o", color="black", lw=1, ms=11, mfc="none",
                              zorder=2, label=f"Pareto front ({k} trial{'s' if k != 1 else ''}, ringed)")
            line.set_gid("pareto")
        conf_x, conf_y = _confirmed(study, xkey), _confirmed(study, TEST_METRIC)
        for (method, rank), sy in conf_y.items():
            sx = conf_x.get((method, rank))
            if sx is None:
                continue
            err = ax.errorbar(sx["mean"], sy["mean"], xerr=[[sx["mean"] - sx["ci_low"]], [sx["ci_high"] - sx["mean"]]],
                              yerr=[[sy["mean"] - sy["ci_low"]], [sy["ci_high"] - sy["mean"]]], fmt="D", ms=8,
                              color=method_color(method, methods), mec="black", capsize=4, zorder=5,
                              label=f"{method} #{rank} confirmed: mean, 95% CI (n={sy.get('n', '?')})")
            err[0].set_gid(f"confirmed-{method}-{rank}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABELS[TEST_METRIC])
        ax.grid(alpha=0.3)
        better = "← better" if not x_higher else "better →"
        ax.set_title(f"accuracy vs {'balance gap' if xkey == 'balance/gap' else 'weak-modality probe'} ({better})",
                     fontsize=10)
        if len(methods) <= MANY_METHODS:
            ax.legend(fontsize=7, loc="best")
    n = len(trials)
    fig.suptitle(f"Study {study.name!r}: balance-performance trade-off ({n} finished search trials)", fontsize=12)
    if len(methods) > MANY_METHODS:
        _key_below(fig, methods, ncol=len(panels) * 3)
    else:
        fig.tight_layout()
    return fig


def _key_below(fig: Figure, methods: list[str], ncol: int) -> None:
    """One key under all panels for a study of many methods: a colour per method, then what each mark means (the
    per-panel legends, an entry per method and mark, would cover the points)."""
    from matplotlib.lines import Line2D

    def mark(marker: str, label: str, **kw: Any) -> Line2D:
        return Line2D([], [], marker=marker, ls=kw.pop("ls", ""), label=label, **kw)

    handles = [mark("o", m, color=method_color(m, methods), mec="black", mew=0.4, ms=7) for m in methods]
    handles += [mark("o", "search trial", color="white", mec="black", mew=0.4, ms=7),
                mark("o", "stopped early by ASHA", mfc="none", mec="black", mew=0.8, ms=9),
                mark("o", "Pareto front (ringed)", ls="--", color="black", mfc="none", ms=9, lw=1),
                mark("D", "confirmed: mean, 95% CI over fresh seeds", color="white", mec="black", ms=7)]
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)


# ---------------------------------------------------------------------------------------------------------
# DRL dynamics


def reinit_epochs(history: pd.DataFrame) -> list[int]:
    """Epochs on which a re-initialisation was applied: where the ``diag/reinits`` counter went up."""
    if "diag/reinits" not in history:
        return []
    counts = history[["epoch", "diag/reinits"]].dropna().sort_values("epoch")
    out, last = [], 0.0
    for epoch, count in counts.itertuples(index=False):
        if count > last:
            out.append(int(epoch))
            last = count
    return out


def pick_dynamics_trials(study: Study, trial_id: str | None = None) -> tuple[pd.Series | None, pd.Series | None]:
    """The DRL trial to show (``trial_id`` or the best DRL trial by validation that re-initialised) and the best
    joint trial with the same seed (any joint trial if none shares it)."""
    trials = study.finished()
    confirmed = trials[trials["stage"] == "confirm"]
    if {"drl", "joint"} <= set(confirmed["method"]):
        trials = confirmed  # the confirmation runs every method on the same fresh seeds: the cleanest pairing
    if trial_id is not None:
        found = study.trials[study.trials["trial_id"] == trial_id]
        if found.empty:
            raise ValueError(f"trial {trial_id!r} is not in study {study.name!r}")
        drl = found.iloc[0]
    else:
        cands = trials[trials["method"] == "drl"]
        with_reinit = cands[cands.get("diag/reinits", pd.Series(0, index=cands.index)).fillna(0) > 0]
        cands = with_reinit if len(with_reinit) else cands
        drl = cands.sort_values(SELECT_METRIC, ascending=False).iloc[0] if len(cands) else None
    joint = trials[trials["method"] == "joint"]
    if drl is not None and len(joint):
        same = joint[joint["seed"] == drl["seed"]]
        joint = same if len(same) else joint
    joint_row = joint.sort_values(SELECT_METRIC, ascending=False).iloc[0] if len(joint) else None
    return drl, joint_row


def dynamics(study: Study, trial_id: str | None = None) -> Figure:
    """Rows: modalities; columns: the DRL trial and the same-seed joint trial."""
    drl, joint = pick_dynamics_trials(study, trial_id)
    shown = [t for t in (drl, joint) if t is not None]
    if not shown:
        raise ValueError(f"study {study.name!r} has no finished DRL or joint trial to draw")
    mods = study.modalities
    fig, axes = plt.subplots(len(mods), len(shown), figsize=(6 * len(shown), 3.2 * len(mods)), squeeze=False,
                             sharey=True)
    for col, trial in enumerate(shown):
        hist = study.epochs[(study.epochs["trial_id"] == trial["trial_id"])
                            & (study.epochs["stage"] == trial["stage"])].sort_values("epoch")
        reinits = reinit_epochs(hist)
        for row, m in enumerate(mods):
            ax = axes[row][col]
            ax.plot(hist["epoch"], hist[f"val/acc_{m}"], "-o", ms=3, color="#1f77b4", label=f"{m} probe accuracy (val)",
                    gid=f"probe-{m}")
            ax.plot(hist["epoch"], hist["val/acc"], ":", color="black", lw=1, label="multimodal val accuracy")
            for kind, style in (("train", "s-"), ("val", "^-")):
                key = f"diag/purity_{kind}_{m}"
                if key in hist and hist[key].notna().any():
                    pts = hist[["epoch", key]].dropna()
                    ax.plot(pts["epoch"], pts[key], style, ms=5, lw=1,
                            color="#2ca02c" if kind == "train" else "#ff7f0e",
                            label=f"{m} k-means purity ({kind})", gid=f"purity-{kind}-{m}")
            akey = f"diag/alpha_{m}"
            for i, epoch in enumerate(reinits):
                ax.axvline(epoch, color="#d62728", alpha=0.5, lw=1.2, ls="--",
                           label="re-init (end of epoch)" if i == 0 else None, gid=f"reinit-{epoch}")
            if akey in hist and reinits:
                pts = hist[hist["epoch"].isin(reinits)][["epoch", akey, *[c for c in hist.columns
                                                                         if c.startswith("diag/alpha_") and c.endswith(
                                                                             f"_{m}") and c != akey]]].dropna(
                    subset=[akey])
                yerr = _alpha_spread(pts, m)
                ax.errorbar(pts["epoch"], pts[akey], yerr=yerr, fmt="X", ms=8, color="#d62728", capsize=3,
                            label="α applied" + (" (±spread)" if yerr is not None else ""), gid=f"alpha-{m}")
                for e, a in zip(pts["epoch"], pts[akey], strict=True):
                    ax.annotate(f"α={a:.2f}", (e, a), textcoords="offset points", xytext=(4, 6), fontsize=8,
                                color="#d62728")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch")
            if col == 0:
                ax.set_ylabel(f"{m}: accuracy / purity / α")
            cfg = _drl_setting(trial)
            ax.set_title(f"{trial['method']} trial {trial['trial_id']} (seed {trial['seed']}) {cfg} — {m}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles: dict[str, Any] = {}
    for ax in axes[:, 0]:  # one legend for the figure, below it, so no curve or α label is hidden
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label.replace(f"{mods[0]} ", "").replace(f"{mods[-1]} ", ""), h)
    fig.suptitle(f"Study {study.name!r}: DRL dynamics per modality vs joint training", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    return fig


def _drl_setting(trial: pd.Series) -> str:
    """``λ=4.434, diagnose every 2`` for a DRL trial's title (only the keys the trial has; 4 significant digits)."""
    if trial["method"] != "drl":
        return ""
    parts = []
    if pd.notna(trial.get("drl.lam")):
        parts.append(f"λ={sig4(float(trial['drl.lam']))}")
    if pd.notna(trial.get("drl.diagnosis_interval")):
        parts.append(f"diagnose every {int(trial['drl.diagnosis_interval'])}")
    return ", ".join(parts)


def _alpha_spread(pts: pd.DataFrame, m: str) -> Any:
    """Error bars around α from ``diag/alpha_min_<m>``/``..._max_<m>`` (preferred) or ``diag/alpha_std_<m>``."""
    a = pts[f"diag/alpha_{m}"].to_numpy(float)
    lo, hi, sd = f"diag/alpha_min_{m}", f"diag/alpha_max_{m}", f"diag/alpha_std_{m}"
    if lo in pts and hi in pts and pts[[lo, hi]].notna().all().all():
        return np.vstack([a - pts[lo].to_numpy(float), pts[hi].to_numpy(float) - a]).clip(min=0)
    if sd in pts and pts[sd].notna().all():
        return pts[sd].to_numpy(float)
    return None


# ---------------------------------------------------------------------------------------------------------
# what matters


def rebuild_optuna(study: Study, method: str, target: str = SELECT_METRIC) -> Any:
    """An in-memory Optuna study holding ``method``'s finished search trials with that method's own keys."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = [p for p in study.plan.get("search", []) if p["key"] != "method" and p.get("method") in (None, method)]
    dists = {p["key"]: distribution(p) for p in params}
    opt = optuna.create_study(direction="maximize", study_name=f"{study.name}-{method}")
    trials = study.finished()
    trials = trials[(trials["method"] == method) & (trials["stage"] == "search")]
    for _, row in trials.iterrows():
        values = {}
        for key, dist in dists.items():
            value = row.get(key)
            if isinstance(value, float) and math.isnan(value):
                value = None
            if isinstance(dist, optuna.distributions.IntDistribution) and value is not None:
                value = int(value)
            values[key] = value
        try:
            opt.add_trial(optuna.trial.create_trial(params=values, distributions=dists, value=float(row[target])))
        except ValueError:
            continue  # a value outside the planned range (edited plan): that trial cannot be placed
    return opt


def importances(study: Study, target: str = SELECT_METRIC) -> dict[str, dict[str, dict[str, float]]]:
    """method -> evaluator name -> key -> importance; a method with < 3 trials or < 1 varying key is left out."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in study.methods:
        opt = rebuild_optuna(study, method, target)
        done = [t for t in opt.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) < 3 or not done[0].params:
            continue
        out[method] = {}
        for label, evaluator in (("fANOVA", FanovaImportanceEvaluator(seed=0)),
                                 ("mean decrease impurity", MeanDecreaseImpurityImportanceEvaluator(seed=0))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out[method][label] = dict(optuna.importance.get_param_importances(opt, evaluator=evaluator))
                except (RuntimeError, ValueError):
                    continue
    return out


def importance(study: Study, target: str = SELECT_METRIC) -> Figure:
    """Horizontal bars: each method's searched keys by importance for the study objective, two evaluators."""
    imp = importances(study, target)
    methods = list(imp) or ["(none)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 0.6 + 0.55 * max(
        [len(study.searched_keys(m)) for m in methods] + [3])), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        if method not in imp:
            ax.text(0.5, 0.5, "fewer than 3 finished trials per method:\nno importance estimate", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        keys = study.searched_keys(method)
        height = 0.38
        for j, (label, values) in enumerate(imp[method].items()):
            ys = np.arange(len(keys)) + (j - 0.5) * height
            ax.barh(ys, [values.get(k, 0.0) for k in keys], height=height, label=label,
                    color=["#4c72b0", "#dd8452"][j], gid=f"importance-{method}-{label}")
        ax.set_yticks(np.arange(len(keys)), keys)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"importance for {target} (sums to 1)")
        n = len(rebuild_optuna(study, method, target).trials)
        ax.set_title(f"{method}: {n} search trials", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Study {study.name!r}: which hyperparameters matter (Optuna importance)", fontsize=12)
    fig.tight_layout()
    return fig


def knobs(study: Study) -> Figure:
    """Accuracy against each DRL knob (val best and test at best-val), DRL search trials only."""
    trials = study.finished()
    trials = trials[(trials["method"] == "drl") & (trials["stage"] == "search")]
    keys = [k for k in DRL_KNOBS if k in trials]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.6 * max(1, len(keys)), 4), squeeze=False, sharey=True)
    if not keys or trials.empty:
        axes[0][0].text(0.5, 0.5, "no finished DRL search trials", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    for ax, key in zip(axes[0], keys, strict=False):
        x = trials[key]
        categorical = key == "drl.n_clusters" or x.dtype == object
        if categorical:
            cats = sorted({("= n classes" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v)))
                           for v in x})
            pos = {c: i for i, c in enumerate(cats)}
            xv = np.array([pos["= n classes" if v is None or (isinstance(v, float) and math.isnan(v))
                               else str(int(v))] for v in x], dtype=float)
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            xv = x.to_numpy(float)
            if key == "drl.diagnosis_interval":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        jitter = 0.06 * (np.arange(len(xv)) % 3 - 1) if categorical or key == "drl.diagnosis_interval" else 0
        ax.scatter(xv + jitter, trials[SELECT_METRIC], marker="o", color="#d62728", label=LABELS[SELECT_METRIC],
                   gid=f"knob-{key}-val")
        ax.scatter(xv + jitter, trials[TEST_METRIC], marker="^", facecolors="none", edgecolors="#d62728",
                   label=LABELS[TEST_METRIC], gid=f"knob-{key}-test")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    joint = study.finished()
    joint = joint[(joint["method"] == "joint") & (joint["stage"] == "search")]
    if len(joint):
        best = joint[TEST_METRIC].max()
        for ax in axes[0][: len(keys)]:
            ax.axhline(best, color=METHOD_COLORS["joint"], ls="--", lw=1, label="best joint trial, test at best-val")
    axes[0][0].set_ylabel("accuracy")
    if keys:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Study {study.name!r}: DRL accuracy against its knobs ({len(trials)} DRL search trials)",
                 fontsize=12)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# method comparison


def comparison(study: Study, metric: str = TEST_METRIC) -> Figure:
    """Left: each confirmed configuration's mean and 95% interval (per-seed values as dots). Right: the paired
    difference against the reference (best joint) configuration, with its 95% interval."""
    answer = study.answer
    if not answer or not answer.get("configs"):
        raise ValueError(f"study {study.name!r} has no confirmation answer (answer.json) yet")
    configs = [c for c in answer["configs"] if metric in c.get("stats", {})]
    paired = [p for p in answer.get("paired", []) if p.get("metric") == metric]
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.6 + 0.8 * max(len(configs), 2)), squeeze=False)
    ax = axes[0][0]
    methods = sorted({c["method"] for c in configs})
    labels = []
    for i, cfg in enumerate(configs):
        s = cfg["stats"][metric]
        color = method_color(cfg["method"], methods)
        ax.errorbar(s["mean"], i, xerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]], fmt="o", ms=8,
                    color=color, capsize=5, gid=f"ci-{cfg['method']}-{cfg.get('rank', 1)}")
        vals = s.get("values", [])
        ax.scatter(vals, [i + 0.2] * len(vals), s=80, color=color, alpha=0.6, marker="|")
        ax.annotate(f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]", (s["mean"], i),
                    textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        labels.append(f"{cfg['method']} #{cfg.get('rank', 1)} (n={s.get('n', len(vals))})")
    ax.set_yticks(range(len(configs)), labels)
    ax.set_ylim(len(configs) - 0.5, -0.8)  # top to bottom, room above the first row for its label
    ax.set_xlabel(f"{metric}: mean over fresh seeds, 95% t-interval (ticks: seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("confirmed configurations", fontsize=10)
    ax = axes[0][1]
    ref = answer.get("reference") or {"method": "joint", "rank": 1}
    if paired:
        for i, p in enumerate(paired):
            color = method_color(p["method"], methods)
            ax.errorbar(p["mean"], i, xerr=[[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]], fmt="s", ms=8,
                        color=color, mfc=color if p.get("significant") else "white", capsize=5,
                        gid=f"paired-{p['method']}-{p.get('rank', 1)}")
            ax.annotate(f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}], "
                        + ("significant at 5%" if p.get("significant") else "not significant") + f", n={p.get('n')}",
                        (p["mean"], i), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        ax.set_yticks(range(len(paired)), [f"{p['method']} #{p.get('rank', 1)}" for p in paired])
        ax.set_ylim(len(paired) - 0.5, -0.8)
        ax.axvline(0, color="black", lw=1)
        ax.set_xlabel(f"paired difference in {metric} vs {ref['method']} #{ref.get('rank', 1)} (same seeds), 95% CI")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title("difference against joint training (filled = significant at 5%, Holm-adjusted)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no paired differences in answer.json", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle(f"Study {study.name!r}: method comparison on fresh seeds {answer.get('seeds', '')}", fontsize=12)
    fig.tight_layout()
    return fig


def all_figures(study: Study, out_dir: Path | str) -> dict[str, list[Path]]:
    """Every figure that applies to this study, saved; name -> [png, svg]. A figure that cannot be drawn (no
    DRL trial, no answer yet) is skipped, not faked."""
    out: dict[str, list[Path]] = {}
    makers = {"tradeoff": tradeoff, "dynamics": dynamics, "importance": importance, "knobs": knobs,
              "budget": budget_figure, "pareto": pareto_figure, "comparison": comparison}
    for name, make in makers.items():
        try:
            fig = make(study)
        except ValueError:
            continue
        out[name] = save(fig, out_dir, name)
        plt.close(fig)
    return out
