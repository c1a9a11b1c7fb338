"""``python -m drl_tune.bench gpu``: every GPU figure issue 13 asks for, in one command of about 6-7 minutes.

A session that is lent a GPU gets 15 minutes of device time in all, no network, and a Python without Ray,
MLflow or Optuna. So this command imports none of them, prepares its own data, and runs one prepared sequence
of steps; each prints a line, is stored under ``steps`` in the JSON (written again after every step, so a run
cut short still leaves what it measured), and records its error — or, past ``--budget-s``, why it was
skipped — without stopping the others:

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m drl_tune.bench gpu --json $OUT/gpu.json 2>&1 | tee $OUT/gpu.log

* ``machine``: torch / CUDA / cuDNN versions, the device and its memory, one process' CUDA context.
* ``cache``: the real ``prepare cremad`` on a few generated clips (audio: the 300 × 128 fbank, float16; visual:
  2 frames 224², uint8 — the layout it writes by default), tiled to ``--clips`` training clips (the values do
  not change the compute; generating thousands of jpgs would take minutes).
* ``train``: the engine's ``train_epoch`` (the ``cremad`` space's configuration: batch 64, ResNet18 width 64,
  augmentation on; method ``joint``; ``perf.*`` defaults = the GPU path on) over ``--epochs`` epochs of the
  tiled clips after one warm-up epoch and evaluation, scaled to CREMA-D's 5 954 training clips (extrapolated:
  the JSON says from how many timed batches); then the eval forward pass per clip, the whole evaluation, and
  DRL's diagnosis (train-split features + k-means, both backends); the process' peak GPU memory.
* ``profile``: one training epoch with the host's batch preparation timed apart, then one under ``torch.profiler``
  (top operators by self device / host time, top kernels, the GPU's busy share) — where the time goes.
* ``concurrency_N``: N worker processes on the same GPU at the same time, each building its own engine and
  training — what Ray's fractional GPUs do (each trial is a process). Aggregate samples/s against N = 1,
  per-process peak allocated / reserved memory, the device's used memory (``torch.cuda.mem_get_info`` and
  ``nvidia-smi``) while all N are alive; from these the trials per GPU and the ``gpus_per_trial`` to use.
* ``reference``: the official script's way (fp32, per-sample PIL pipeline, ``drl_tune.bench.official_loops``) on
  the same GPU, one process: training samples/s and the per-clip evaluation.
* ``train_off``: ``train`` with every ``perf.*`` switch off, for the GPU path's speed-up.
* ``projection``: GPU-hours of a 40-trial ASHA study of the ``cremad`` space against the official script's
  (the formula, the inputs and every assumption are in the JSON and the log).
* ``kmeans_sizes``: sklearn vs torch k-means at N = 1k … 200k (``bench diagnosis`` on the GPU) while the
  budget lasts; ``compile``: ``train`` with ``perf.compile=true`` if time remains. ``--steps`` runs only some of
  them (machine and cache always).

The parent process never touches CUDA: every GPU step runs in fresh worker processes (``python -m
drl_tune.bench.gpu_worker SPEC``, drl_tune/bench/gpu_worker.py) that meet at file barriers (warmed up → timed →
memory snapshot), so the timed windows overlap and each process' memory is its own; the steps are
drl_tune/bench/gpu_steps.py, what they mean for a study drl_tune/bench/gpu_projection.py. ``--tiny`` runs every
step at toy sizes on whatever device there is (a CPU here) in about a minute: a smoke test, its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from drl_tune.bench.gpu_projection import step_projection
from drl_tune.bench.gpu_steps import (  # noqa: F401  (Sizes, TINY, … are this command's public names)
    NEEDS_RAY,
    PERF_OFF,
    STEPS,
    TINY,
    Log,
    Run,
    Sizes,
    launch,
    make_cache,
    nvidia_smi,
    step_cache,
    step_concurrency,
    step_kmeans_sizes,
    step_machine,
    step_profile,
    step_reference,
    step_train,
)

DEFAULT_SIZES = Sizes()


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The headline figures under dotted names (absent where their step did not succeed)."""
    steps = result["steps"]
    base = result.get("baseline", "train")  # train_off when the GPU path failed
    out: dict[str, Any] = {} if base == "train" else {"gpu.fallback_perf_off": 1.0}

    def get(step: str, *path: str) -> Any:
        value: Any = steps.get(step, {})
        if value.get("status") != "done":
            return None
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    pairs = {
        "gpu.epoch_train_s": (base, "epoch_train_s"), "gpu.epoch_s": (base, "epoch_s"),
        "gpu.mem_peak_mb": (base, "memory", "max_allocated_mb"),
        "gpu.mem_reserved_mb": (base, "memory", "max_reserved_mb"),
        "gpu.footprint_mb": (base, "footprint", "per_process_mb"),
        "gpu.diagnosis_fraction": (base, "eval", "diagnosis_fraction_of_epoch", "sklearn"),
        "gpu.diagnosis_fraction_torch": (base, "eval", "diagnosis_fraction_of_epoch", "torch"),
        "gpu.epoch_ratio": ("reference", "engine_ratio"), "gpu.reference_epoch_train_s": ("reference", "epoch_train_s"),
        "gpu.gpus_per_trial": ("projection", "recommendation", "gpus_per_trial"),
        "gpu.trials_per_gpu": ("projection", "recommendation", "trials_per_gpu"),
        "gpu.study_gpu_hours": ("projection", "gpu_hours", "ours_asha_simulated"),
        "gpu.official_gpu_hours": ("projection", "gpu_hours", "official"),
        "gpu.gpu_hours_ratio": ("projection", "ratio_official_over_ours"),
    }
    for key, path in pairs.items():
        value = get(*path)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    on, off = get("train", "samples_per_s"), get("train_off", "samples_per_s")
    if on and off:
        out["gpu.perf_speedup"] = on / off
    concurrent = [1] if get(base, "samples_per_s") else []
    for name, step in steps.items():
        if name.startswith("concurrency_") and step.get("status") == "done":
            out[f"gpu.aggregate_speedup_{step['n']}"] = step["speedup_vs_1"]
            concurrent.append(step["n"])
    if concurrent:  # the most trial processes that trained on the one device at once without an error
        out["gpu.max_concurrent_ok"] = float(max(concurrent))
    return out


def run_gpu_bench(*, sizes: Sizes = DEFAULT_SIZES, budget_s: float = 400.0, device: str = "auto",
                  work: Path | None = None, json_path: Path | None = None, compile_step: bool = True, log: Log = print,
                  only: frozenset[str] | None = None) -> dict[str, Any]:
    """Every step in order of importance for issue 13's GPU goals (or those in ``only``); see the module
    docstring."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    run = functools.partial(_run_steps, sizes, budget_s, device, json_path=json_path, compile_step=compile_step,
                            log=log, only=only)
    if work is not None:
        return run(work)
    work = Path(tempfile.mkdtemp(prefix="drl_tune_bench_gpu_"))
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the tiled cache is ~0.6 GB


def _run_steps(sizes: Sizes, budget_s: float, device: str, work: Path, *, json_path: Path | None, compile_step: bool,
               log: Log, only: frozenset[str] | None) -> dict[str, Any]:
    run = Run(sizes=sizes, budget_s=budget_s, device=device, work=work, json_path=json_path, log=log, only=only)
    steps = run.result["steps"]
    tiny = " (tiny sizes: the figures mean nothing)" if sizes.shrink else ""
    log(f"bench gpu: device {device}, budget {budget_s:.0f} s{tiny}, work folder {work}")
    for name, reason in NEEDS_RAY.items():
        steps[name] = {"status": "skipped", "reason": reason, "at_s": 0.0}

    def est_train() -> float:
        machine = steps.get("machine", {})
        return (machine.get("startup_s", 10.0) + 20.0) * (0.3 if sizes.shrink else 1.0)

    def est_concurrency(n: int) -> float:
        """Start-up and the warm-up evaluation (mostly CPU) in parallel; the GPU's work (warm-up epoch + timed
        epochs) N times over, as if the GPU ran the processes one after the other."""
        one = steps.get(run.result["baseline"], {})
        if "timed_s" not in one:
            return 60.0 * n
        parallel = one["imported_s"] + one["build_s"] + one["warmup_eval_s"]
        return parallel + n * (one["warmup_epoch_s"] + one["timed_s"]) + 10.0

    run.step("machine", 30.0, lambda: step_machine(run))
    run.step("cache", 20.0 if sizes.shrink else 40.0, lambda: step_cache(run))
    run.step("train", 60.0, lambda: step_train(run, "train", {}, with_eval=True), needs=("machine", "cache"))
    if steps["train"]["status"] == "error":
        # one chance per session: should the GPU path fail, measure the rest with it off rather than not at all
        run.result["baseline"], run.result["baseline_overrides"] = "train_off", PERF_OFF
        log("[train] failed: concurrency and the projection use the engine with every perf.* switch off")
        run.step("train_off", est_train(), lambda: step_train(run, "train_off", PERF_OFF, with_eval=True),
                 needs=("cache", "machine"))
    base = run.result["baseline"]
    run.step("profile", est_train(), lambda: step_profile(run), needs=("machine", "cache"))
    early = [n for n in sizes.concurrency if n <= 4]
    for n in early:
        run.step(f"concurrency_{n}", est_concurrency(n), functools.partial(step_concurrency, run, n), needs=(base,))
    run.step("reference", 45.0 if not sizes.shrink else 10.0, lambda: step_reference(run), needs=("cache",))
    if base == "train":
        run.step("train_off", est_train(), lambda: step_train(run, "train_off", PERF_OFF, with_eval=False),
                 needs=("cache", "machine"))
    for n in sizes.concurrency:
        if n not in early:
            run.step(f"concurrency_{n}", est_concurrency(n), functools.partial(step_concurrency, run, n), needs=(base,))
    run.step("projection", 0.0, lambda: step_projection(run), needs=(base, "reference"))
    run.step("kmeans_sizes", 30.0 if not sizes.shrink else 5.0, lambda: step_kmeans_sizes(run), needs=("machine",))
    if compile_step:
        run.step("compile", 180.0 if not sizes.shrink else 1e9,
                 lambda: step_train(run, "compile", {"perf.compile": True}, with_eval=False), needs=("cache",))
    run.result["summary"] = summary(run.result)
    run.result["assumptions"] = steps.get("projection", {}).get("assumptions", [])
    run.save()
    statuses = {name: s["status"] for name, s in steps.items()}
    log(f"bench gpu: {sum(s == 'done' for s in statuses.values())} steps done, "
        + ", ".join(f"{name} {s}" for name, s in statuses.items() if s != "done") + f"; {run.elapsed():.0f} s")
    log("summary: " + ", ".join(f"{k} {v:.3g}" for k, v in run.result["summary"].items()))
    return run.result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="write every figure here (rewritten after each step)")
    p.add_argument("--tiny", action="store_true", help="toy sizes on any device (a smoke test; figures mean nothing)")
    p.add_argument("--budget-s", type=float, default=400.0, help="skip steps that would end past this (400 s)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu")
    p.add_argument("--clips", type=int, help="tiled training clips (1024)")
    p.add_argument("--eval-clips", type=int, help="tiled validation and test clips each (256)")
    p.add_argument("--epochs", type=int, help="timed training epochs of the tiled clips (3)")
    p.add_argument("--concurrency", help="concurrent trial processes to measure, comma-separated (2,4,8)")
    p.add_argument("--no-compile", action="store_true", help="skip the perf.compile step")
    p.add_argument("--work", type=Path, help="folder for the generated cache (default: a new temporary one)")
    p.add_argument("--steps", help=f"run only these steps, comma-separated, of: {', '.join(STEPS)} (machine and "
                                   "cache always run; a step whose input step is not run is skipped)")
    args = p.parse_args(argv)
    sizes = TINY if args.tiny else Sizes()
    try:
        if args.clips is not None:
            sizes = replace(sizes, clips=args.clips)
        if args.eval_clips is not None:
            sizes = replace(sizes, eval_clips=args.eval_clips)
        if args.epochs is not None:
            sizes = replace(sizes, epochs=args.epochs)
        if args.concurrency:
            try:
                values = tuple(int(v) for v in args.concurrency.split(",") if v.strip())
            except ValueError:
                message = f"--concurrency: expected comma-separated integers, got {args.concurrency!r}"
                raise ValueError(message) from None
            sizes = replace(sizes, concurrency=values)
        if (sizes.clips < 2 or sizes.eval_clips < 1 or sizes.epochs < 1 or min(sizes.concurrency, default=2) < 2
                or args.budget_s <= 0):
            raise ValueError("--clips must be >= 2, --eval-clips >= 1, --epochs >= 1, --concurrency values >= 2, "
                             "--budget-s > 0")
        only = None
        if args.steps:
            only = frozenset(v.strip() for v in args.steps.split(",") if v.strip())
            unknown = sorted(v for v in only if v not in STEPS and not re.fullmatch(r"concurrency_\d+", v))
            if unknown:
                raise ValueError(f"--steps: unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is visible; use auto or cpu")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_gpu_bench(sizes=sizes, budget_s=args.budget_s, device=args.device, work=args.work,
                           json_path=args.json, compile_step=not args.no_compile, only=only)
    if args.json:
        print(f"wrote {args.json}")
    return 0 if all(s["status"] != "error" for s in result["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
