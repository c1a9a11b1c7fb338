"""The Tune function trainable: one trial = one :class:`~drl_tune.engine.Engine`, one report per epoch.

Every epoch's metrics are reported together with a checkpoint of the full engine state, so a trial that
fails (or a study that is interrupted) continues from its last finished epoch exactly as if it had never
stopped — ``tune.get_checkpoint()`` is non-empty then. The checkpoint also carries the rows reported so far, so
the history survives a row that Tune's ``result.json`` loses when a worker dies (``drl_tune/history.py``).

Each attempt records its process in the trial folder and, when it fails, the reason (``drl_tune/faults.py``);
a retry of a failure that would repeat identically (non-finite loss, bad configuration) stops at once.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import get_context

from drl_tune import faults
from drl_tune.config import make_config
from drl_tune.engine import Engine
from drl_tune.history import load_checkpoint_history, write_checkpoint_history

CHECKPOINT_FILE = "engine.pt"


def clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """NaN (e.g. ``test/acc_at_best_val`` before a best epoch exists) would poison schedulers; drop it."""
    return {k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def train_trial(config: dict[str, Any]) -> None:
    """Run (or continue) one trial; ``config`` is the flat ``a.b`` configuration Optuna completed."""
    trial_dir = get_context().get_trial_dir()
    faults.record_worker(trial_dir)
    faults.refuse_deterministic_retry(trial_dir)
    try:
        engine = Engine(make_config(config))
        history: list[dict[str, float]] = []  # every reported row, carried in each checkpoint (drl_tune/history.py)
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
