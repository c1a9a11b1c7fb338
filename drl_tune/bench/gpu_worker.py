"""The worker side of ``python -m drl_tune.bench gpu`` (drl_tune/bench/gpu.py): one process per GPU step, started
by :func:`drl_tune.bench.gpu_steps.launch` as ``python -m drl_tune.bench.gpu_worker SPEC``; it meets the other
workers at file barriers (warmed up -> timed -> memory snapshot) so the timed windows overlap and each process'
memory is its own."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from drl_tune.bench.gpu_steps import PHASES
from drl_tune.bench.official_loops import ReferenceSamples, reference_epoch, synchronize, trained_samples
from drl_tune.ground.io import atomic_write_text

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
    from drl_tune.study.spaces import load_space

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
    from drl_tune.training.engine import Engine

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
    from drl_tune.bench.diagnosis_speed import time_diagnosis
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
    from drl_tune.training.engine import Engine

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
    from drl_tune.training.engine import build_model

    config = _engine_config(spec)
    data = load_cache(spec["cache"])
    train, val = data.splits["train"], data.splits["val"]
    n = min(len(train), spec["reference_batches"] * config.batch_size)
    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device)
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
    from drl_tune.bench.diagnosis_speed import time_diagnosis

    barrier.phase("ready")
    time_diagnosis(64, dim=8, device=device, backends=("torch",))  # first-call costs are not the diagnosis'
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
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


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
