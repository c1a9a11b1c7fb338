"""The Tune function trainable: one trial = one :class:`~drl_tune.training.engine.Engine`, one report per epoch.

Every epoch's metrics are reported together with a checkpoint of the full engine state, so a trial that
fails (or a study that is interrupted) continues from its last finished epoch exactly as if it had never
stopped — ``tune.get_checkpoint()`` is non-empty then. The checkpoint also carries the rows reported so far, so
the history survives a row that Tune's ``result.json`` loses when a worker dies (``drl_tune/study/history.py``).

Each attempt records its process in the trial folder and, when it fails, the reason (``drl_tune/study/faults.py``);
a retry of a failure that would repeat identically (non-finite loss, bad configuration) stops at once.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.train._internal.session import get_session  # the trial's storage: Ray has no public API for it
from ray.tune import get_context

from drl_tune.methods.user import use_methods
from drl_tune.study import faults
from drl_tune.study.history import load_checkpoint_history, write_checkpoint_history
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine

CHECKPOINT_FILE = "engine.pt"
WORKER_THREADS = torch.get_num_threads()  # torch's own default in this process (every core, unless OMP says)


def worker_threads() -> int:
    """The trial's torch threads: ``OMP_NUM_THREADS`` as Ray sets it for the trial's actor (the trial's CPUs, at
    least 1, unless the user set it). Set at every trial's start: a reused actor (study.REUSE_ACTORS) runs trial after
    trial in one process, and Engine sets threads only when a config asks (threads > 0). Read then, not at import: a
    worker Ray prestarted imports this module before it hosts a trial (``study.cluster.local_workers``), when torch's
    default is still every core (two 1-CPU trials on 2 cores would each run 2 threads)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else WORKER_THREADS


def clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """NaN (e.g. ``test/acc_at_best_val`` before a best epoch exists) would poison schedulers; drop it."""
    return {k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def trial_folder() -> str:
    """The trial's own folder under ``--storage`` (where drl_tune_worker.json / drl_tune_error.json belong).

    Not ``get_context().get_trial_dir()``: in a reused actor (Ray 2.60 ``FunctionTrainable.reset_config``) that
    names the session's per-trial working directory, which nothing reads; and not Ray's driver staging folder,
    which lies in the Ray session of the node the trial runs on — on a cluster, a trial on another node than the
    driver's wrote its record where the driver never looks. The storage folder is shared by every node (the
    cluster checks require it), so the driver, and a retry on any node, read what the trial wrote."""
    storage = getattr(get_session(), "storage", None)
    if storage is not None and getattr(storage, "trial_dir_name", None):
        folder = Path(storage.trial_fs_path)
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)
    return get_context().get_trial_dir()


def train_trial(config: dict[str, Any], methods: list[dict[str, str]] | None = None) -> None:
    """Run (or continue) one trial; ``config`` is the flat ``a.b`` configuration Optuna completed, ``methods`` the
    study's recorded method files (registered here, in the trial's own process)."""
    trial_dir = trial_folder()
    faults.record_worker(trial_dir)
    faults.refuse_deterministic_retry(trial_dir)
    try:
        use_methods(recorded=methods)  # installed packages' entry points, then the study's own files
        torch.set_num_threads(worker_threads())
        train_config = make_config(config)
        if train_config.perf.compile:  # a reused actor holds earlier trials' compiled graphs, and torch stops
            torch.compiler.reset()  # compiling (falls back to eager) once a function has too many of them
        engine = Engine(train_config)
        history: list[dict[str, float]] = []  # every reported row, carried in each checkpoint (study/history.py)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                engine.load(Path(folder) / CHECKPOINT_FILE)
                history = load_checkpoint_history(folder)
        while not engine.done:
            metrics = clean_metrics(engine.run_epoch())
            history.append(metrics)
            with tempfile.TemporaryDirectory(prefix="drl_tune_ckpt_") as folder:
                engine.save(Path(folder) / CHECKPOINT_FILE)
                write_checkpoint_history(folder, history)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except Exception as err:
        faults.record_error(trial_dir, err)
        raise
