"""How long DRL's diagnosis takes: sklearn vs torch k-means on N × 512 features, and the diagnosis as a
fraction of one CREMA-D-sized epoch.

    python -m drl_tune.bench.diagnosis_speed                      # N = 1k, 5k, 20k (CPU); up to 200k on a GPU
    python -m drl_tune.bench.diagnosis_speed --large --json d.json  # also 50k, 100k, 200k on a CPU
    python -m drl_tune.bench.diagnosis_speed --restart-cost       # what drl.stability_restarts costs on the demo

Per size N: both modalities are diagnosed (k-means on N training and N/8 validation features, CREMA-D's
ratio 744/5954) with each backend, side by side on the same constructed features — one modality with
well-separated classes, one with overlapping classes — and the purities of the two backends are compared.

The epoch estimate times a few training steps (forward, backward, SGD step) and a few eval forward passes
of the project's classifier at CREMA-D input size (ResNet18 width 64, audio 300 × 128, 2 frames 224²,
random inputs: the compute does not depend on the values) and scales them to 5 954 clips. The diagnosis
there = the eval forward pass over the training split (the validation features are already computed by the
epoch's evaluation) + k-means of both splits and modalities with the default ``drl.stability_restarts``.
The epoch counts the training pass only (no evaluation, no data loading), so the fraction is an upper
estimate. Absolute seconds mean little on a shared CPU; the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drl_tune.bench.official_loops import synchronize
from drl_tune.ground.io import atomic_write_text
from drl_tune.methods.drl import STABILITY_RESTARTS
from drl_tune.methods.drl_diagnosis import BACKENDS, diagnose
from drl_tune.models import MultimodalClassifier

CPU_SIZES = (1_000, 5_000, 20_000)
LARGE_SIZES = (1_000, 5_000, 20_000, 50_000, 100_000, 200_000)
CREMAD_TRAIN, CREMAD_VAL, CREMAD_CLASSES = 5_954, 744, 6


def _features(n: int, dim: int, n_classes: int, separation: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (post-ReLU-pool-like) Gaussian class clusters; ``separation`` scales the class means."""
    means = np.abs(rng.normal(0, 1, (n_classes, dim))).astype(np.float32) * separation
    y = rng.integers(0, n_classes, n)
    x = means[y] + rng.normal(0, 1, (n, dim)).astype(np.float32)
    return np.maximum(x, 0, out=x), y


def _timed(fn: Callable[..., Any]) -> tuple[float, Any]:  # fn(); '...': lambdas binding a default (mypy#15459)
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_diagnosis(n: int, *, dim: int = 512, n_classes: int = CREMAD_CLASSES, modalities: int = 2,
                   backends: Sequence[str] = BACKENDS, device: torch.device | None = None, restarts: int = 0,
                   seed: int = 0) -> dict[str, Any]:
    """Seconds to diagnose ``modalities`` modalities of N training (N/8 validation) × ``dim`` features."""
    rng = np.random.default_rng(seed)
    n_val = max(n // 8, 2 * n_classes)
    # modality 0 well separated, the others overlapping: purity agreement in both regimes
    data = []
    for m in range(modalities):
        separation = 2.0 if m == 0 else 0.25
        train, val = _features(n, dim, n_classes, separation, rng), _features(n_val, dim, n_classes, separation, rng)
        data.append((*train, *val))
    row: dict[str, Any] = {"n": n, "n_val": n_val}
    for backend in backends:
        def run(backend: str = backend) -> list[tuple[float, float]]:
            out = []
            for x_train, y_train, x_val, y_val in data:
                d = diagnose(x_train, y_train, x_val, y_val, n_clusters=n_classes, reinit_lambda=3.0, seed=0,
                             restarts=restarts, backend=backend, device=device)
                out.append((d.purity_train, d.purity_val))
            return out
        seconds, purities = _timed(run)
        row[f"{backend}_s"] = seconds
        row[f"{backend}_purity"] = purities
    if "sklearn" in backends and "torch" in backends:
        row["ratio"] = row["sklearn_s"] / row["torch_s"]  # > 1: torch is faster
        row["purity_max_abs_diff"] = float(np.max(np.abs(np.subtract(row["sklearn_purity"], row["torch_purity"]))))
    return row


def estimate_epoch(device: torch.device, *, width: int = 64, image_size: int = 224, audio_frames: int = 300,
                   n_mels: int = 128, frames: int = 2, batch_size: int | None = None, batches: int = 2,
                   n_train: int = CREMAD_TRAIN) -> dict[str, float]:
    """Seconds per training epoch and per eval forward pass over the training split, at CREMA-D size,
    extrapolated from ``batches`` timed batches (after one warm-up batch)."""
    batch_size = batch_size or (64 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    model = MultimodalClassifier({"audio": "spectrogram", "visual": "frames"}, CREMAD_CLASSES, width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, weight_decay=1e-4)
    inputs = {"audio": torch.randn(batch_size, audio_frames, n_mels, device=device),
              "visual": torch.randn(batch_size, frames, 3, image_size, image_size, device=device)}
    labels = torch.randint(0, CREMAD_CLASSES, (batch_size,), device=device)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs).logits, labels).backward()
        optimizer.step()
        synchronize(device)

    @torch.no_grad()
    def eval_step() -> None:
        model.eval()
        out = model(inputs)
        for f in out.features.values():
            f.float().cpu()
        synchronize(device)

    per_batch = {}
    for name, step in (("train", train_step), ("eval", eval_step)):
        step()  # warm-up
        per_batch[name] = _timed(lambda step=step: [step() for _ in range(batches)])[0] / batches
    scale = n_train / batch_size
    return {"epoch_s": per_batch["train"] * scale, "train_features_s": per_batch["eval"] * scale,
            "batch_size": float(batch_size), "batches_timed": float(batches), "n_train": float(n_train),
            "feature_dim": float(8 * width)}


def run_diagnosis_bench(sizes: Sequence[int] | None = None, *, dim: int = 512, backends: Sequence[str] = BACKENDS,
                        device: str | torch.device | None = None, epoch: bool = True,
                        restarts: int = STABILITY_RESTARTS, epoch_kwargs: dict[str, Any] | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The diagnosis benchmark; returns ``{"diagnosis": {...}}`` with ``fraction_of_epoch`` (sklearn, the
    default backend, with ``restarts`` stability restarts) when ``epoch`` is on, ``sizes`` rows and the
    machine. ``device`` None: CUDA when available."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if sizes is None:
        sizes = LARGE_SIZES if dev.type == "cuda" else CPU_SIZES
    if "torch" in backends:  # first-call costs (CUDA context, kernels) are not the diagnosis' own
        diagnose(np.random.rand(64, 8), np.arange(64) % 2, np.random.rand(64, 8), np.arange(64) % 2,
                 n_clusters=2, reinit_lambda=1.0, backend="torch", device=dev)
    result: dict[str, Any] = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev)
                              if dev.type == "cuda" else "cpu", "torch_threads": torch.get_num_threads(),
                              "dim": dim, "rows": []}
    for n in sizes:
        row = time_diagnosis(n, dim=dim, backends=backends, device=dev)
        result["rows"].append(row)
        log("N={n:>7} ({n_val} val) ".format(**row) + "  ".join(f"{b} {row[f'{b}_s']:8.2f} s" for b in backends)
            + (f"  sklearn/torch {row['ratio']:5.2f}x  purity |diff| <= {row['purity_max_abs_diff']:.3f}"
               if "ratio" in row else ""))
    if epoch:
        kw = dict(epoch_kwargs or {})
        n_train = int(kw.get("n_train", CREMAD_TRAIN))
        est = estimate_epoch(dev, **kw)
        km = time_diagnosis(n_train, dim=int(est["feature_dim"]), backends=backends, device=dev, restarts=restarts)
        est["restarts"] = float(restarts)
        for b in backends:
            est[f"kmeans_{b}_s"] = km[f"{b}_s"]
            est[f"diagnosis_{b}_s"] = est["train_features_s"] + km[f"{b}_s"]
            est[f"fraction_of_epoch_{b}"] = est[f"diagnosis_{b}_s"] / est["epoch_s"]
        result["epoch"] = est
        result["fraction_of_epoch"] = est[f"fraction_of_epoch_{backends[0]}"]
        log(f"CREMA-D-sized epoch (training pass, {n_train} clips, extrapolated from {int(est['batches_timed'])} "
            f"batches of {int(est['batch_size'])}): {est['epoch_s']:.1f} s; "
            f"train features {est['train_features_s']:.1f} s; "
            + "; ".join(f"k-means {b} (+{restarts} restarts) {est[f'kmeans_{b}_s']:.2f} s -> diagnosis = "
                        f"{est[f'fraction_of_epoch_{b}']:.1%} of the epoch" for b in backends))
    return {"diagnosis": result}


def restart_cost(epochs: int = 10, restarts: Sequence[int] = (1, 3, 5, 10), repeats: int = 5,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``drl.stability_restarts`` costs on the demo: train the demo's DRL setting ``epochs`` epochs (10 =
    its first diagnosis), then time the diagnosis (training-feature extraction + clustering of both modalities;
    the validation features come with the epoch's evaluation) with 0 and with R restarts on the same features;
    medians of ``repeats``."""
    from drl_tune.study.spaces import load_space
    from drl_tune.training.config import parse_assignments
    from drl_tune.training.engine import Engine

    config = load_space("demo").config(parse_assignments(["method=drl", "threads=1"]))
    engine = Engine(config)
    for _ in range(epochs):
        engine.train_epoch()
    engine.evaluate()
    val_feats, val_labels = engine.features("val")
    n_clusters = config.params.n_clusters or engine.n_classes

    def extract() -> None:
        engine._feature_cache.pop("train", None)  # a fresh extraction, as each diagnosis does
        engine.features("train")

    def cluster(r: int) -> None:
        feats, labels = engine.features("train")
        for m in engine.model.modalities:
            diagnose(feats[m], labels, val_feats[m], val_labels, n_clusters=n_clusters,
                     reinit_lambda=config.params.lam, seed=0, restarts=r)

    times: dict[int, list[float]] = {r: [] for r in (0, *restarts)}
    feature_times = []
    for _ in range(repeats):
        feature_times.append(_timed(extract)[0])
        for r in times:
            times[r].append(_timed(lambda r=r: cluster(r))[0])
    feature_s, cluster_s = float(np.median(feature_times)), float(np.median(times[0]))
    diagnosis_s = feature_s + cluster_s
    extra = {r: (float(np.median(times[r])) - cluster_s) / diagnosis_s for r in restarts}
    out: dict[str, Any] = {"features_s": feature_s, "clustering_s": cluster_s, "diagnosis_s": diagnosis_s,
                           "extra_fraction": extra}
    log(f"demo diagnosis {diagnosis_s:.2f} s (training features {feature_s:.2f} s, clustering {cluster_s:.2f} s); "
        + ", ".join(f"R={r}: +{f:.1%}" for r, f in out["extra_fraction"].items()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.bench.diagnosis_speed", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", help="comma-separated N (default: 1k,5k,20k on CPU; up to 200k on a GPU)")
    p.add_argument("--large", action="store_true", help="also 50k, 100k, 200k on a CPU (slow)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="sklearn,torch (default both)")
    p.add_argument("--no-epoch", action="store_true", help="skip the CREMA-D epoch estimate")
    p.add_argument("--epoch-batches", type=int, default=2, help="batches timed for the epoch estimate (2)")
    p.add_argument("--restarts", type=int, default=STABILITY_RESTARTS,
                   help=f"stability restarts counted in the epoch fraction (default {STABILITY_RESTARTS})")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--restart-cost", action="store_true",
                   help="instead: what drl.stability_restarts costs on the demo (trains 10 demo epochs first)")
    args = p.parse_args(argv)
    if args.restart_cost:
        cost = restart_cost()
        if args.json:
            atomic_write_text(args.json, json.dumps({"restart_cost": cost}, indent=2))
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (LARGE_SIZES if args.large else None)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad or not backends:
            raise ValueError(f"--backends: unknown {bad[0] if bad else '(none)'!r}; choose from {', '.join(BACKENDS)}")
        if sizes is not None and min(sizes) < 2 * CREMAD_CLASSES:
            raise ValueError(f"--sizes: every N must be >= {2 * CREMAD_CLASSES}")
        if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is visible; use cpu")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_diagnosis_bench(sizes, backends=backends, device=args.device, epoch=not args.no_epoch,
                                 restarts=args.restarts, epoch_kwargs={"batches": args.epoch_batches})
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
