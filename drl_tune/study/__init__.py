"""The study: a space file becomes a plan (``plan``, ``spaces``, ``params``), the plan a Ray Tune run (``tune``:
Tuner, searcher, ASHA; ``trainable``: one trial), tracked in MLflow (``tracking``), confirmed over fresh seeds
(``confirmation``; its result as files and text: ``answer``), made robust to faults (``faults``, ``history``,
``ray_session``, ``cluster``), printed (``tables``) with credentials redacted (``safety``).

Tune pickles a study's search space, searcher, callbacks and trial-name function into the study folder. Folders
written before this package existed (``drl_tune/study.py`` was one module, now :mod:`drl_tune.study.tune`) name
``drl_tune.study.DefineByRun``, ``drl_tune.study.trial_name`` …; ``--resume`` of such a folder finds every name
that module had here, imported only when asked for (``tests/test_old_layout.py`` resumes such a folder).
"""

from __future__ import annotations

import importlib
from typing import Any

# every top-level name the old drl_tune/study.py module had (definitions and imports)
_OLD_MODULE_NAMES = frozenset({
    "DefineByRun", "make_searcher", "make_scheduler", "REUSE_ACTORS", "make_trainable", "trial_name", "make_tuner",
    "ctrl_c_watch", "finished_trials", "ProgressTable", "Plan", "Param", "SchedulerSpec", "train_trial"})


def __getattr__(name: str) -> Any:
    if name in _OLD_MODULE_NAMES:
        return getattr(importlib.import_module("drl_tune.study.tune"), name)
    raise AttributeError(f"module 'drl_tune.study' has no attribute {name!r}")
