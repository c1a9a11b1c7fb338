"""What the GPU measurements mean for a study (``python -m drl_tune.bench gpu``, step ``projection``): ASHA's
expected epochs per trial, the ``gpus_per_trial`` to use, the GPU-hours of a ``cremad`` study against the
official script's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drl_tune.bench.gpu_steps import MEMORY_MARGIN, Run
from drl_tune.data.cremad import OFFICIAL as CREMAD  # the prepared CREMA-D splits' sizes

# -- what the measurements mean ---------------------------------------------------------------------------------


def asha_rungs(max_t: int, grace: int, rf: float) -> list[int]:
    """Ray's ASHA milestones (one bracket): grace·rf^k for k = 0 … int(log(max_t/grace)/log(rf))."""
    count = int(math.log(max_t / grace) / math.log(rf) + 1)
    return [int(grace * rf**k) for k in range(count)]


def asha_expected_epochs(n: int, max_t: int, grace: int, rf: float) -> float:
    """Successive halving's epochs: every trial reaches the first rung r_0; a fraction 1/rf^k goes on past
    rung k to the next rung (or to max_t):  E = n·[r_0 + Σ_k (r_{k+1} − r_k)/rf^(k+1)], r_K = max_t."""
    rungs = [*asha_rungs(max_t, grace, rf), max_t]
    return n * (rungs[0] + sum((rungs[k + 1] - rungs[k]) / rf ** (k + 1) for k in range(len(rungs) - 1)))


def simulate_asha(n: int, max_t: int, grace: int, rf: float, concurrency: int, repeats: int = 200,
                  seed: int = 0) -> dict[str, float]:
    """Epochs trained under Ray's *asynchronous* rule (a trial reaching a rung stops if its score is below the
    (1 − 1/rf) quantile of the scores recorded there so far; the first one always goes on), ``concurrency``
    trials at a time at equal speed, each trial's score a fixed random rank. Asynchrony promotes more trials
    than the formula, early ones above all."""
    rungs = set(asha_rungs(max_t, grace, rf))
    rng = np.random.default_rng(seed)
    totals = []
    for _ in range(repeats):
        quality = rng.random(n)
        recorded: dict[int, list[float]] = {r: [] for r in rungs}
        running: dict[int, int] = {}
        started = total = 0
        while started < n or running:
            while len(running) < concurrency and started < n:
                running[started] = 0
                started += 1
            for trial in list(running):
                running[trial] += 1
                total += 1
                epoch = running[trial]
                if epoch in rungs:
                    scores = recorded[epoch]
                    cutoff = np.percentile(scores, (1 - 1 / rf) * 100) if scores else None
                    scores.append(quality[trial])
                    if cutoff is not None and quality[trial] < cutoff:
                        del running[trial]
                        continue
                if epoch >= max_t:
                    del running[trial]
        totals.append(total)
    return {"mean": float(np.mean(totals)), "min": float(np.min(totals)), "max": float(np.max(totals)),
            "repeats": repeats, "concurrency": concurrency}


def recommend_gpus_per_trial(total_mb: float | None, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Trials per GPU from the measurements: the *smallest* measured N that fits in memory (footprint × margin)
    and reaches ≥ 95% of the best aggregate throughput measured; gpus_per_trial = 1/N. Smallest, because at
    equal throughput fewer trials at a time each finish sooner, so ASHA decides on more results and trains
    fewer epochs (its asynchronous rule promotes more of the early trials the more run at once)."""
    if not total_mb:
        return {"gpus_per_trial": None, "reason": "no GPU memory figures (not a CUDA device)"}
    footprints = [r["footprint"]["per_process_mb"] for r in rows.values() if r["footprint"]["per_process_mb"]]
    if not footprints:
        return {"gpus_per_trial": None, "reason": "no per-process footprint measured"}
    footprint = max(footprints)
    fit = int(total_mb // (footprint * MEMORY_MARGIN))
    ok = {n: r for n, r in rows.items() if n <= fit}
    if not ok:
        return {"gpus_per_trial": None, "footprint_mb": footprint, "fit_by_memory": fit,
                "reason": "not even one trial fits with the margin"}
    best = max(r["aggregate_samples_per_s"] for r in ok.values())
    k = min(n for n, r in ok.items() if r["aggregate_samples_per_s"] >= 0.95 * best)
    return {"gpus_per_trial": round(1 / k, 4), "trials_per_gpu": k, "footprint_mb": footprint,
            "fraction_needed": footprint * MEMORY_MARGIN / total_mb, "fit_by_memory": fit, "margin": MEMORY_MARGIN,
            "most_measured_that_fit": max(ok),
            "rule": f"smallest measured N with footprint × {MEMORY_MARGIN} × N ≤ GPU memory and aggregate samples/s "
                    "≥ 95% of the best measured; gpus_per_trial = 1/N"}


def step_projection(run: Run) -> dict[str, Any]:
    """GPU-hours of a 40-trial ASHA study of the cremad space vs the official script's 40 full trials."""
    from drl_tune.study.spaces import load_space

    steps = run.result["steps"]
    space = load_space("cremad")
    sc, study = space.scheduler, space.study
    config = space.config()
    max_t = sc.max_t or config.epochs
    n = study.num_samples
    interval, reinits = config.params.diagnosis_interval, config.params.max_reinits
    diagnoses = len([e for e in range(interval, max_t, interval)][:reinits])  # after epochs k, 2k, … (epoch > 0)
    p_drl = 0.5  # the space searches method ∈ {joint, drl}; TPE's split is not known in advance
    formula = asha_expected_epochs(n, max_t, sc.grace_period, sc.reduction_factor)
    simulated = simulate_asha(n, max_t, sc.grace_period, sc.reduction_factor, study.max_concurrent)

    train, ref = steps[run.result["baseline"]], steps["reference"]
    rows = {int(k.split("_")[1]): v for k, v in steps.items() if k.startswith("concurrency_") and v["status"] == "done"}
    rows[1] = {"aggregate_samples_per_s": train["samples_per_s"], "footprint": train["footprint"]}
    total_mb = steps.get("machine", {}).get("total_mb")
    rec = recommend_gpus_per_trial(total_mb, rows)
    k = rec.get("trials_per_gpu") or 1
    share = train["samples_per_s"] / rows[k]["aggregate_samples_per_s"]  # GPU-seconds per trial-second at N = k
    ev = train["eval"]
    diag_per_epoch = p_drl * diagnoses / max_t
    ours_epoch_gpu_s = (train["epoch_s"] + diag_per_epoch * ev["diagnosis_s"]["sklearn"]) * share
    ref_epoch_s = ref["epoch_train_s"] + ref["eval_per_clip_s"] * CREMAD["test"]
    ref_diag_s = ref["eval_per_clip_s"] * CREMAD["train"] + ev["kmeans_sklearn_s"]
    official_epoch_gpu_s = ref_epoch_s + diag_per_epoch * ref_diag_s
    hours = {
        "ours_asha_formula": formula * ours_epoch_gpu_s / 3600,
        "ours_asha_simulated": simulated["mean"] * ours_epoch_gpu_s / 3600,
        "ours_no_early_stopping": n * max_t * ours_epoch_gpu_s / 3600,
        "official": n * max_t * official_epoch_gpu_s / 3600,
    }
    record = {
        "trials": n, "max_t": max_t, "grace_period": sc.grace_period, "reduction_factor": sc.reduction_factor,
        "rungs": asha_rungs(max_t, sc.grace_period, sc.reduction_factor), "asha_epochs_formula": formula,
        "asha_formula": "E = n·[r_0 + Σ_k (r_{k+1} − r_k)/rf^(k+1)], rungs r_k = grace·rf^k < max_t, r_K = max_t",
        "asha_epochs_simulated": simulated, "trials_per_gpu": k, "gpu_share_per_trial": share,
        "recommendation": rec, "ours_epoch_gpu_s": ours_epoch_gpu_s, "official_epoch_gpu_s": official_epoch_gpu_s,
        "diagnoses_per_drl_trial": diagnoses, "p_drl": p_drl, "gpu_hours": hours,
        "ratio_official_over_ours": hours["official"] / hours["ours_asha_simulated"],
        "assumptions": [
            f"CREMA-D sizes {CREMAD}; every figure per epoch is extrapolated from the timed batches of the steps above",
            f"ours: an epoch = the engine's training pass + its evaluation (val + test forward, the linear probe on "
            f"{min(ev['probe_samples'], CREMAD['train'])} training clips) at the train step's rate; with {k} "
            f"trials per GPU each trial-second costs {share:.3f} GPU-seconds (aggregate throughput at N={k} "
            "measured; the evaluation assumed to share the GPU like the training)",
            f"DRL's diagnosis (train-split features + sklearn k-means, {ev['kmeans_restarts']} stability restarts) "
            f"runs {diagnoses}× per {max_t}-epoch DRL trial (interval {interval}, max_reinits {reinits}); charged per "
            f"epoch to a fraction p_drl = {p_drl} of the trials (the space searches method joint|drl), for ours and "
            "for the official script alike",
            f"ASHA: {n} trials, max_t {max_t}, grace {sc.grace_period}, rf {sc.reduction_factor} (search_spaces/"
            f"cremad.yaml); the formula is synchronous successive halving; the simulation applies Ray's asynchronous "
            f"rule with {study.max_concurrent} trials at a time and fixed random trial ranks (no learning "
            "searcher), so it counts more epochs than the formula; the hours use the simulation",
            f"official: {n} trials × {max_t} epochs, one trial at a time on the GPU, no early stopping; an epoch = the "
            f"fp32 per-sample-pipeline training pass + its test evaluation ({CREMAD['test']} clips, the official "
            "script evaluates on test every epoch); its input pipeline reads the prepared arrays (no jpg decoding), "
            "so it is, if anything, faster than the real script; it uses the same augmentation setting as the engine "
            "(the cremad space's data.augment) and the same model",
            "not counted for either: process start-up, checkpoints, MLflow logging, the confirmation stage",
        ],
    }
    run.log(f"[projection] ASHA over {n} trials (max_t {max_t}, grace {sc.grace_period}, rf {sc.reduction_factor}, "
            f"rungs {record['rungs']}): {formula:.0f} epochs by the formula, {simulated['mean']:.0f} simulated "
            f"(Ray's asynchronous rule, {study.max_concurrent} at a time) vs {n * max_t} without early stopping")
    run.log(f"[projection] per trial-epoch: ours {ours_epoch_gpu_s:.2f} GPU-s ({k} trials per GPU), official "
            f"{official_epoch_gpu_s:.2f} GPU-s -> study GPU-hours: ours {hours['ours_asha_simulated']:.2f} "
            f"(formula {hours['ours_asha_formula']:.2f}; no early stopping {hours['ours_no_early_stopping']:.2f}) vs "
            f"official {hours['official']:.2f}: {record['ratio_official_over_ours']:.1f}x")
    if rec.get("gpus_per_trial"):
        run.log(f"[projection] recommended gpus_per_trial: {rec['gpus_per_trial']} ({k} trials per GPU; per-trial "
                f"footprint {rec['footprint_mb']:.0f} MB × {MEMORY_MARGIN} = {rec['fraction_needed']:.3f} of the GPU; "
                f"{rec['fit_by_memory']} would fit by memory)")
    else:
        run.log(f"[projection] no gpus_per_trial recommendation: {rec['reason']}")
    return record
