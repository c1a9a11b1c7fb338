"""The steps of ``python -m drl_tune.bench gpu`` (drl_tune/bench/gpu.py), their sizes, and the parent's side of
the worker processes (:func:`launch`; the workers are drl_tune/bench/gpu_worker.py). The parent never touches
CUDA."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drl_tune.bench.official_loops import cremad_cache
from drl_tune.data.cremad import OFFICIAL as CREMAD  # the prepared CREMA-D splits' sizes
from drl_tune.ground.io import atomic_write_text

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
            procs.append(subprocess.Popen([sys.executable, "-m", "drl_tune.bench.gpu_worker", str(path)],
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
        record: dict[str, Any]
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
