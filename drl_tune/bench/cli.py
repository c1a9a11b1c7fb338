"""``python -m drl_tune.bench {data,epoch,diagnosis,overhead,study,all,gpu,methods} [--json FILE]``: where time goes.

Every sub-benchmark measures the two things it compares side by side in one run and prints their ratio:
on a shared machine the load changes by the minute, so absolute seconds mean little except on a GPU.

* ``data``: samples/s of the cached loading pipeline vs a reference-style per-sample one (``torch.load`` +
  PIL + torchvision in a DataLoader) on generated CREMA-D-layout clips (:mod:`drl_tune.bench.data`).
  ``data.ratio`` = the augmented training path, ``data.eval_ratio`` the evaluation path.
* ``epoch``: training samples/s of the engine (``Engine.train_epoch``, method ``joint``) vs a reference-style
  loop doing what the official DRL script does per step: a DataLoader of per-sample transforms
  (``ToTensor`` + ``Normalize`` of PIL frames, fp32 spectrograms), no buffer reuse, fp32 forward, cross-entropy,
  backward, SGD step — the same model, batch size and data. At demo input size (the embedded synthetic set,
  ResNet18 width 8, 2 frames 32², 64×40 spectrograms) and at CREMA-D input size (width 64, 2 frames 224²,
  300×128 spectrograms; ``--limit`` generated clips). ``epoch.ratio`` = the CREMA-D size.
* ``diagnosis``: sklearn vs torch k-means on N × 512 features and the diagnosis as a fraction of one
  CREMA-D-sized epoch (:func:`drl_tune.bench.diagnosis_speed.run_diagnosis_bench`).
* ``overhead``: the same epochs as one Tune trial (a Ray worker process, a checkpoint and a ``tune.report``
  per epoch, the MLflow callback logging every epoch to a sqlite store) vs the plain engine loop in this
  process (engine built, epochs run). ``overhead.ratio`` = Tune trial wall time / plain wall time (``ray.init``
  excluded), ``overhead.per_epoch_ratio`` = Tune's mean ``time_this_iter_s`` / the plain mean epoch.
* ``study``: ``python -m drl_tune.run --space demo`` as a user runs it (search, confirmation, report) with
  ``--max-concurrent`` 1 and 2 (``--concurrency``): trials per hour of its search, and ``study.overhead_ratio`` = the
  whole command's wall time / its trials' compute (Σ ``time/epoch_s`` ÷ trials at a time), broken down by stage
  (:mod:`drl_tune.bench.study_cost`).

* ``gpu``: every GPU figure of issue 13 in one command without Ray (:mod:`drl_tune.bench.gpu`; ``--budget-s``);
  not part of ``all``.
* ``methods``: every registered method's epoch CPU time relative to joint, on the demo, in turns in one process
  (:mod:`drl_tune.bench.methods`; ``--methods``, ``--method-epochs``, ``--set``); not part of ``all``.

``--tiny`` shrinks every size so the whole command runs in a smoke test (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from drl_tune.bench.official_loops import (
    ReferenceSamples,
    cremad_cache,
    reference_epoch,
    synchronize,
    trained_samples,
)
from drl_tune.ground.domains import Domain, flag
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.io import atomic_write_text
from drl_tune.ground.paths import PathError, check_writable
from drl_tune.training.config import TrainConfig, make_config, parse_assignments

BENCHES = ("data", "epoch", "diagnosis", "overhead", "study")
Log = Callable[[str], None]


def _load() -> float:
    return os.getloadavg()[0]


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "load": _load()}


# -- epoch -------------------------------------------------------------------------------------------------


def time_epochs(config: TrainConfig, data: Any, *, epochs: int, workers: int, log: Log, label: str) -> dict[str, Any]:
    """Training samples/s of the engine vs the reference-style loop on ``data``, alternating epochs."""
    from drl_tune.training.engine import Engine, build_model

    engine = Engine(config, data)
    split = engine.data.splits["train"]
    torch.manual_seed(config.seed)
    model = build_model(config, engine.data).to(engine.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    loader = DataLoader(ReferenceSamples(split.inputs, engine.data.modalities, split.labels, config.data.augment),
                        batch_size=config.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=engine.device.type == "cuda")

    def run_engine() -> int:
        engine.train_epoch()
        synchronize(engine.device)
        return trained_samples(len(split), config.batch_size)

    def run_reference() -> int:
        n = reference_epoch(model, optimizer, loader, engine.device)
        synchronize(engine.device)
        return n

    totals = {"engine": [0, 0.0], "reference": [0, 0.0]}
    run_engine(), run_reference()  # warm-up: workers, page cache, kernels
    for _ in range(epochs):
        for name, fn in (("engine", run_engine), ("reference", run_reference)):
            start = time.perf_counter()
            count = fn()
            totals[name][0] += count
            totals[name][1] += time.perf_counter() - start
    rate = {name: count / seconds for name, (count, seconds) in totals.items()}
    row = {"n_train": len(split), "batch_size": config.batch_size, "width": config.model.width,
           "engine_samples_per_s": rate["engine"], "reference_samples_per_s": rate["reference"],
           "ratio": rate["engine"] / rate["reference"], "augment": config.data.augment, "workers": workers,
           "device": str(engine.device), "perf": engine.accel.describe()}
    log(f"epoch {label:8s} ({len(split)} clips, batch {config.batch_size}, width {config.model.width}): engine "
        f"{rate['engine']:7.1f} samples/s   reference {rate['reference']:7.1f} samples/s   ratio "
        f"{row['ratio']:5.2f}x")
    return row


def run_epoch_bench(*, limit: int = 64, demo_n: int = 1000, epochs: int = 2, workers: int = 2,
                    batch_size: int = 64, cremad_width: int = 64, threads: int = 2, augment: bool = False,
                    tiny: bool = False, work: Path | None = None, log: Log = print) -> dict[str, Any]:
    """Engine vs reference-style training loop at demo and at CREMA-D input size."""
    from drl_tune.data.cache import load_cache
    from drl_tune.data.synthetic import load_synthetic
    from drl_tune.study.spaces import load_space

    work = work or Path(tempfile.mkdtemp(prefix="drl_tune_bench_epoch_"))
    before = torch.get_num_threads()
    out: dict[str, Any] = {"sizes": {}}
    try:
        demo = load_space("demo").config(parse_assignments([
            "method=joint", f"threads={threads}", f"data.augment={augment}", f"data.synthetic.n_train={demo_n}",
            *(["data.synthetic.n_val=24", "data.synthetic.n_test=24", "model.width=4"] if tiny else [])]))
        out["sizes"]["demo"] = time_epochs(demo, load_synthetic(demo.data.synthetic), epochs=epochs, workers=workers,
                                           log=log, label="demo")
        cache = cremad_cache(work, limit + 2, workers)
        cremad = make_config({"method": "joint", "threads": threads, "data.name": "cremad", "data.root": str(cache),
                              "data.augment": augment, "batch_size": batch_size, "model.width": cremad_width,
                              "eval.probe_samples": 10})
        out["sizes"]["cremad"] = time_epochs(cremad, load_cache(cache), epochs=epochs, workers=workers, log=log,
                                             label="CREMA-D")
    finally:
        torch.set_num_threads(before)
    out["ratio"] = out["sizes"]["cremad"]["ratio"]
    out["demo_ratio"] = out["sizes"]["demo"]["ratio"]
    return out


# -- overhead ----------------------------------------------------------------------------------------------


def _process_started(pid: int) -> float | None:
    """Wall-clock start of a live local process (its /proc start ticks after boot), None when gone/unknown."""
    from drl_tune.study.ray_session import start_time

    ticks = start_time(pid)
    try:
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    return None if ticks is None else btime + ticks / os.sysconf("SC_CLK_TCK")


IMPORT_PROBE = """import json, time
wall0 = time.time()
t0 = time.perf_counter()
import ray, ray.tune
t1 = time.perf_counter()
import sklearn.cluster, sklearn.linear_model, torch, torchvision.models
t2 = time.perf_counter()
import drl_tune.study.trainable
t3 = time.perf_counter()
print(json.dumps([wall0, t1 - t0, t2 - t1, t3 - t2]))
"""


def worker_imports() -> dict[str, float]:
    """What a trial's worker imports, timed in a fresh interpreter: Ray's part (``ray``, ``ray.tune``: a Ray worker
    loads these before it runs a trial), the libraries training needs (torch, torchvision, sklearn) and what
    drl_tune.study.trainable adds on top of them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError("timing the worker's imports failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    first_line, ray_s, libraries_s, ours_s = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"python_start_s": first_line - launched, "import_ray_tune_s": ray_s,
            "import_libraries_s": libraries_s, "import_drl_tune_s": ours_s}


def run_overhead_bench(*, epochs: int = 5, overrides: list[str] | None = None, log: Log = print) -> dict[str, Any]:
    """The same epochs as one Tune trial (checkpoint + report per epoch, MLflow callback) vs the plain loop.

    Two identical trials run one after the other, with the studies' actor reuse (``study.REUSE_ACTORS``): the
    first ("cold") starts a new Ray worker process, as the first trial of every study slot does; the second
    ("warm") runs in that worker again, as later trials of a study do. Timestamps from the driver (callbacks) and
    from the trial's worker file (pid, its process start, the trainable's first line) split the cold start-up."""
    import ray
    from ray import tune
    from ray.tune import Callback
    from threadpoolctl import threadpool_limits

    from drl_tune.study.faults import WORKER_FILE
    from drl_tune.study.spaces import load_space
    from drl_tune.study.tracking import MLflowTrialCallback, StudyTracker
    from drl_tune.study.trainable import train_trial
    from drl_tune.study.tune import REUSE_ACTORS
    from drl_tune.training.engine import Engine

    config = load_space("demo").config(parse_assignments(["method=joint", "threads=1", f"epochs={epochs}",
                                                          *(overrides or [])]))
    flat = config.to_flat()
    work = Path(tempfile.mkdtemp(prefix="drl_tune_bench_overhead_"))
    before = torch.get_num_threads()
    marks: dict[str, Any] = {"trials": [], "start": {}, "results": {}, "complete": {}, "mlflow_start_s": {},
                             "worker": {}}

    def plain() -> tuple[float, list[float]]:
        # as inside a Ray worker with 1 CPU, where Ray sets OMP_NUM_THREADS=1: one BLAS/OpenMP thread for the
        # probe's sklearn fit too (torch gets threads=1 from the config in both)
        with threadpool_limits(limits=1):
            start = time.perf_counter()
            engine = Engine(config)
            times = [engine.run_epoch()["time/epoch_s"] for _ in range(epochs)]
            return time.perf_counter() - start, times

    class TimedMLflow(MLflowTrialCallback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            start = time.time()
            super().on_trial_start(iteration, trials, trial, **info)
            marks["mlflow_start_s"][trial.trial_id] = time.time() - start

    class Marks(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            marks["trials"].append(trial.trial_id)
            marks["start"][trial.trial_id] = time.time()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            marks["results"].setdefault(trial.trial_id, []).append(time.time())
            if trial.trial_id not in marks["worker"]:  # the worker is alive now: read its process start
                with contextlib.suppress(OSError, ValueError, KeyError):
                    worker = json.loads((Path(trial.path) / WORKER_FILE).read_text())
                    marks["worker"][trial.trial_id] = {**worker, "process_started": _process_started(worker["pid"])}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            marks["complete"][trial.trial_id] = time.time()

    try:
        plain()  # warm-up: the dataset is generated and cached on disk, imports, kernels
        plain_runs = [plain()]
        ray_start = time.perf_counter()
        # "local": a plain ray.init() would join a cluster that `ray start` recorded on this machine
        ray.init(address="local", num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        ray_init_s = time.perf_counter() - ray_start
        try:
            tracker = StudyTracker(f"sqlite:///{work / 'mlflow.db'}", "bench-overhead", work / "artifacts")
            parent = tracker.start_parent("bench", {}, {}, {})
            callback = TimedMLflow(tracker.tracking_uri, tracker.experiment_id, parent, "bench")
            tuner = tune.Tuner(
                tune.with_resources(train_trial, {"cpu": 1}), param_space=flat,
                tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=1, reuse_actors=REUSE_ACTORS),
                run_config=tune.RunConfig(name="overhead", storage_path=str(work), callbacks=[callback, Marks()],
                                          verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            fit_start = time.time()
            results = tuner.fit()
            fit_end = time.time()
            # ResultGrid iterates through __getitem__/__len__; it declares no __iter__
            by_id = {r.metrics.get("trial_id"): r for r in results}  # type: ignore[attr-defined]
            frames = []
            for trial_id in marks["trials"]:
                r = by_id.get(trial_id)
                frame = r.metrics_dataframe if r is not None else None
                if r is None or r.error is not None or frame is None or len(frame) != epochs:
                    raise RuntimeError(f"a Tune trial did not finish its {epochs} epochs: {r and r.error}")
                frames.append(frame)
        finally:
            ray.shutdown()
        plain_runs.append(plain())  # plain before and after the trial: load drift hits both alike
        imports = worker_imports()
    finally:
        torch.set_num_threads(before)
    cold, warm = marks["trials"]
    plain_s = float(np.mean([p[0] for p in plain_runs]))
    plain_epoch = float(np.mean([t for p in plain_runs for t in p[1]]))
    iter_s = [float(v) for v in frames[0]["time_this_iter_s"]]
    trial_epoch_s = [float(v) for v in frames[0]["time/epoch_s"]]
    tune_s = marks["complete"][cold] - fit_start
    warm_s = marks["complete"][warm] - marks["complete"][cold]
    worker = marks["worker"].get(cold, {})
    started, process_started = worker.get("started"), worker.get("process_started")
    first_epoch_start = marks["results"][cold][0] - trial_epoch_s[0]
    breakdown = {
        # Ray may prestart the worker process at ray.init (it then predates fit() and cost fit nothing), and
        # /proc's boot time has whole-second resolution: a process started before fit() counts as 0
        "fit_to_worker_process_s": max(0.0, process_started - fit_start) if process_started else None,
        "worker_process_to_trainable_s": started - process_started if started and process_started else None,
        "trainable_to_first_epoch_s": first_epoch_start - started if started else None,
        "mlflow_child_run_s": marks["mlflow_start_s"].get(cold),
        "last_report_to_complete_s": marks["complete"][cold] - marks["results"][cold][-1],
        "fit_end_after_last_trial_s": fit_end - marks["complete"][warm],
        **imports,
    }
    warm_worker = marks["worker"].get(warm, {})
    out = {"epochs": epochs, "plain_s": plain_s, "tune_s": tune_s, "ray_init_s": ray_init_s,
           "ratio": tune_s / plain_s, "plain_epoch_s": plain_epoch, "tune_iter_s": float(np.mean(iter_s)),
           "tune_epoch_s": float(np.mean(trial_epoch_s)), "per_epoch_ratio": float(np.mean(iter_s)) / plain_epoch,
           "per_epoch_report_s": float(np.mean(iter_s) - np.mean(trial_epoch_s)),
           "fixed_s": tune_s - float(np.sum(iter_s)), "plain_fixed_s": plain_s - plain_epoch * epochs,
           "startup_breakdown": breakdown, "warm_s": warm_s, "warm_ratio": warm_s / plain_s,
           "warm_actor_reused": bool(worker.get("pid")) and worker.get("pid") == warm_worker.get("pid"),
           "warm_fixed_s": warm_s - float(np.sum(frames[1]["time/epoch_s"])), "reuse_actors": REUSE_ACTORS}
    log(f"overhead: {epochs} demo epochs as a Tune trial {tune_s:.1f} s vs the plain engine loop {plain_s:.1f} s: "
        f"ratio {out['ratio']:.2f}x (ray.init {ray_init_s:.1f} s not counted); per epoch {out['per_epoch_ratio']:.2f}x "
        f"(checkpoint + report {out['per_epoch_report_s'] * 1000:.0f} ms/epoch; epoch inside the trial "
        f"{out['tune_epoch_s']:.2f} s vs {plain_epoch:.2f} s here); fixed: trial start {out['fixed_s']:.1f} s vs "
        f"engine build {out['plain_fixed_s']:.1f} s")
    b = {k: (f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in breakdown.items()}
    log(f"overhead: cold start-up, s from fit(): worker process started {b['fit_to_worker_process_s']}, "
        f"it reached train_trial after {b['worker_process_to_trainable_s']}, its first epoch began "
        f"{b['trainable_to_first_epoch_s']} later (driver: MLflow child run {b['mlflow_child_run_s']}); a fresh "
        f"interpreter imports ray + ray.tune in {b['import_ray_tune_s']}, torch + torchvision + sklearn in "
        f"{b['import_libraries_s']}, drl_tune.study.trainable on top in {b['import_drl_tune_s']}")
    log(f"overhead: the next trial on the {'reused' if out['warm_actor_reused'] else 'NEW (not reused)'} actor "
        f"{warm_s:.1f} s vs plain {plain_s:.1f} s: ratio {out['warm_ratio']:.2f}x (fixed {out['warm_fixed_s']:.1f} s)")
    return out


# -- study -------------------------------------------------------------------------------------------------


def run_study_bench(*, num_samples: int = 4, concurrency: tuple[int, ...] = (1, 2), overrides: list[str] | None = None,
                    confirm_seeds: int | None = None, log: Log = print) -> dict[str, Any]:
    """The demo study as a user runs it (search, confirmation, report) at each ``--max-concurrent``: trials per hour
    of its search, and where the whole command's wall time goes (:mod:`drl_tune.bench.study_cost`)."""
    from drl_tune.bench.study_cost import describe, study_cost, timed_run

    work = Path(tempfile.mkdtemp(prefix="drl_tune_bench_study_"))
    rows = []
    for c in concurrency:
        cmd = [sys.executable, "-m", "drl_tune.run", "--space", "demo", "--num-samples", str(num_samples),
               "--max-concurrent", str(c), "--storage", str(work), "--name", f"c{c}", "--progress-interval", "3600"]
        if confirm_seeds is not None:
            cmd += ["--confirm-seeds", str(confirm_seeds)]
        for assignment in overrides or []:
            cmd += ["--set", assignment]
        load = _load()
        lines, wall, code = timed_run(cmd)
        if code != 0:
            tail = [text for _, text in lines][-5:]
            raise RuntimeError(f"the demo study with --max-concurrent {c} failed ({code}): " + " | ".join(tail))
        stdout = "\n".join(text for _, text in lines)
        found = re.search(r"search of study '[^']*' \((\d+) trials, (\d+) s", stdout)
        trials, search_s = (int(found.group(1)), float(found.group(2))) if found else (num_samples, wall)
        search_s = max(search_s, 1.0)
        cost = study_cost(lines, wall, work / f"c{c}", c)
        epochs = cost["stages"]["search"]["trial_epochs"]  # the search's epochs (confirm/ holds the confirmation's)
        row = {"max_concurrent": c, "trials": trials, "search_s": search_s, "wall_s": wall,
               "trials_per_hour": trials * 3600 / search_s, "epochs_trained": epochs,
               "epochs_per_hour": epochs * 3600 / search_s, "load_before": load, "load_after": _load(),
               "overhead_ratio": cost["overhead_ratio"], "cost": cost}
        rows.append(row)
        log(f"study: {trials} demo trials at --max-concurrent {c}: search {search_s:.0f} s (command {wall:.0f} s) "
            f"-> {row['trials_per_hour']:.0f} trials/h, {row['epochs_per_hour']:.0f} search epochs/h "
            f"({epochs} epochs, ASHA stops some trials early)")
        for line in describe(cost):
            log(f"study:   {line}")
    best = max(rows, key=lambda r: r["trials_per_hour"])
    return {"rows": rows, "trials_per_hour": best["trials_per_hour"], "max_concurrent": best["max_concurrent"],
            "speedup": rows[-1]["trials_per_hour"] / rows[0]["trials_per_hour"],
            "overhead_ratio": rows[-1]["overhead_ratio"], "breakdown": rows[-1]["cost"]["stages"]}


# -- all ---------------------------------------------------------------------------------------------------


def run(benches: list[str], args: argparse.Namespace, log: Log = print) -> dict[str, Any]:
    from drl_tune.bench.data import run_data_bench
    from drl_tune.bench.diagnosis_speed import run_diagnosis_bench

    tiny = args.tiny
    result: dict[str, Any] = {"machine": _machine(), "tiny": tiny}
    for name in benches:
        start = time.perf_counter()
        load = _load()
        if name == "data":
            result["data"] = run_data_bench(clips=18 if tiny else args.clips, workers=args.workers,
                                            batch_size=8 if tiny else 64, epochs=1 if tiny else args.epochs, log=log)
        elif name == "epoch":
            result["epoch"] = run_epoch_bench(limit=6 if tiny else args.limit, demo_n=48 if tiny else 1000,
                                              epochs=1 if tiny else args.epochs, workers=0 if tiny else args.workers,
                                              batch_size=4 if tiny else args.batch_size,
                                              cremad_width=4 if tiny else 64, augment=args.augment, tiny=tiny,
                                              threads=1 if tiny else args.workers, log=log)
        elif name == "diagnosis":
            kw = ({"batches": 1, "width": 4, "image_size": 32, "audio_frames": 32, "n_mels": 16, "batch_size": 4,
                   "n_train": 200} if tiny else {"batches": args.epoch_batches})
            result["diagnosis"] = run_diagnosis_bench([60] if tiny else args.diagnosis_sizes, epoch_kwargs=kw,
                                                      log=log)["diagnosis"]
        elif name == "overhead":
            result["overhead"] = run_overhead_bench(epochs=2 if tiny else args.overhead_epochs,
                                                    overrides=TINY_DEMO if tiny else None, log=log)
        elif name == "methods":
            from drl_tune.bench.methods import run_methods_bench

            result["methods"] = run_methods_bench(
                methods=[m for m in (args.methods or "").split(",") if m] or None,
                epochs=2 if tiny else args.method_epochs, overrides=[*TINY_DEMO, *args.set] if tiny else args.set,
                log=log)
        elif name == "study":
            # tiny: the demo's two methods one trial each (equal budgets need a multiple of the methods)
            result["study"] = run_study_bench(num_samples=2 if tiny else args.num_samples,
                                              concurrency=(1,) if tiny else tuple(args.concurrency),
                                              overrides=[*TINY_DEMO, "epochs=2"] if tiny else None,
                                              confirm_seeds=1 if tiny else None, log=log)
        result[name]["seconds"] = time.perf_counter() - start
        result[name]["load"] = [load, _load()]
    result["summary"] = summary(result)
    return result


TINY_DEMO = ["data.synthetic.n_train=48", "data.synthetic.n_val=24", "data.synthetic.n_test=24", "model.width=4",
             "eval.probe_samples=20"]


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The headline figures under their dotted names (``data.ratio`` ...)."""
    keys = {"data": ("ratio", "eval_ratio"), "epoch": ("ratio", "demo_ratio"),
            "overhead": ("ratio", "per_epoch_ratio", "warm_ratio"), "diagnosis": ("fraction_of_epoch",),
            "study": ("trials_per_hour", "speedup", "overhead_ratio")}
    out = {f"{b}.{k}": float(result[b][k]) for b, ks in keys.items() if b in result for k in ks if k in result[b]}
    for method, ratios in result.get("methods", {}).get("methods", {}).items():
        out[f"methods.{method}.epoch_ratio"] = float(ratios["epoch_ratio"])
    return out


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# the flags' domains (ground/domains.py, as every command's): a bad number is one argparse line, not a traceback
ONE_OR_MORE = flag(Domain(ge=1), integer=True)
WORKERS = flag(Domain(ge=0, le=256), integer=True)
BATCH = flag(Domain(ge=2), integer=True)


@guarded
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", choices=[*BENCHES, "all", "gpu", "methods"])
    p.add_argument("--json", type=Path, help="write every figure here (summary keys: data.ratio, epoch.ratio, ...)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test; the figures mean nothing)")
    p.add_argument("--workers", type=WORKERS, default=2, help="DataLoader workers / torch threads (2)")
    p.add_argument("--epochs", type=ONE_OR_MORE, default=2, help="timed epochs per pipeline, data and epoch (2)")
    p.add_argument("--clips", type=ONE_OR_MORE, default=512, help="data: generated CREMA-D clips (512)")
    p.add_argument("--limit", type=ONE_OR_MORE, default=64,
                   help="epoch: CREMA-D-sized training clips (64; 5954 on a GPU)")
    p.add_argument("--batch-size", type=BATCH, default=16, help="epoch: CREMA-D-size batch (16; 64 = official)")
    p.add_argument("--augment", action="store_true",
                   help="epoch: crop + flip (the official DRL CREMA-D script trains without)")
    p.add_argument("--diagnosis-sizes", type=_ints, default=[1000, 5000, 20000], help="diagnosis: N (1000,5000,20000)")
    p.add_argument("--epoch-batches", type=ONE_OR_MORE, default=2,
                   help="diagnosis: batches timed for the epoch estimate")
    p.add_argument("--overhead-epochs", type=ONE_OR_MORE, default=5, help="overhead: demo epochs (5)")
    p.add_argument("--num-samples", type=ONE_OR_MORE, default=4, help="study: trials per study (4)")
    p.add_argument("--concurrency", type=_ints, default=[1, 2], help="study: --max-concurrent values (1,2)")
    p.add_argument("--budget-s", type=flag(Domain(gt=0)), default=400.0,
                   help="gpu: skip the steps that would end past this many seconds (400)")
    p.add_argument("--steps", help="gpu: only these steps, comma-separated (python -m drl_tune.bench.gpu --help)")
    p.add_argument("--methods", help="methods: only these (comma-separated; joint is always timed)")
    p.add_argument("--method-epochs", type=ONE_OR_MORE, default=3, help="methods: epochs per method (3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="methods: a config value for every method's run (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = p.parse_args(argv)
    if args.json:
        try:
            check_writable(args.json.parent, "--json folder")
        except PathError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.bench == "gpu":  # its own module: it must run where Ray, MLflow and Optuna are not installed
        from drl_tune.bench.gpu import main as gpu_main

        return gpu_main([*(["--json", str(args.json)] if args.json else []), *(["--tiny"] if args.tiny else []),
                         "--budget-s", str(args.budget_s), *(["--steps", args.steps] if args.steps else [])])
    benches = list(BENCHES) if args.bench == "all" else [args.bench]
    try:
        result = run(benches, args)
    except ConfigError as err:  # a --methods name or a --set value: the user's input
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("summary: " + ", ".join(f"{k} {v:.3g}" for k, v in result["summary"].items()))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    exit_command(main())
