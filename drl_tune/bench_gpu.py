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
* ``reference``: the official script's way (fp32, per-sample PIL pipeline, ``bench_reference``) on the same
  GPU, one process: training samples/s and the per-clip evaluation.
* ``train_off``: ``train`` with every ``perf.*`` switch off, for the GPU path's speed-up.
* ``projection``: GPU-hours of a 40-trial ASHA study of the ``cremad`` space against the official script's
  (the formula, the inputs and every assumption are in the JSON and the log).
* ``kmeans_sizes``: sklearn vs torch k-means at N = 1k … 200k (``bench diagnosis`` on the GPU) while the
  budget lasts; ``compile``: ``train`` with ``perf.compile=true`` if time remains. ``--steps`` runs only some of
  them (machine and cache always).

The parent process never touches CUDA: every GPU step runs in fresh worker processes (``python -m
drl_tune.bench_gpu worker SPEC``) that meet at file barriers (warmed up → timed → memory snapshot), so the
timed windows overlap and each process' memory is its own. ``--tiny`` runs every step at toy sizes on whatever
device there is (a CPU here) in about a minute: a smoke test, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drl_tune.bench_reference import ReferenceSamples, cremad_cache, reference_epoch, synchronize, trained_samples
from drl_tune.data.cremad import OFFICIAL as CREMAD  # the prepared CREMA-D splits' sizes
from drl_tune.io import atomic_write_text

Log = Callable[[str], None]
PHASES = ("ready", "done", "snap")  # warmed up -> timed work finished -> memory read (all processes alive)
PERF_OFF = {"perf.bf16": False, "perf.channels_last": False, "perf.pin_memory": False, "perf.gpu_augment": False,
            "perf.compile": False}
MEMORY_MARGIN = 1.2  # a trial's footprint × this must fit: fragmentation, a larger eval batch, another cuDNN plan
NEEDS_RAY = {"overhead": "needs Ray Tune and MLflow (a Tune trial against the plain loop)",
             "study": "needs Ray Tune and Optuna (a whole demo study)",
             "data": "needs hundreds of generated CREMA-D jpg clips (minutes of generation); run "
                     "`python -m drl_tune.bench data` where time allows"}


@dataclass(frozen=True)
class Sizes:
    """How big each step is; ``TINY`` is the smoke test's."""

    seed_clips: int = 24  # clips generated and really prepared (all six classes)
    clips: int = 1024  # tiled training clips (16 batches of 64 per epoch)
    eval_clips: int = 256  # tiled validation and test clips each
    epochs: int = 3  # timed training epochs of the tiled clips (48 batches of 64)
    reference_batches: int = 12  # timed batches of the official-style loop (and as many warm-up ones)
    kmeans_n: int = CREMAD["train"]
    concurrency: tuple[int, ...] = (2, 4, 8)
    threads: int = 4  # torch threads per trial process at most: the cremad space's cpus_per_trial
    shrink: bool = False  # tiny: frames 32², spectrograms 32 × 16, width 4, batch 4
    overrides: tuple[tuple[str, Any], ...] = ()


TINY = Sizes(seed_clips=8, clips=16, eval_clips=8, epochs=1, reference_batches=2, kmeans_n=120, concurrency=(2,),
             threads=1, shrink=True, overrides=(("model.width", 4), ("batch_size", 4), ("eval.probe_samples", 10)))


# -- worker processes ------------------------------------------------------------------------------------------


class Barrier:
    """File barrier in a folder shared with the parent: a worker writes ``<phase>_<i>`` and waits for
    ``<phase>.go``; ``abort`` (written by the parent when any worker failed) ends every wait."""

    def __init__(self, folder: Path, index: int, timeout_s: float = 600.0) -> None:
        self.folder, self.index, self.timeout_s = folder, index, timeout_s
        self.parent = os.getppid()

    def phase(self, name: str) -> None:
        (self.folder / f"{name}_{self.index}").touch()
        deadline = time.monotonic() + self.timeout_s
        while not (self.folder / f"{name}.go").exists():
            if (self.folder / "abort").exists():
                raise RuntimeError(f"aborted at '{name}': another worker failed")
            if time.monotonic() > deadline or os.getppid() != self.parent:  # the parent was killed
                raise TimeoutError(f"'{name}' was not released (parent gone, or {self.timeout_s:.0f} s passed)")
            time.sleep(0.01)


def _memory(device: torch.device) -> dict[str, float]:
    """This process' peak tensor memory, what its caching allocator holds, and the whole device's used memory
    (every process, CUDA contexts included) at this moment."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    mb = 2.0**20
    return {"max_allocated_mb": torch.cuda.max_memory_allocated(device) / mb,
            "max_reserved_mb": torch.cuda.max_memory_reserved(device) / mb,
            "reserved_mb": torch.cuda.memory_reserved(device) / mb,
            "device_used_mb": (total - free) / mb, "device_total_mb": total / mb}


def _facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                             "device": str(device), "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {"name": props.name, "total_mb": props.total_memory / 2**20,
                  "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                  "bf16": torch.cuda.is_bf16_supported(),
                  "tf32_conv": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}
    return facts


def _engine_config(spec: dict[str, Any]) -> Any:
    from drl_tune.spaces import load_space

    return load_space("cremad").config({"data.root": spec["cache"], "method": "joint", "device": spec["device"],
                                        "threads": spec["threads"], **spec["overrides"]})


def _role_facts(spec: dict[str, Any], device: torch.device, barrier: Barrier, out: dict[str, Any]) -> None:
    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context exists from here on
        synchronize(device)
    for name in PHASES:
        if name == "snap":
            out["memory"] = _memory(device)
        barrier.phase(name)


def _role_train(spec: dict[str, Any], device: torch.device, barrier: Barrier, out: dict[str, Any]) -> None:
    """Warm up, then time ``epochs`` training epochs of the engine (and, with ``eval``, the evaluation pieces)."""
    from drl_tune.data.cache import load_cache
    from drl_tune.engine import Engine

    out["imported_s"] = time.time() - spec["t_launch"]
    config = _engine_config(spec)
    data = load_cache(spec["cache"])
    start = time.perf_counter()
    engine = Engine(config, data)
    out["build_s"] = time.perf_counter() - start
    n_train = len(engine.data.splits["train"])
    out |= {"perf": engine.accel.describe(), "n_train": n_train, "batch_size": config.batch_size,
            "width": config.model.width, "augment": config.data.augment, "threads": torch.get_num_threads()}
    start = time.perf_counter()
    engine.train_epoch()  # warm-up: cuDNN plans, allocator, page cache, (compile)
    synchronize(device)
    out["warmup_epoch_s"] = time.perf_counter() - start
    start = time.perf_counter()
    engine.evaluate()  # its memory counts in the peak, as in a trial
    out["warmup_eval_s"] = time.perf_counter() - start
    barrier.phase("ready")
    out["t0"] = time.time()
    times = []
    for _ in range(spec["epochs"]):
        start = time.perf_counter()
        engine.train_epoch()
        synchronize(device)
        times.append(time.perf_counter() - start)
    out["t1"] = time.time()
    per_epoch = trained_samples(n_train, config.batch_size)
    out |= {"train_epoch_s": times, "samples": per_epoch * len(times),
            "batches_timed": len(times) * math.ceil(n_train / config.batch_size)}
    if spec.get("eval"):
        out["eval"] = _time_eval(engine, device, spec)
    barrier.phase("done")
    out["memory"] = _memory(device)
    barrier.phase("snap")


def _time_eval(engine: Any, device: torch.device, spec: dict[str, Any]) -> dict[str, Any]:
    """The eval forward pass per clip, one whole evaluation, and k-means of DRL's diagnosis at ``kmeans_n``."""
    from drl_tune.bench_diagnosis import time_diagnosis
    from drl_tune.methods.drl import STABILITY_RESTARTS

    splits = engine.data.splits
    start = time.perf_counter()
    for split in ("val", "test"):
        engine._forward(split)  # what evaluate() and the diagnosis run per split (eval mode, eval.batch_size)
    synchronize(device)
    forward_s = time.perf_counter() - start
    clips = len(splits["val"]) + len(splits["test"])
    engine._feature_cache.clear()  # as every epoch starts: the probe's training features are computed again
    start = time.perf_counter()
    engine.evaluate()
    synchronize(device)
    evaluate_s = time.perf_counter() - start
    width = engine.config.model.width
    km = time_diagnosis(spec["kmeans_n"], dim=8 * width, device=device, restarts=STABILITY_RESTARTS)
    return {"forward_s": forward_s, "forward_clips": clips, "forward_per_clip_s": forward_s / clips,
            "evaluate_s": evaluate_s, "n_val": len(splits["val"]), "n_test": len(splits["test"]),
            "n_probe": len(engine.probe_indices), "probe_samples": engine.config.eval.probe_samples,
            "eval_batch_size": engine.config.eval.batch_size, "kmeans_n": spec["kmeans_n"],
            "kmeans_restarts": STABILITY_RESTARTS, "feature_dim": 8 * width,
            "kmeans_sklearn_s": km["sklearn_s"], "kmeans_torch_s": km["torch_s"],
            "kmeans_purity_max_abs_diff": km["purity_max_abs_diff"]}


def _role_profile(spec: dict[str, Any], device: torch.device, barrier: Barrier, out: dict[str, Any]) -> None:
    """Where a training epoch's time goes: the host's share spent preparing batches (gather from the cache,
    the augmentation's launches) against the epoch's wall time, and ``torch.profiler``'s top operators by
    self device time and by self host time over one epoch, after a warm-up epoch."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from drl_tune.data.cache import load_cache
    from drl_tune.engine import Engine

    engine = Engine(_engine_config(spec), load_cache(spec["cache"]))
    engine.train_epoch()  # warm-up
    synchronize(device)
    barrier.phase("ready")
    batch = engine._batch
    host = {"s": 0.0, "batches": 0}

    def timed_batch(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return batch(*args, **kwargs)
        finally:
            host["s"] += time.perf_counter() - start
            host["batches"] += 1

    engine._batch = timed_batch  # type: ignore[method-assign]
    start = time.perf_counter()
    engine.train_epoch()
    synchronize(device)
    wall = time.perf_counter() - start
    engine._batch = batch  # type: ignore[method-assign]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        engine.train_epoch()
        synchronize(device)
        profiled_wall = time.perf_counter() - start
    events = prof.key_averages()
    # key_averages lists the operators (host events, their launched kernels' time as their device time) and the
    # kernels themselves (device events): summing both would count each kernel twice
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    operators = [e for e in events if e.device_type != DeviceType.CUDA]

    def device_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) or 0.0)

    def rows(ranked: list[Any], key: Callable[[Any], float], top: int = 12) -> list[dict[str, Any]]:
        return [{"name": e.key, "calls": e.count, "self_device_ms": device_us(e) / 1e3,
                 "self_host_ms": e.self_cpu_time_total / 1e3} for e in sorted(ranked, key=key, reverse=True)[:top]]

    out |= {"epoch_wall_s": wall, "host_batch_prep_s": host["s"], "batches": host["batches"],
            "host_batch_prep_fraction": host["s"] / wall, "profiled_epoch_wall_s": profiled_wall,
            # one process' kernels run one after another on its stream: their sum / wall ≈ how busy it keeps the
            # GPU under the profiler (which slows the host, so this is a lower bound)
            "device_busy_fraction": sum(device_us(e) for e in kernels) / 1e6 / profiled_wall,
            "top_device": rows(operators, device_us), "top_kernels": rows(kernels, device_us, top=8),
            "top_host": rows(operators, lambda e: e.self_cpu_time_total)}
    barrier.phase("done")
    barrier.phase("snap")


def _role_reference(spec: dict[str, Any], device: torch.device, barrier: Barrier, out: dict[str, Any]) -> None:
    """The official script's step on this device: per-sample PIL pipeline in a DataLoader, fp32 (torch's default
    math), cross-entropy, backward, SGD; and its evaluation forward per clip."""
    from torch.utils.data import DataLoader

    from drl_tune.data.cache import load_cache
    from drl_tune.models import MultimodalClassifier

    config = _engine_config(spec)
    data = load_cache(spec["cache"])
    train, val = data.splits["train"], data.splits["val"]
    n = min(len(train), spec["reference_batches"] * config.batch_size)
    torch.manual_seed(config.seed)
    model = MultimodalClassifier(data.modalities, data.n_classes, config.model.width, config.fusion).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    workers = spec["loader_workers"]

    def loader(split: Any, size: int, augment: bool) -> DataLoader:
        inputs = {m: a[:size] for m, a in split.inputs.items()}
        return DataLoader(ReferenceSamples(inputs, data.modalities, split.labels[:size], augment),
                          batch_size=config.batch_size, shuffle=augment, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    train_loader = loader(train, n, config.data.augment)
    start = time.perf_counter()
    reference_epoch(model, optimizer, train_loader, device)  # warm-up: loader workers, cuDNN
    synchronize(device)
    out["warmup_s"] = time.perf_counter() - start
    barrier.phase("ready")
    start = time.perf_counter()
    count = reference_epoch(model, optimizer, train_loader, device)
    synchronize(device)
    train_s = time.perf_counter() - start
    eval_loader = loader(val, len(val), False)
    model.eval()
    evaluated = 0
    with torch.no_grad():
        for i, timed in enumerate((False, True)):  # the first pass warms the loader's workers up
            start = time.perf_counter()
            for inputs, labels in eval_loader:
                model({m: x.to(device) for m, x in inputs.items()}).logits.float().cpu()
                evaluated += len(labels) if timed else 0
            synchronize(device)
            eval_s = time.perf_counter() - start if i else 0.0
    out |= {"samples": count, "batches_timed": math.ceil(count / config.batch_size), "train_s": train_s,
            "samples_per_s": count / train_s, "eval_clips": evaluated, "eval_per_clip_s": eval_s / max(evaluated, 1),
            "loader_workers": workers, "augment": config.data.augment, "batch_size": config.batch_size,
            "width": config.model.width}
    barrier.phase("done")
    out["memory"] = _memory(device)
    barrier.phase("snap")


def _role_kmeans(spec: dict[str, Any], device: torch.device, barrier: Barrier, out: dict[str, Any]) -> None:
    """sklearn vs torch k-means at growing N until the next size would pass ``deadline`` (wall clock)."""
    from drl_tune.bench_diagnosis import time_diagnosis

    barrier.phase("ready")
    time_diagnosis(64, dim=8, device=device, backends=("torch",))  # first-call costs are not the diagnosis'
    rows, skipped = [], []
    for n in spec["sizes"]:
        if rows:
            last = rows[-1]
            estimate = (last["sklearn_s"] + last["torch_s"]) * n / last["n"] * 1.3
            if time.time() + estimate > spec["deadline"]:
                skipped.append(n)
                continue
        rows.append(time_diagnosis(n, device=device))
    out |= {"rows": rows, "skipped_sizes": skipped}
    barrier.phase("done")
    barrier.phase("snap")


ROLES = {"facts": _role_facts, "train": _role_train, "profile": _role_profile, "reference": _role_reference,
         "kmeans": _role_kmeans}


def worker(spec_path: Path) -> int:
    """One worker process: run ``spec['role']``, write its JSON (with ``error`` when it failed)."""
    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, Any] = {"index": spec["index"], "pid": os.getpid(), "role": spec["role"],
                           "started_after_s": time.time() - spec["t_launch"]}
    device = torch.device(spec["device"])
    barrier = Barrier(Path(spec["sync"]), spec["index"])
    try:
        if spec["threads"] > 0:
            torch.set_num_threads(spec["threads"])
        out["facts"] = _facts(device)
        ROLES[spec["role"]](spec, device, barrier, out)
    except BaseException as err:  # recorded for the parent, which decides what it means
        out["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:400]
        (Path(spec["sync"]) / "abort").touch()
    out["wall_s"] = time.time() - spec["t_launch"]
    atomic_write_text(spec["out"], json.dumps(out, default=str))  # the parent may read it while we are killed
    return 1 if "error" in out else 0


# -- the parent: launching workers -----------------------------------------------------------------------------


def nvidia_smi() -> dict[str, Any] | None:
    """The device's used memory and each compute process' (CUDA context included), or None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        gpu = subprocess.run([exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split("\n")[0]
        apps = subprocess.run([exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
        used, total = (float(v) for v in gpu.split(","))
    except (OSError, subprocess.SubprocessError, ValueError) as err:  # ValueError: "[N/A]" (MIG, containers)
        return {"error": str(err)[:200]}
    per_pid = {}
    for line in apps.strip().splitlines():
        pid, _, mem = (v.strip() for v in line.partition(","))
        if mem.replace(".", "").isdigit():
            per_pid[pid] = float(mem)
    return {"used_mb": used, "total_mb": total, "apps_mb": per_pid}


def launch(specs: list[dict[str, Any]], work: Path, timeout_s: float) -> dict[str, Any]:
    """Start one worker per spec, walk them through the barriers together, return their outputs and the
    nvidia-smi view taken while all were alive after their timed work. Raises if any worker failed."""
    sync = work / f"sync-{uuid.uuid4().hex[:8]}"
    sync.mkdir(parents=True)
    procs, logs = [], []
    deadline = time.monotonic() + timeout_s
    smi_before = nvidia_smi()
    for i, spec in enumerate(specs):
        spec = {**spec, "index": i, "sync": str(sync), "out": str(sync / f"out_{i}.json"), "t_launch": time.time()}
        path = sync / f"spec_{i}.json"
        atomic_write_text(path, json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(max(spec["threads"], 1))}  # as Ray sets for a trial
        logs.append(sync / f"log_{i}.txt")
        with logs[-1].open("w") as log_file:
            procs.append(subprocess.Popen([sys.executable, "-m", "drl_tune.bench_gpu", "worker", str(path)],
                                          stdout=log_file, stderr=subprocess.STDOUT, env=env))
    smi: dict[str, Any] | None = None
    failure = None
    try:
        for name in PHASES:
            while not all((sync / f"{name}_{i}").exists() for i in range(len(procs))):
                if (sync / "abort").exists() or any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"a worker failed before '{name}'")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not reach '{name}' within {timeout_s:.0f} s")
                time.sleep(0.05)
            if name == "done":
                smi = nvidia_smi()
            (sync / f"{name}.go").touch()
        for p in procs:
            p.wait(timeout=max(5.0, deadline - time.monotonic()))
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as err:
        failure = f"{type(err).__name__}: {err}"
        (sync / "abort").touch()
        for p in procs:  # the workers this call started, and only those
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    outs = []
    for i, p in enumerate(procs):
        out_path = sync / f"out_{i}.json"
        if out_path.is_file():
            outs.append(json.loads(out_path.read_text()))
        else:
            tail = " | ".join(logs[i].read_text(errors="replace").strip().splitlines()[-3:])
            outs.append({"index": i, "error": f"exit status {p.returncode}, no output: {tail[-300:]}"})
    errors = [f"worker {o['index']}: {o['error']}" for o in outs if "error" in o and "aborted" not in o["error"]]
    if failure or errors:
        raise RuntimeError("; ".join(errors) or failure)
    return {"workers": outs, "nvidia_smi": smi, "nvidia_smi_before": smi_before}


# -- the steps --------------------------------------------------------------------------------------------------


def make_cache(work: Path, sizes: Sizes) -> dict[str, Any]:
    """Really prepared seed clips, tiled to ``sizes.clips`` training and ``sizes.eval_clips`` val/test clips."""
    from drl_tune.data.cache import Split, load_cache, write_cache

    start = time.perf_counter()
    # prepare's own lines ("wrote N clips ...") are not this command's
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        seed_root = cremad_cache(work / "seed", sizes.seed_clips + 2, workers=0)
    generated_s = time.perf_counter() - start
    seed = load_cache(seed_root, in_memory=True)
    source = seed.splits["train"]
    preprocessing = dict(seed.preprocessing)
    inputs = dict(source.inputs)
    if sizes.shrink:  # toy sizes for the smoke test
        inputs = {m: (a[:, :32, :16] if a.ndim == 3 else a[..., ::7, ::7]) for m, a in inputs.items()}
        preprocessing["visual"] = {**preprocessing.get("visual", {}), "size": 32}
    start = time.perf_counter()

    def tiled(n: int, offset: int) -> Split:
        index = (np.arange(n) + offset) % len(source)
        return Split({m: np.ascontiguousarray(a[index]) for m, a in inputs.items()}, source.labels[index],
                     np.asarray([f"tile{offset}-{i}" for i in range(n)]))

    root = write_cache(work / "cache", seed.name, seed.classes, dict(seed.modalities),
                       {"train": tiled(sizes.clips, 0), "val": tiled(sizes.eval_clips, 1),
                        "test": tiled(sizes.eval_clips, 2)}, preprocessing)
    shapes = {m: list(a.shape[1:]) for m, a in inputs.items()}
    return {"path": str(root), "seed_clips": len(source), "generated_and_prepared_s": generated_s,
            "tiled_s": time.perf_counter() - start, "train": sizes.clips, "val": sizes.eval_clips,
            "test": sizes.eval_clips, "shapes": shapes,
            "dtypes": {m: str(a.dtype) for m, a in inputs.items()}}


# the steps by name (--steps); concurrency_N for each N of --concurrency, the default sizes' listed here
STEPS = ("machine", "cache", "train", "profile", *(f"concurrency_{n}" for n in Sizes().concurrency), "reference",
         "train_off", "projection", "kmeans_sizes", "compile")


class Run:
    """The steps' shared state: budget, results, the JSON written after every step."""

    def __init__(self, *, sizes: Sizes, budget_s: float, device: str, work: Path, json_path: Path | None,
                 log: Log, only: frozenset[str] | None = None) -> None:
        self.sizes, self.budget_s, self.device, self.work, self.json_path, self.log = (
            sizes, budget_s, device, work, json_path, log)
        self.only = only  # the steps asked for (--steps); machine and cache always run
        self.start = time.monotonic()
        self.estimate_s = 60.0
        cpus = os.cpu_count() or 1
        self.result: dict[str, Any] = {"tiny": sizes.shrink, "budget_s": budget_s, "device": device,
                                       "sizes": asdict(sizes), "cpus": cpus, "steps": {}, "assumptions": [],
                                       # the single-process run concurrency and projection build on
                                       "baseline": "train", "baseline_overrides": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def step(self, name: str, estimate_s: float, fn: Callable[[], dict[str, Any]], needs: tuple[str, ...] = ()
             ) -> dict[str, Any] | None:
        """Run ``fn`` unless a step it needs did not succeed or it would not fit the budget; record what
        happened either way."""
        steps = self.result["steps"]
        missing = [n for n in needs if steps.get(n, {}).get("status") != "done"]
        if self.only is not None and name not in self.only | {"machine", "cache"}:
            record = {"status": "skipped", "reason": "not asked for (--steps)"}
        elif missing:
            record = {"status": "skipped", "reason": f"needs step {missing[0]!r}, which did not succeed"}
        elif estimate_s > self.left():
            record = {"status": "skipped", "reason": f"estimated {estimate_s:.0f} s, {max(self.left(), 0):.0f} s "
                                                     f"of the {self.budget_s:.0f} s budget left"}
        else:
            start = time.perf_counter()
            self.estimate_s = estimate_s
            try:
                record = {"status": "done", **fn()}
            except Exception as err:  # one failing step must not lose the others
                record = {"status": "error", "error": f"{type(err).__name__}: {err}"[:1000]}
            record["seconds"] = time.perf_counter() - start
        record["at_s"] = self.elapsed()
        steps[name] = record
        if record["status"] != "done":
            self.log(f"[{name}] {record['status']}: {record.get('reason') or record.get('error')}")
        self.save()
        return record if record["status"] == "done" else None

    def save(self) -> None:
        if self.json_path is not None:
            self.result["elapsed_s"] = self.elapsed()
            atomic_write_text(self.json_path, json.dumps(self.result, indent=2, default=str))

    def spec(self, role: str, threads: int, **extra: Any) -> dict[str, Any]:
        cache = self.result["steps"].get("cache", {}).get("path", "")
        return {"role": role, "device": self.device, "cache": cache, "threads": threads,
                "overrides": dict(self.sizes.overrides), "epochs": self.sizes.epochs, **extra}

    def timeout(self) -> float:
        """How long the current step's workers may take: 3× its estimate (at least 90 s), and never more than a
        minute past the budget — a hung worker costs one step, not the session. On a CPU (smoke tests, dry runs)
        only the budget limits: the estimates are a GPU's."""
        if self.device == "cpu":
            return max(30.0, self.left() + 60.0)
        return max(30.0, min(self.left() + 60.0, max(90.0, 3 * self.estimate_s)))


def _threads(run: Run, n: int) -> int:
    """Torch threads per trial process: the cremad space's cpus_per_trial, fewer when N of them share the
    machine's cores (Ray would not start more trials than it has CPUs for); one in the smoke test, where
    OpenMP threads spinning on a loaded 2-core machine cost more than they bring."""
    return max(1, min(run.sizes.threads, run.result["cpus"] // n))


def _train_rate(out: dict[str, Any]) -> float:
    return out["samples"] / sum(out["train_epoch_s"])


def _footprint_mb(run: Run, launched: dict[str, Any]) -> dict[str, Any]:
    """Per-process GPU footprint: nvidia-smi's per-process memory (context included) when it lists every worker,
    else the process' peak reserved memory + the CUDA context measured by the machine step."""
    workers = launched["workers"]
    smi = launched.get("nvidia_smi") or {}
    apps = smi.get("apps_mb") or {}
    mine = [apps[str(w["pid"])] for w in workers if str(w.get("pid")) in apps]
    if len(mine) == len(workers) and mine:
        return {"per_process_mb": max(mine), "source": "nvidia-smi per process (context included)",
                "all_mb": mine}
    context = run.result["steps"].get("machine", {}).get("context_mb")
    reserved = [w.get("memory", {}).get("max_reserved_mb") for w in workers]
    if context is None or None in reserved or not reserved:
        return {"per_process_mb": None, "source": "no GPU memory figures (not a CUDA device)"}
    return {"per_process_mb": max(reserved) + context, "all_mb": [r + context for r in reserved],
            "source": "peak reserved + the CUDA context of the machine step (nvidia-smi did not list the workers)"}


def step_machine(run: Run) -> dict[str, Any]:
    launched = launch([run.spec("facts", 1)], run.work, run.timeout())
    out = launched["workers"][0]
    facts, memory = out["facts"], out.get("memory", {})
    record = {**facts, "startup_s": out["wall_s"], "nvidia_smi": launched["nvidia_smi"]}
    if memory:
        # everything used on the device while only this process held a context: its context (~0.5 GB) plus
        # what other processes held (none on a lent machine)
        before = (launched.get("nvidia_smi_before") or {}).get("used_mb", 0.0)
        record["context_mb"] = memory["device_used_mb"] - before - memory["reserved_mb"]
    run.log(f"[machine] torch {facts['torch']}, CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, "
            + (f"{facts['name']} ({facts['total_mb'] / 1024:.1f} GiB, sm {facts['capability']}, bf16 {facts['bf16']}), "
               f"CUDA context {record['context_mb']:.0f} MB; " if memory else f"device {facts['device']} (no CUDA); ")
            + f"{facts['cpus']} CPUs; a worker process starts in {out['wall_s']:.1f} s")
    return record


def step_cache(run: Run) -> dict[str, Any]:
    record = make_cache(run.work, run.sizes)
    run.log(f"[cache] prepare cremad on {record['seed_clips']} generated clips "
            f"{record['generated_and_prepared_s']:.1f} s, tiled to {record['train']}/{record['val']}/{record['test']} "
            f"clips in {record['tiled_s']:.1f} s; shapes "
            + ", ".join(f"{m} {s} {record['dtypes'][m]}" for m, s in record["shapes"].items()))
    return record


def step_train(run: Run, name: str, overrides: dict[str, Any], with_eval: bool) -> dict[str, Any]:
    spec = run.spec("train", _threads(run, 1), eval=with_eval, kmeans_n=run.sizes.kmeans_n)
    spec["overrides"] = {**spec["overrides"], **overrides}
    launched = launch([spec], run.work, run.timeout())
    out = launched["workers"][0]
    rate = _train_rate(out)
    per_batch = out["batch_size"] / rate  # seconds per full batch (the last one of an epoch may be smaller)
    epoch_s = CREMAD["train"] / rate
    record: dict[str, Any] = {
        "perf": out["perf"], "samples_per_s": rate, "per_batch_s": per_batch, "epoch_train_s": epoch_s,
        "timed_s": sum(out["train_epoch_s"]),
        "extrapolated": f"{CREMAD['train']} clips at the rate of {out['batches_timed']} timed batches of "
                        f"{out['batch_size']} ({len(out['train_epoch_s'])} epochs of {out['n_train']} tiled clips "
                        "after one warm-up epoch)",
        "batch_size": out["batch_size"], "width": out["width"], "augment": out["augment"], "threads": out["threads"],
        "warmup_epoch_s": out["warmup_epoch_s"], "warmup_eval_s": out["warmup_eval_s"], "build_s": out["build_s"],
        "imported_s": out["imported_s"], "memory": out.get("memory", {}),
        "worker_wall_s": out["wall_s"], "nvidia_smi": launched["nvidia_smi"],
        "footprint": _footprint_mb(run, launched)}
    mem = record["memory"]
    line = (f"[{name}] {rate:.0f} samples/s ({per_batch * 1000:.1f} ms per batch of {out['batch_size']}, perf "
            f"{'on' if any(out['perf'].values()) else 'off'}) -> a {CREMAD['train']}-clip training epoch "
            f"{epoch_s:.2f} s (extrapolated from {out['batches_timed']} batches)")
    if mem:
        line += (f"; peak allocated {mem['max_allocated_mb']:.0f} MB (time/gpu_mem_peak_mb), reserved "
                 f"{mem['max_reserved_mb']:.0f} MB")
    run.log(line)
    if with_eval:
        ev = out["eval"]
        n_probe = min(ev["probe_samples"], CREMAD["train"])
        rest = max(ev["evaluate_s"] - ev["forward_per_clip_s"] * (ev["n_val"] + ev["n_test"] + ev["n_probe"]), 0.0)
        eval_s = ev["forward_per_clip_s"] * (CREMAD["val"] + CREMAD["test"] + n_probe) + rest
        features_s = ev["forward_per_clip_s"] * CREMAD["train"]
        diagnosis = {b: features_s + ev[f"kmeans_{b}_s"] for b in ("sklearn", "torch")}
        record["eval"] = {**ev, "probe_fit_and_rest_s": rest, "epoch_eval_s": eval_s, "train_features_s": features_s,
                          "diagnosis_s": diagnosis,
                          "diagnosis_fraction_of_epoch": {b: d / epoch_s for b, d in diagnosis.items()},
                          "extrapolated": f"eval forward {ev['forward_per_clip_s'] * 1000:.2f} ms per clip (timed on "
                                          f"{ev['forward_clips']} clips) × {CREMAD['val']} val + {CREMAD['test']} "
                                          f"test + {n_probe} probe clips, + the probe fit etc. as measured"}
        record["epoch_s"] = epoch_s + eval_s
        run.log(f"[{name}] eval forward {ev['forward_per_clip_s'] * 1000:.2f} ms/clip -> evaluation of a CREMA-D "
                f"epoch {eval_s:.2f} s (val + test + {n_probe}-clip probe); training + evaluation "
                f"{record['epoch_s']:.2f} s; "
                f"diagnosis {diagnosis['sklearn']:.2f} s with sklearn k-means ({ev['kmeans_sklearn_s']:.2f} s), "
                f"{diagnosis['torch']:.2f} s with torch ({ev['kmeans_torch_s']:.2f} s) = "
                f"{diagnosis['sklearn'] / epoch_s:.1%} / {diagnosis['torch'] / epoch_s:.1%} of the training epoch")
    return record


def step_concurrency(run: Run, n: int) -> dict[str, Any]:
    threads = _threads(run, n)
    spec = run.spec("train", threads)
    spec["overrides"] = {**spec["overrides"], **run.result["baseline_overrides"]}
    launched = launch([spec for _ in range(n)], run.work, run.timeout())
    workers = launched["workers"]
    window = max(w["t1"] for w in workers) - min(w["t0"] for w in workers)
    aggregate = sum(w["samples"] for w in workers) / window
    single = run.result["steps"][run.result["baseline"]]["samples_per_s"]
    record: dict[str, Any] = {
        "n": n, "threads_per_process": threads, "aggregate_samples_per_s": aggregate,
        "speedup_vs_1": aggregate / single, "per_process_samples_per_s": [_train_rate(w) for w in workers],
        "overlap_s": min(w["t1"] for w in workers) - max(w["t0"] for w in workers), "window_s": window,
        "memory": [w.get("memory", {}) for w in workers], "nvidia_smi": launched["nvidia_smi"],
        "footprint": _footprint_mb(run, launched),
        "epoch_train_s_per_trial": CREMAD["train"] / float(np.mean([_train_rate(w) for w in workers]))}
    used = [w.get("memory", {}).get("device_used_mb") for w in workers]
    record["device_used_mb"] = max(used) if None not in used else None
    line = (f"[concurrency {n}] {n} processes ({threads} threads each): aggregate {aggregate:.0f} samples/s = "
            f"{record['speedup_vs_1']:.2f}x one process; each trial's epoch "
            f"{record['epoch_train_s_per_trial']:.2f} s")
    if record["device_used_mb"] is not None:
        line += f"; device memory used {record['device_used_mb']:.0f} MB with all {n} alive"
    if record["footprint"]["per_process_mb"] is not None:
        line += f", per process {record['footprint']['per_process_mb']:.0f} MB ({record['footprint']['source']})"
    run.log(line)
    return record


def step_reference(run: Run) -> dict[str, Any]:
    workers = min(16, run.result["cpus"]) if not run.sizes.shrink else 0
    spec = run.spec("reference", _threads(run, 1), reference_batches=run.sizes.reference_batches,
                    loader_workers=workers)
    out = launch([spec], run.work, run.timeout())["workers"][0]
    engine = run.result["steps"].get(run.result["baseline"], {}).get("samples_per_s")
    record = {k: out[k] for k in ("samples", "batches_timed", "train_s", "samples_per_s", "eval_clips",
                                  "eval_per_clip_s", "loader_workers", "augment", "batch_size", "width")}
    record |= {"epoch_train_s": CREMAD["train"] / out["samples_per_s"], "memory": out.get("memory", {}),
               "engine_ratio": engine / out["samples_per_s"] if engine else None,
               "extrapolated": f"{CREMAD['train']} clips at the rate of {out['batches_timed']} timed batches "
                               "(after as many warm-up batches)"}
    run.log(f"[reference] official-style fp32 per-sample loop ({workers} loader workers): {out['samples_per_s']:.0f} "
            f"samples/s -> training epoch {record['epoch_train_s']:.2f} s (from {out['batches_timed']} batches); eval "
            f"{out['eval_per_clip_s'] * 1000:.2f} ms/clip"
            + (f"; engine / reference {record['engine_ratio']:.2f}x (epoch.ratio at CREMA-D size)" if engine else ""))
    return record


def step_profile(run: Run) -> dict[str, Any]:
    out = launch([run.spec("profile", _threads(run, 1))], run.work, run.timeout())["workers"][0]
    keys = ("epoch_wall_s", "host_batch_prep_s", "batches", "host_batch_prep_fraction", "profiled_epoch_wall_s",
            "device_busy_fraction", "top_device", "top_kernels", "top_host")
    record = {k: out[k] for k in keys}
    run.log(f"[profile] one epoch of {out['batches']} batches: {out['epoch_wall_s']:.2f} s, of it the host preparing "
            f"batches {out['host_batch_prep_s']:.2f} s ({out['host_batch_prep_fraction']:.0%}); the GPU busy "
            f"{out['device_busy_fraction']:.0%} of the profiled epoch ({out['profiled_epoch_wall_s']:.2f} s)")
    for title, key, col in (("device", "top_device", "self_device_ms"), ("host", "top_host", "self_host_ms")):
        run.log(f"[profile] top by self {title} time: " + "; ".join(
            f"{r['name']} {r[col]:.0f} ms ×{r['calls']}" for r in out[key][:8]))
    return record


def step_kmeans_sizes(run: Run) -> dict[str, Any]:
    sizes = [60, 120] if run.sizes.shrink else [1_000, 5_000, 20_000, 50_000, 100_000, 200_000]
    deadline = time.time() + min(run.left() - 15.0, 90.0)  # leaves the compile step its chance
    out = launch([run.spec("kmeans", _threads(run, 1), sizes=sizes, deadline=deadline)], run.work,
                 run.timeout())["workers"][0]
    for row in out["rows"]:
        run.log(f"[kmeans_sizes] N={row['n']:>7}: sklearn {row['sklearn_s']:.2f} s, torch {row['torch_s']:.2f} s "
                f"({row['ratio']:.2f}x), purity |diff| <= {row['purity_max_abs_diff']:.3f}")
    if out["skipped_sizes"]:
        run.log(f"[kmeans_sizes] not run (budget): N = {out['skipped_sizes']}")
    return {"rows": out["rows"], "skipped_sizes": out["skipped_sizes"]}


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
    from drl_tune.spaces import load_space

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


def run_gpu_bench(*, sizes: Sizes = Sizes(), budget_s: float = 400.0, device: str = "auto", work: Path | None = None,
                  json_path: Path | None = None, compile_step: bool = True, log: Log = print,
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
        run.step(f"concurrency_{n}", est_concurrency(n), lambda n=n: step_concurrency(run, n), needs=(base,))
    run.step("reference", 45.0 if not sizes.shrink else 10.0, lambda: step_reference(run), needs=("cache",))
    if base == "train":
        run.step("train_off", est_train(), lambda: step_train(run, "train_off", PERF_OFF, with_eval=False),
                 needs=("cache", "machine"))
    for n in sizes.concurrency:
        if n not in early:
            run.step(f"concurrency_{n}", est_concurrency(n), lambda n=n: step_concurrency(run, n), needs=(base,))
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
    p = argparse.ArgumentParser(prog="python -m drl_tune.bench_gpu", description=__doc__.split("\n")[0])
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
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(Path(sys.argv[2])))
    sys.exit(main())
