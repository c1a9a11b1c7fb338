"""drl-tune: hyperparameter studies for Diagnosing & Re-learning and balanced multimodal learning.

Layout: ``core`` (one run), ``methods``, ``models``, ``data``, ``study`` (the Ray Tune study), ``analysis``,
``bench``; the commands are the modules at this level (``python -m drl_tune.run`` …).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__version__ = "0.1.0"

# Modules that moved into packages. Tune pickles a study's search space, searcher and callbacks into the study
# folder under their module names, so a folder written before the move names the old ones; ``--resume`` of such
# a folder must still unpickle them. Each old name imports as the module it became (the same module object).
MOVED = {f"drl_tune.{m}": f"drl_tune.core.{m}" for m in (
    "accel", "config", "config_keys", "diagnosis", "engine", "errors", "io", "metrics", "modality", "paths", "stats")}
MOVED |= {f"drl_tune.{m}": f"drl_tune.study.{m}" for m in (
    "cluster", "confirmation", "faults", "history", "plan", "ray_session", "safety", "spaces", "tables", "tracking",
    "trainable")}
MOVED |= {"drl_tune.bench_gpu": "drl_tune.bench.gpu", "drl_tune.bench_diagnosis": "drl_tune.bench.diagnosis",
          "drl_tune.bench_reference": "drl_tune.bench.reference", "drl_tune.data.bench": "drl_tune.bench.data"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as its new module: Python has no alias mechanism for this, only finders."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported under its own name."""


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
