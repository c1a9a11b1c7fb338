"""Old names, in one place: where the modules and names of earlier layouts live now.

Tune pickles a study's search space, searcher, callbacks and trial-name function into the study folder under the
module names they had when the study started. A folder written by an earlier layout names modules that have since
moved (``drl_tune.spaces``, ``drl_tune.core.config``, the one-module ``drl_tune.study`` …), so reading it must
still find those names. :func:`install` teaches Python the old names; the code that opens an existing study folder
calls it (:meth:`drl_tune.study.plan.Plan.read`) before anything of the folder is unpickled, and nothing else
imports this module: the package itself knows only its current names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

_GROUND = ("errors", "io", "paths", "stats", "domains", "metrics", "guard", "modality")
_TRAINING = ("engine", "config", "config_keys", "accel")
_STUDY = ("cluster", "confirmation", "faults", "history", "plan", "ray_session", "safety", "spaces", "tables",
          "tracking", "trainable")

# old module name -> the modules its names are found in now (first match wins)
MOVED: dict[str, tuple[str, ...]] = {
    **{f"drl_tune.{m}": (f"drl_tune.ground.{m}",) for m in _GROUND},
    **{f"drl_tune.core.{m}": (f"drl_tune.ground.{m}",) for m in _GROUND},
    **{f"drl_tune.{m}": (f"drl_tune.training.{m}",) for m in _TRAINING},
    **{f"drl_tune.core.{m}": (f"drl_tune.training.{m}",) for m in _TRAINING},
    **{f"drl_tune.{m}": (f"drl_tune.study.{m}",) for m in _STUDY},
    # the space file's distributions lived in spaces before params existed; the dataset blocks in the run config
    "drl_tune.spaces": ("drl_tune.study.spaces", "drl_tune.study.params"),
    "drl_tune.config": ("drl_tune.training.config", "drl_tune.data.config", "drl_tune.ground.errors"),
    "drl_tune.core.config": ("drl_tune.training.config", "drl_tune.data.config", "drl_tune.ground.errors"),
    "drl_tune.diagnosis": ("drl_tune.methods.drl_diagnosis",),
    "drl_tune.core.diagnosis": ("drl_tune.methods.drl_diagnosis",),
    "drl_tune.core": (),
    "drl_tune.bench_gpu": ("drl_tune.bench.gpu",),
    "drl_tune.bench_diagnosis": ("drl_tune.bench.diagnosis_speed",),
    "drl_tune.bench.diagnosis": ("drl_tune.bench.diagnosis_speed",),
    "drl_tune.bench_reference": ("drl_tune.bench.official_loops",),
    "drl_tune.bench.reference": ("drl_tune.bench.official_loops",),
    "drl_tune.data.bench": ("drl_tune.bench.data",),
    "drl_tune.methods.reference": ("drl_tune.methods.docs_reference",),
    "drl_tune.analysis.report": ("drl_tune.analysis.html_report",),
    "drl_tune.analysis.front": ("drl_tune.analysis.front_plot",),
}
# modules that still exist but held names that moved on: the space file's distributions were defined in
# study/spaces.py before study/params.py existed (a2869b9)
FALLBACKS: dict[str, tuple[str, ...]] = {"drl_tune.study.spaces": ("drl_tune.study.params",)}
# ``drl_tune.study`` was one module before it became the package; its top-level names now live here
OLD_STUDY_MODULE = ("drl_tune.study.tune", "drl_tune.study.tables", "drl_tune.study.plan", "drl_tune.study.params",
                    "drl_tune.study.spaces", "drl_tune.study.trainable")
# (its ctrl_c_watch, never in a pickle, was retired on 2026-12-07: drl_tune.study.stop.fit_watch took SIGTERM too)
OLD_STUDY_NAMES = frozenset({
    "DefineByRun", "make_searcher", "make_scheduler", "REUSE_ACTORS", "make_trainable", "trial_name", "make_tuner",
    "finished_trials", "ProgressTable", "Plan", "Param", "SchedulerSpec", "train_trial"})


def find(modules: tuple[str, ...], name: str, old: str) -> Any:
    """``name`` from the first of ``modules`` that has it."""
    for module in modules:
        found = importlib.import_module(module)
        if hasattr(found, name):
            return getattr(found, name)
    raise AttributeError(f"module {old!r} (an old name) has no attribute {name!r}")


def _fallback(targets: tuple[str, ...], old: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that reads a name the module ``old`` no longer holds from ``targets``."""
    return lambda attr: find(targets, attr, old)


class _OldModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as a module whose attributes are read from where they live now (Python has no
    alias mechanism for module names, only finders). A package that still exists (``drl_tune.study``) is left to
    Python; :func:`install` gives it its old names."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        where = _parent_path(name)
        if where and importlib.machinery.PathFinder.find_spec(name, where) is not None:
            return None  # a module of that name exists (again): Python imports it
        return importlib.machinery.ModuleSpec(name, self, is_package=name == "drl_tune.core")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"old name of {', '.join(MOVED[spec.name]) or 'a moved package'}")
        module.__getattr__ = lambda name: find(MOVED[spec.name], name, spec.name)  # type: ignore[method-assign]
        if spec.name == "drl_tune.core":
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the names are read from their modules when asked for."""


def _parent_path(name: str) -> list[str] | None:
    parent = name.rpartition(".")[0]
    return list(getattr(sys.modules.get(parent) or importlib.import_module(parent), "__path__", []) or []) or None


def _old_study_name(name: str) -> Any:
    if name in OLD_STUDY_NAMES:
        return find(OLD_STUDY_MODULE, name, "drl_tune.study")
    raise AttributeError(f"module 'drl_tune.study' has no attribute {name!r}")


def install() -> None:
    """Make every old name importable (idempotent). Module-level ``__getattr__`` (PEP 562) gives a module that still
    exists the names it used to hold."""
    if not any(isinstance(f, _OldModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldModules())  # before any other finder: a stale copy must not answer
    # a module's __getattr__ is assigned, not defined (PEP 562); mypy sees ModuleType's method
    importlib.import_module("drl_tune.study").__getattr__ = _old_study_name  # type: ignore[method-assign]
    for name, targets in FALLBACKS.items():
        importlib.import_module(name).__getattr__ = _fallback(targets, name)  # type: ignore[method-assign]
