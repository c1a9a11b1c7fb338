"""Is the modality-imbalance phenomenon present on the demo data, and what does DRL do to it?

    python -m drl_tune.experiments.imbalance --seeds 0 1 2 [--space NAME] [--epochs N] [--out DIR]
                                             [--set KEY=VALUE ...]

Runs, for every seed, through the same engine as the study (the space's fixed values and defaults, plain
SGD; ``--space`` default ``demo``, e.g. ``--space avdigits`` for AV-digits):

* ``joint``  — joint training (concat fusion, cross-entropy on the fused logits);
* ``drl``    — DRL with the demo defaults (diagnose + re-init after 0-based epochs 10 and 20);
* ``audio``  — the audio encoder trained alone (``data.modalities=audio``);
* ``visual`` — the visual encoder trained alone (``data.modalities=visual``).

``seed`` is the training seed (initialisation, shuffling); the data (``data.synthetic.seed``,
``data.avdigits.seed``) stays the same set. Uni-modal accuracy is the engine's linear probe on the frozen
encoder's features (fitted on train, scored on val), the same measure for every run. It prints, as mean ±
sample std over seeds:

1. how fast each modality learns (probe accuracy after epochs 0, 2, 5 and the first epoch reaching 90%
   of that run's final probe accuracy);
2. each modality's probe in joint training vs that modality alone, early (mean of epochs 5–10) and at the
   end (the weak one — visual on the demo data, audio on AV-digits — is the one joint training starves);
3. joint val accuracy vs each modality alone, and the two uni-modal models combined (late fusion,
   oracle): how complementary the modalities are;
4. the diagnosis at DRL's first re-init (train/val k-means purity and α per modality);
5. joint vs DRL: ``val/acc_best``, ``test/acc_at_best_val``, probes at the end and at the best-val epoch;

plus the mean seconds per epoch of each run kind. Every epoch's metrics go to
``OUT/<run>-s<seed>/metrics.jsonl`` (default OUT: runs/imbalance).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drl_tune.data import CacheError, load_dataset
from drl_tune.ground.errors import ConfigError
from drl_tune.study.spaces import load_space
from drl_tune.training.config import parse_assignments
from drl_tune.training.engine import Engine

RUNS: dict[str, dict[str, Any]] = {
    "joint": {"method": "joint"},
    "drl": {"method": "drl"},
    "audio": {"method": "joint", "data.modalities": ["audio"]},
    "visual": {"method": "joint", "data.modalities": ["visual"]},
}
EARLY = (5, 10)  # epochs (0-based, inclusive) over which the "early" weak-modality probe is averaged


def run_one(
    overrides: dict[str, Any], out: Path | None, data_cache: dict[str, Any], space: str = "demo"
) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
    """Train one configuration of ``space`` to the end: every epoch's metrics, and the final model's
    class probabilities on val with the val labels (for the late-fusion check)."""
    config = load_space(space).config(overrides)
    key = repr(dataclasses.replace(config.data, modalities=[]))  # modalities are chosen by Engine
    if key not in data_cache:
        data_cache.clear()
        data_cache[key] = load_dataset(config.data)
    engine = Engine(config, data_cache[key])
    history = []
    while not engine.done:
        history.append(engine.run_epoch())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "w") as log:
            for m in history:
                log.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in m.items()}) + "\n")
    logits, _ = engine._forward("val")
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return history, probabilities, engine.data.splits["val"].labels


def complementarity(audio: tuple[np.ndarray, np.ndarray], visual: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """How far the two modalities' information is complementary, from the two uni-modal models (final
    epoch, val): each alone, their late fusion (mean of class probabilities — no training on val), the
    share of clips only one of them gets right, and the oracle (either right)."""
    (p_audio, labels), (p_visual, _) = audio, visual
    right_a, right_v = p_audio.argmax(1) == labels, p_visual.argmax(1) == labels
    return {
        "audio alone": float(right_a.mean()),
        "visual alone": float(right_v.mean()),
        "late fusion (mean probabilities)": float(((p_audio + p_visual).argmax(1) == labels).mean()),
        "only audio right": float((right_a & ~right_v).mean()),
        "only visual right": float((right_v & ~right_a).mean()),
        "oracle (either right)": float((right_a | right_v).mean()),
    }


def _stat(values: Sequence[float]) -> str:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def _first_reaching(history: list[dict[str, float]], key: str, fraction: float = 0.9) -> float:
    target = fraction * history[-1][key]
    return next(float(m["epoch"]) for m in history if m[key] >= target)


def _early(history: list[dict[str, float]], key: str) -> float:
    values = [m[key] for m in history if EARLY[0] <= m["epoch"] <= EARLY[1]]
    return float(np.mean(values)) if values else float("nan")


def _at_best(history: list[dict[str, float]], key: str) -> float:
    best = int(history[-1]["best_epoch"])
    return next(m[key] for m in history if int(m["epoch"]) == best)


def _first_diagnosis(history: list[dict[str, float]], key: str) -> float:
    return next((m[key] for m in history if key in m), float("nan"))


def summarise(
    results: dict[str, dict[int, list[dict[str, float]]]], fusion: Sequence[dict[str, float]] = ()
) -> str:
    """The report table (mean ± std over seeds); ``fusion``: :func:`complementarity` per seed."""
    lines: list[str] = []

    # fn(history) -> float; typed Callable[..., float] because mypy cannot type a lambda that binds a loop variable
    # as a default argument (python/mypy#15459)
    def row(label: str, run: str, fn: Callable[..., float]) -> None:
        if run in results:
            lines.append(f"  {label:<44s} {_stat([fn(h) for h in results[run].values()])}")

    seeds = sorted({s for r in results.values() for s in r})
    epochs = max(len(h) for r in results.values() for h in r.values())
    lines.append(f"seeds {seeds}, {epochs} epochs; mean ± sample std over seeds")
    lines.append("1. learning speed in joint training (probe accuracy on val)")
    for m in ("audio", "visual"):
        for e in (0, 2, 5):
            row(f"joint probe {m}, after epoch {e}", "joint", lambda h, m=m, e=e: h[min(e, len(h) - 1)][f"val/acc_{m}"])
        row(f"joint probe {m}: first epoch at 90% of final", "joint", lambda h, m=m: _first_reaching(h, f"val/acc_{m}"))
    lines.append("2. each modality in joint training vs trained alone (probe; the weak one is under-trained)")
    for m in ("visual", "audio"):  # visual first: the demo's weak modality (on AV-digits it is audio)
        row(f"joint probe {m}, mean epochs {EARLY[0]}-{EARLY[1]}", "joint", lambda h, m=m: _early(h, f"val/acc_{m}"))
        row(f"{m} alone probe, mean epochs {EARLY[0]}-{EARLY[1]}", m, lambda h, m=m: _early(h, f"val/acc_{m}"))
        row(f"joint probe {m}, last epoch", "joint", lambda h, m=m: h[-1][f"val/acc_{m}"])
        row(f"{m} alone probe, last epoch", m, lambda h, m=m: h[-1][f"val/acc_{m}"])
    lines.append("3. complementarity (val/acc_best of the model's own head)")
    for run in ("joint", "audio", "visual"):
        row(f"{run}: val/acc_best", run, lambda h: h[-1]["val/acc_best"])
        row(f"{run}: test/acc_at_best_val", run, lambda h: h[-1]["test/acc_at_best_val"])
    if fusion:
        lines.append("   the two uni-modal models combined (val accuracy, last epoch)")
        for key in fusion[0]:
            lines.append(f"  {key:<44s} {_stat([f[key] for f in fusion])}")
    lines.append("4. DRL's first diagnosis (after epoch drl.diagnosis_interval: 10 on the demo, 3 on AV-digits)")
    for m in ("audio", "visual"):
        row(f"purity train {m}", "drl", lambda h, m=m: _first_diagnosis(h, f"diag/purity_train_{m}"))
        row(f"purity val {m}", "drl", lambda h, m=m: _first_diagnosis(h, f"diag/purity_val_{m}"))
        row(f"alpha {m}", "drl", lambda h, m=m: _first_diagnosis(h, f"diag/alpha_{m}"))
    lines.append("5. joint vs DRL")
    for run in ("joint", "drl"):
        row(f"{run}: val/acc_best", run, lambda h: h[-1]["val/acc_best"])
        row(f"{run}: test/acc_at_best_val", run, lambda h: h[-1]["test/acc_at_best_val"])
        row(f"{run}: best-val epoch", run, lambda h: h[-1]["best_epoch"])
        for m in ("audio", "visual"):
            row(f"{run}: probe {m}, last epoch", run, lambda h, m=m: h[-1][f"val/acc_{m}"])
            row(f"{run}: probe {m}, at best-val epoch", run, lambda h, m=m: _at_best(h, f"val/acc_{m}"))
    lines.append("time: seconds per epoch (train + eval + probe + method hook)")
    for run in results:
        row(f"{run}: s/epoch", run, lambda h: float(np.mean([m["time/epoch_s"] for m in h])))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.experiments.imbalance", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--space", default="demo", help="search space whose data and fixed values to use (default: demo)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the space's)")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default: all)")
    p.add_argument("--out", type=Path, default=Path("runs/imbalance"), help="where per-run metrics go")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run, e.g. --set data.synthetic.visual_noise=0.2")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        extra = parse_assignments(args.assignments)
        if args.epochs is not None:
            extra["epochs"] = args.epochs
        config = load_space(args.space).config(extra)  # fail before anything runs
        load_dataset(config.data)  # generated or prepared data, or a clear error (e.g. a missing extra)
    except (ConfigError, CacheError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    fusion: list[dict[str, float]] = []
    data_cache: dict[str, Any] = {}
    for seed in args.seeds:
        unimodal: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for run in args.runs:
            start = time.perf_counter()
            overrides = {**RUNS[run], **extra, "seed": seed}
            history, probabilities, labels = run_one(overrides, args.out / f"{run}-s{seed}", data_cache, args.space)
            results.setdefault(run, {})[seed] = history
            unimodal[run] = (probabilities, labels)
            if not args.quiet:
                last = history[-1]
                probes = " ".join(f"{k.removeprefix('val/acc_')} {v:.3f}" for k, v in last.items()
                                  if k in ("val/acc_audio", "val/acc_visual"))
                print(f"{run:>6s} seed {seed}: val/acc_best {last['val/acc_best']:.3f}  probes(last) {probes}  "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
        if "audio" in unimodal and "visual" in unimodal:
            fusion.append(complementarity(unimodal["audio"], unimodal["visual"]))
    print(summarise(results, fusion))
    return 0


if __name__ == "__main__":
    sys.exit(main())
