"""Search-space files (``search_spaces/*.yaml``): loading, validation, and the values a run starts from.

A space file has these top-level blocks (all optional but ``dataset``):

* ``dataset``: the ``data.*`` keys (``name``, ``root``, ``augment``, ``synthetic.*``, ``avdigits.*``);
* ``fixed``: config values every trial uses;
* ``defaults``: the paper's setting of the searched keys — what ``drl_tune.train`` runs and what a study
  evaluates first;
* ``search``: config key -> distribution (``choice``, ``uniform``, ``loguniform``, ``int`` with optional
  ``step``). A key inside a method's block (``drl.lam``, named like the method's registry entry) is
  *conditional*: sampled only in trials whose ``method`` is that method;
* ``scheduler``: ASHA early stopping (``type``, ``metric``, ``grace_period``, ``reduction_factor``);
* ``study``: ``metric``, ``mode``, ``num_samples``, ``max_concurrent``, ``seed``, ``keep_checkpoints``,
  ``max_failures``, ``overrides`` (config values for the study only, e.g. fewer epochs on a CPU),
  ``confirm: {top_k, seeds}`` (the confirmation stage after the search; ``seeds: 0`` skips it),
  ``equal_trials_per_method`` (default: on whenever ``method`` is searched — every method gets the same number
  of trials; ``false`` opts out) and ``searcher`` (``tpe`` or ``random``);
* ``resources``: ``cpus_per_trial`` and ``gpus_per_trial`` (used only when the cluster has GPUs);
* ``protocol``: the data protocol every method of the space trains under, one entry per choice (which split
  trains, which frames, augmentation) -> where it comes from (the official file and line). An entry named like a
  config key the space sets (``data.augment``) is that key's protocol value: the plan prints each entry and marks
  a ``--set`` that departs from it.

Every error names the file, the key and what is allowed, before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from drl_tune.ground.domains import DOMAIN, bounded, check
from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.study.params import (
    DISTRIBUTIONS,
    Choice,
    Param,
    SpaceError,
)
from drl_tune.training.config import TrainConfig, canonical_keys, make_config

TOP_LEVEL = ("name", "description", "dataset", "fixed", "defaults", "search", "scheduler", "study", "resources",
             "protocol")
# ASHA compares trials at rungs on this metric. It must be a running best: DRL's re-initialisation dips
# val/acc for an epoch or two, and a per-epoch metric would let ASHA stop a DRL trial in that dip.
SCHEDULER_METRICS = ("val/acc_best",)
SEARCHERS = ("tpe", "random", "nsga2")  # Optuna's TPESampler (multivariate), RandomSampler, NSGAIISampler; seeded
# what a search may optimise: validation and training figures only — a test figure is reported, never selected on
STUDY_METRICS = {"val/acc_best": "max", "val/acc": "max", "val/macro_f1": "max", "balance/gap": "min",
                 "train/loss": "min"}
# the objectives of a multi-objective search (study.objectives / --objectives), each read at the trial's
# best-validation epoch, the epoch whose accuracy is val/acc_best: name -> (the trainable's result key, mode it
# usually has). val/acc_weak is the probe accuracy of study.weak_modality; val/acc_<m> that of modality m.
OBJECTIVES = {"val/acc_best": ("val/acc_best", "max"), "balance/gap": ("at_best_val/balance_gap", "min"),
              "val/acc_weak": ("at_best_val/acc_{weak}", "max")}


@dataclass
class SchedulerSpec:
    """ASHA on a running-best validation metric, one report per epoch (``time_attr`` = epochs)."""

    type: str = "asha"
    metric: str = "val/acc_best"
    grace_period: int = bounded(3, ge=1)
    reduction_factor: float = bounded(2.0, gt=1)
    max_t: int | None = bounded(None, ge=1)  # None: the trial's epochs


@dataclass
class ConfirmSpec:
    """The confirmation stage: the ``top_k`` best configurations of each method re-trained with ``seeds``
    fresh seeds (0 skips it). Five seeds by default: at three, a paired 95% interval is 4.3 standard errors
    wide (t(0.975, 2) = 4.30), at five 2.8."""

    top_k: int = bounded(1, ge=1)
    seeds: int = bounded(5, ge=0)  # 0 skips the confirmation


@dataclass
class StudySpec:
    metric: str = "val/acc_best"
    mode: str = "max"
    num_samples: int = bounded(16, ge=1)
    max_concurrent: int = bounded(2, ge=1)
    seed: int = bounded(0, ge=0, le=2**32 - 1)  # Optuna's samplers take a 32-bit seed
    keep_checkpoints: int = bounded(2, ge=1)
    max_failures: int = bounded(1, ge=0)
    # every method of search.method gets the same number of trials (round robin over trial numbers, each
    # method's official setting first) instead of the sampler choosing the method: a comparison's fairness.
    # None (the default) = on whenever search.method is a choice of two or more methods; false opts out
    equal_trials_per_method: bool | None = None
    # the Optuna sampler: tpe (adaptive, the default), random (i.i.d. draws: the budget curve is then exact) or
    # nsga2 (Optuna's NSGA-II, multi-objective studies)
    searcher: str = "tpe"
    # a multi-objective search: [{metric: val/acc_best, mode: max}, {metric: balance/gap, mode: min}] (OBJECTIVES);
    # empty: the single objective metric/mode
    objectives: list = field(default_factory=list)
    weak_modality: str = ""  # the modality val/acc_weak names (the weaker one under joint training, for the study)
    overrides: dict[str, Any] = field(default_factory=dict)
    confirm: dict[str, Any] = field(default_factory=dict)  # parsed into Space.confirm (a ConfirmSpec)


@dataclass
class ResourcesSpec:
    cpus_per_trial: float = bounded(1.0, gt=0)  # Ray cannot place a trial that asks for nothing
    gpus_per_trial: float = bounded(1.0, ge=0, gpu_share=True)  # per trial *when the cluster has GPUs*; CPU-only: 0


@dataclass
class Space:
    name: str
    path: Path
    dataset: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Param] = field(default_factory=dict)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    study: StudySpec = field(default_factory=StudySpec)
    confirm: ConfirmSpec = field(default_factory=ConfirmSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    protocol: dict[str, str] = field(default_factory=dict)  # data choice -> its source (official file and line)

    def base_values(self) -> dict[str, Any]:
        """Flat config values: dataset block, then fixed values, then the defaults of searched keys."""
        values = {f"data.{k}": v for k, v in self.dataset.items()}
        values.update(self.fixed)
        values.update(self.defaults)
        return values

    def config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The run configuration of this space's defaults, with ``overrides`` (``--set``) on top."""
        values = self.base_values()
        values.update(overrides or {})
        try:
            return make_config(values)
        except SpaceError:
            raise
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None

    def study_values(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Flat values of a study trial before sampling: base values, ``study.overrides``, then ``--set``."""
        values = self.base_values()
        values.update(self.study.overrides)
        values.update(overrides or {})
        return values

    @property
    def equal_budgets(self) -> bool:
        """Whether the methods of ``search.method`` take turns (the same number of trials each): the space's
        ``study.equal_trials_per_method``, by default on whenever two or more methods are searched."""
        method = self.search.get("method")
        searched = isinstance(method, Choice) and len(method.values) >= 2
        flag = self.study.equal_trials_per_method
        return searched if flag is None else bool(flag)

    def active_search(self, overrides: dict[str, Any] | None = None) -> dict[str, Param]:
        """The searched keys left once ``--set`` fixed some: a fixed key is no longer searched, and fixing
        ``method`` drops the other methods' conditional keys."""
        overrides = overrides or {}
        method = overrides.get("method")
        return {
            k: p for k, p in self.search.items()
            if k not in overrides and (method is None or p.method is None or p.method == method)
        }


def with_methods(space: Space, methods: list[str]) -> Space:
    """``space`` comparing only ``methods`` (a benchmark's ``--methods``): ``search.method`` becomes that choice, the
    other methods' conditional keys are dropped, and ``study.num_samples`` keeps the space's trials per method. A
    method the space does not search (a user's own) runs its ``Params`` defaults with the shared keys searched."""
    from drl_tune.methods import REGISTRY

    current = space.search.get("method")
    if not isinstance(current, Choice):
        raise SpaceError(f"{space.path}: space {space.name!r} searches no method, so --methods cannot choose them; use "
                         f"a comparison space (e.g. demo_compare)")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise SpaceError(f"--methods: {unknown[0]!r} is not a registered method (registered: {', '.join(REGISTRY)}; "
                         f"your own file goes with --methods-from FILE)")
    if len(set(methods)) != len(methods) or len(methods) < 2:
        raise SpaceError(f"--methods needs two or more different methods, got {', '.join(methods)}")
    per_method = max(1, space.study.num_samples // len(current.values))
    search = {k: p for k, p in space.search.items() if k != "method" and (p.method is None or p.method in methods)}
    search = {"method": Choice("method", values=tuple(methods)), **search}
    defaults = dict(space.defaults)
    if defaults.get("method") not in methods:
        defaults["method"] = methods[0]
    study = dataclasses.replace(space.study, num_samples=per_method * len(methods))
    return dataclasses.replace(space, search=search, defaults=defaults, study=study)


def search_dirs() -> list[Path]:
    """Where ``--space NAME`` is looked up: $DRL_TUNE_SPACES, ./search_spaces, the checkout's search_spaces."""
    dirs = [Path(p) for p in os.environ.get("DRL_TUNE_SPACES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "search_spaces", Path(__file__).resolve().parents[2] / "search_spaces"]
    return dirs


def resolve_space_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise SpaceError(f"search space file {candidate} does not exist")
    for folder in search_dirs():
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise SpaceError(
        f"no search space named {name_or_path!r}; known: {', '.join(known) or 'none'} "
        f"(looked in {', '.join(str(d) for d in search_dirs())}); or pass a path to a .yaml file"
    )


def _block(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{path}: '{key}' must be a mapping of keys to values, got {type(value).__name__}")
    return value


def _param(key: str, spec: Any, where: str, methods: set[str]) -> Param:
    """Parse one ``search`` entry (a mapping with ``type``) into its distribution."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(
            f"{where}: expected a mapping with 'type' ({', '.join(DISTRIBUTIONS)}), e.g. "
            f"{{type: loguniform, low: 0.001, high: 0.1}} or {{type: choice, values: [a, b]}}; got {spec!r}"
        )
    cls = DISTRIBUTIONS.get(spec["type"]) if isinstance(spec["type"], str) else None
    if cls is None:
        raise SpaceError(f"{where}: unknown distribution type {spec['type']!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    extra = sorted(set(spec) - cls.fields_allowed)
    if extra:
        raise SpaceError(f"{where}: unknown field {extra[0]!r} for type {cls.kind}; allowed: "
                         f"{', '.join(sorted(cls.fields_allowed))}")
    head = key.split(".")[0]
    return cls.parse(key, spec, where, method=head if head in methods and "." in key else None)


def _typed(cls: type, raw: dict[str, Any], block: str, path: Path) -> Any:
    """Build one of the small spec dataclasses, each value checked against the field's declared type (YAML
    gives real types, so ``"3"`` for an integer is an error, not a conversion); the message names file and key."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise SpaceError(f"{path}: unknown key '{block}.{unknown[0]}'; allowed: {', '.join(hints)}")
    domains = {f.name: f.metadata.get(DOMAIN) for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        values[key] = _typed_value(value, hints[key], f"{path}: '{block}.{key}'")
        try:  # finite, and inside the domain the field declares (the same check as --set and the flags)
            check(values[key], domains[key], f"'{block}.{key}'")
        except ConfigError as err:
            raise SpaceError(f"{path}: {err}") from None
    return cls(**values)


def _typed_value(value: Any, typ: Any, where: str) -> Any:
    options = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)
    if value is None and type(None) in options:
        return None
    typ = next(t for t in options if t is not type(None))
    if (typing.get_origin(typ) or typ) is list:
        if not isinstance(value, list):
            raise SpaceError(f"{where} must be a list, got {value!r}")
    elif (typing.get_origin(typ) or typ) is dict:
        if not isinstance(value, dict):
            raise SpaceError(f"{where} must be a mapping of config keys to values")
    elif typ is str:
        if not isinstance(value, str):
            raise SpaceError(f"{where} must be a string, got {value!r}")
    elif typ is bool:
        if not isinstance(value, bool):
            raise SpaceError(f"{where} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpaceError(f"{where} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError(f"{where} must be a number, got {value!r}")
        return float(value)
    return value


def _protocol(raw: dict[str, Any], path: Path) -> dict[str, str]:
    """The ``protocol`` block: each entry a sentence saying where that data choice comes from. An entry named like a
    config key (it has a dot) must be a key the space sets in ``dataset``/``fixed``/``defaults``, so the plan can
    compare it with the value a study runs."""
    block = _block(raw, "protocol", path)
    base = {f"data.{k}" for k in _block(raw, "dataset", path)} | set(_block(raw, "fixed", path)) \
        | set(_block(raw, "defaults", path))
    for key, text in block.items():
        if not isinstance(text, str) or not text.strip():
            raise SpaceError(f"{path}: 'protocol.{key}' must be a sentence saying where that choice comes from")
        if "." in str(key) and key not in base:
            raise SpaceError(f"{path}: 'protocol.{key}' names a config key the space does not set; set it in "
                             f"'dataset', 'fixed' or 'defaults', or name the entry without a dot")
    return {str(k): str(v).strip() for k, v in block.items()}


def _check_study(space: Space) -> None:
    path, st, sc = space.path, space.study, space.scheduler
    if st.metric not in STUDY_METRICS:
        raise SpaceError(f"{path}: 'study.metric' {st.metric!r} is not allowed; one of: {', '.join(STUDY_METRICS)}")
    if st.mode not in ("min", "max"):
        raise SpaceError(f"{path}: 'study.mode' must be 'min' or 'max', got {st.mode!r}")
    parse_objectives(st.objectives, st.weak_modality, f"{path}: 'study.objectives'")
    if st.searcher not in SEARCHERS:
        raise SpaceError(f"{path}: 'study.searcher' must be one of {', '.join(SEARCHERS)}, got {st.searcher!r}")
    method = space.search.get("method")
    if st.equal_trials_per_method and (not isinstance(method, Choice) or len(method.values) < 2):
        raise SpaceError(f"{path}: 'study.equal_trials_per_method' needs 'search.method' to be a choice of at "
                         f"least two methods")
    if space.equal_budgets and st.num_samples % len(cast(Choice, method).values):  # a Choice (checked above)
        raise SpaceError(f"{path}: 'study.num_samples' ({st.num_samples}) must be a multiple of the "
                         f"{len(cast(Choice, method).values)} searched methods, so each gets the same number of trials "
                         f"(or opt out with 'study.equal_trials_per_method: false')")
    if sc.type not in ("asha", "none"):
        raise SpaceError(f"{path}: 'scheduler.type' must be 'asha' or 'none', got {sc.type!r}")
    if sc.metric not in SCHEDULER_METRICS:
        raise SpaceError(
            f"{path}: 'scheduler.metric' {sc.metric!r} is not allowed; use one of {', '.join(SCHEDULER_METRICS)} "
            f"(a running best: a per-epoch metric would let ASHA stop DRL trials in the dip after a re-init)"
        )


@dataclass(frozen=True)
class Objective:
    """One objective of a multi-objective search: its name (``balance/gap``), direction, the trainable's result key
    the searcher reads (``at_best_val/balance_gap``: the value at the best-validation epoch) and the key of the
    same value in a trial's summary (``balance/gap``, read at that epoch by the confirmation and the analysis)."""

    metric: str
    mode: str
    key: str
    summary: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def parse_objectives(raw: Any, weak_modality: str, where: str) -> list[Objective]:
    """``[{metric, mode}, ...]`` (space file) or ``["metric:mode", ...]`` (``--objectives``) -> objectives; empty: a
    single-objective study. Every error names the entry and what is allowed."""
    if not raw:
        return []
    if not isinstance(raw, list):
        raise SpaceError(f"{where} must be a list of {{metric, mode}} entries")
    allowed = ", ".join([*OBJECTIVES, "val/acc_<modality>"])
    out = []
    for entry in raw:
        if isinstance(entry, str):
            metric, _, mode = entry.partition(":")
            entry = {"metric": metric.strip(), **({"mode": mode.strip()} if mode else {})}
        if not isinstance(entry, dict) or set(entry) - {"metric", "mode"} or "metric" not in entry:
            raise SpaceError(f"{where}: each objective is {{metric: NAME, mode: max|min}}, got {entry!r}")
        metric = str(entry["metric"])
        if metric in OBJECTIVES:
            key, default_mode = OBJECTIVES[metric]
        elif metric.startswith("val/acc_") and metric.count("/") == 1:
            key, default_mode = f"at_best_val/acc_{metric.removeprefix('val/acc_')}", "max"
        else:
            raise SpaceError(f"{where}: {metric!r} is not an objective; one of {allowed} (validation figures only: "
                             f"a test figure is never selected on)")
        if metric == "val/acc_weak":
            if not weak_modality:
                raise SpaceError(f"{where}: val/acc_weak needs 'study.weak_modality' (the modality with the lower "
                                 f"probe accuracy under joint training, e.g. visual for the demo data)")
            key = key.format(weak=weak_modality)
        summary = {"val/acc_best": "val/acc_best", "balance/gap": "balance/gap"}.get(metric) or \
            f"val/acc_{key.removeprefix('at_best_val/acc_')}"
        mode = str(entry.get("mode", default_mode))
        if mode not in ("min", "max"):
            raise SpaceError(f"{where}: mode of {metric!r} must be min or max, got {mode!r}")
        out.append(Objective(metric, mode, key, summary))
    if len({o.key for o in out}) != len(out):
        raise SpaceError(f"{where}: an objective is listed twice")
    if len(out) == 1:
        raise SpaceError(f"{where}: one objective is a single-objective study; use study.metric/study.mode, or list "
                         f"two or more")
    if out[0].metric != "val/acc_best":
        raise SpaceError(f"{where}: the first objective must be val/acc_best (ASHA stops trials on it, and the "
                         f"confirmation's reference is chosen on it)")
    return out


def _check_search(space: Space) -> None:
    """Every searched value must give a valid config, and the official setting must lie inside the space."""
    base = space.study_values()
    method_param = space.search.get("method")
    if method_param is not None:
        if not isinstance(method_param, Choice):
            raise SpaceError(f"{space.path}: 'search.method' must be a choice of methods: {', '.join(REGISTRY)}")
        for value in method_param.values:
            if value not in REGISTRY:
                raise SpaceError(
                    f"{space.path}: 'search.method': unknown method {value!r}; registered: {', '.join(REGISTRY)}"
                )
    methods = set(method_param.values) if isinstance(method_param, Choice) else {make_config(base).method}
    for key, param in space.search.items():
        where = f"{space.path}: 'search.{key}'"
        if param.method is not None and param.method not in methods:
            raise SpaceError(f"{where} belongs to method {param.method!r}, which this space never runs "
                             f"(method: {', '.join(sorted(methods))})")
        typed = []
        for value in param.samples():
            values = dict(base)
            if param.method is not None:
                values["method"] = param.method
            values[key] = value
            try:
                flat = make_config(values).to_flat()
            except ConfigError as err:
                raise SpaceError(f"{where}: {err}") from None
            if key not in flat:
                raise SpaceError(f"{where}: {key!r} is a block, not a config value")
            typed.append(flat[key])
        if isinstance(param, Choice):  # typed by the config ("1e-3" from YAML becomes 0.001)
            space.search[key] = dataclasses.replace(param, values=tuple(typed))
    # the study's first trial(s): defaults + study.overrides. A space that asks for equal trials per method itself
    # (a comparison space) promises each method's official setting as that method's first trial: all must lie
    # inside; otherwise another method's key outside its range is left to the sampler (plan.official_points)
    firsts = sorted(methods) if space.study.equal_trials_per_method else [make_config(base).method]
    for first in firsts:
        official = make_config({**base, "method": first}).to_flat()
        for key, param in space.search.items():
            if key == "method" or (param.method is not None and param.method != official["method"]):
                continue
            if key not in official:
                raise SpaceError(f"{space.path}: 'search.{key}' is not a config key")
            if not param.contains(official[key]):
                raise SpaceError(
                    f"{space.path}: the official setting {key}={official[key]!r} ('defaults'/'study.overrides', or "
                    f"the built-in default) lies outside 'search.{key}' ({param.describe()}); widen the range or "
                    f"change 'defaults'"
                )
    if "method" in space.search and not space.search["method"].contains(make_config(base).method):
        raise SpaceError(f"{space.path}: the official setting method={make_config(base).method!r} lies outside "
                         f"'search.method' ({space.search['method'].describe()})")


def load_space(name_or_path: str) -> Space:
    """Load and check a space file: YAML syntax, blocks, distributions, and that every value is a valid config."""
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise SpaceError(f"{path}: not valid YAML{where}: {what}" + (f" ({context})" if context else "")
                         + "; fix the file (brackets and quotes closed, 'key: value' pairs)") from None
    except OSError as err:
        raise SpaceError(f"{path}: cannot read: {err}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with blocks {', '.join(TOP_LEVEL)}")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL)}")
    if "dataset" not in raw:
        raise SpaceError(f"{path}: missing the 'dataset' block (e.g. dataset: {{name: synthetic}})")
    try:  # a renamed key (drl.lam -> drl.lam) is read under its new name, with a notice
        raw = {block: canonical_keys(value) if block in ("fixed", "defaults", "search", "protocol")
               and isinstance(value, dict) else value for block, value in raw.items()}
        if isinstance(raw.get("study"), dict) and isinstance(raw["study"].get("overrides"), dict):
            raw["study"] = {**raw["study"], "overrides": canonical_keys(raw["study"]["overrides"])}
    except ConfigError as err:
        raise SpaceError(f"{path}: {err}") from None
    search = {
        str(key): _param(str(key), spec, f"{path}: 'search.{key}'", set(REGISTRY))
        for key, spec in _block(raw, "search", path).items()
    }
    study = _typed(StudySpec, _block(raw, "study", path), "study", path)
    space = Space(
        name=str(raw.get("name") or path.stem),
        path=path,
        dataset=_block(raw, "dataset", path),
        fixed=_block(raw, "fixed", path),
        defaults=_block(raw, "defaults", path),
        search=search,
        scheduler=_typed(SchedulerSpec, _block(raw, "scheduler", path), "scheduler", path),
        study=study,
        confirm=_typed(ConfirmSpec, study.confirm, "study.confirm", path),
        resources=_typed(ResourcesSpec, _block(raw, "resources", path), "resources", path),
        protocol=_protocol(raw, path),
    )
    try:  # fail now, naming the file, if fixed/defaults are not a valid configuration
        space.config()
    except SpaceError:
        raise
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    try:
        make_config(space.study_values())
    except ConfigError as err:
        raise SpaceError(f"{path}: 'study.overrides': {err}") from None
    _check_study(space)
    _check_search(space)
    return space
