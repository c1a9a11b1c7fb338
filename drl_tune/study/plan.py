"""A space file and the command line -> the resolved study plan, saved as JSON in the study folder.

Everything here runs before Ray starts (and imports none of it), so a bad space file or ``--set`` value stops
with one message before anything is written, and readers of a study folder (``drl_tune.analysis``,
``drl_tune.confirm``) can read its plan without Tune. The plan file's format is ``drl_tune.study/1``: the
typed objects of the plan (search distributions, scheduler) are turned into JSON and back only here.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drl_tune.data import GENERATED
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.io import atomic_write_text
from drl_tune.ground.readable import settings
from drl_tune.methods import REGISTRY
from drl_tune.study.spaces import Param, SchedulerSpec, Space, parse_objectives
from drl_tune.training.config import canonical_key, make_config

PLAN_FILE = "drl_tune_study.json"
# how the plan names its sampler; the budget curve (drl_tune.analysis.budget) says the same on its figure
SEARCHER_TEXT = {"tpe": "Optuna TPE (adaptive), seed {seed}",
                 "random": "Optuna random sampling (i.i.d. draws), seed {seed}",
                 "nsga2": "Optuna NSGA-II (adaptive), seed {seed}"}
PLAN_FORMAT = "drl_tune.study/1"
# fixed keys the plan always lists, default or not (Plan.fixed_keys): what a reader of any study wants to see
CORE_KEYS = frozenset({"method", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "fusion",
                       "data.name", "seed", "device"})
FEATURE_KEYS = ("model.feature_", "model.sequence_encoder")
DEFAULT_STORAGE = Path("runs") / "studies"


def default_tracking_uri(study_dir: Path) -> str:
    """An absolute sqlite URI inside the study folder (absolute: Tune changes each trial's working dir)."""
    return f"sqlite:///{study_dir.resolve() / 'mlflow.db'}"


def _same_folder(a: Path, b: Path) -> bool:
    return a == b or a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it (as written, or with links resolved), else None."""
    for p, f in ((path, folder), (path.resolve(), folder.resolve())):
        if p.is_relative_to(f):
            return p.relative_to(f)
    return None


def reroot_sqlite_uri(uri: str, recorded: Path, here: Path) -> str:
    """A ``sqlite:///`` URI whose database lies inside the ``recorded`` study folder, pointed at the same file inside
    ``here``; any other URI (a server, a database outside the study folder) unchanged."""
    if not uri.startswith("sqlite:///"):
        return uri
    inner = _inside(Path(uri.removeprefix("sqlite:///")), recorded)
    return uri if inner is None else f"sqlite:///{here / inner}"


@dataclass
class Plan:
    """Everything a study run needs, resolved from the space file, ``study.overrides``, ``--set`` and flags.
    Saved as JSON in the study folder so ``--resume`` continues with exactly the same plan."""

    space_name: str
    space_path: str
    name: str
    storage: str
    constants: dict[str, Any]
    search: list[Param]
    points_to_evaluate: list[dict[str, Any]]
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    seed: int
    scheduler: SchedulerSpec
    cpus_per_trial: float
    gpus_per_trial: float
    gpus_explicit: bool
    keep_checkpoints: int
    max_failures: int
    mlflow_uri: str
    overrides: dict[str, Any] = field(default_factory=dict)
    confirm_top_k: int = 1
    confirm_seeds: int = 0  # 0: no confirmation stage (also what plans saved before the stage existed mean)
    balanced_methods: list[str] = field(default_factory=list)  # round robin over these (equal trials each)
    searcher: str = "tpe"  # Optuna sampler: tpe | random | nsga2 (plans written before the choice existed: tpe)
    # a multi-objective search: Objective.to_dict() entries (metric, mode, key, summary); empty: single objective
    objectives: list[dict[str, str]] = field(default_factory=list)
    # methods from the user's files (--methods-from): [{"origin", "source", "sha256"}], registered by every trial
    methods: list[dict[str, str]] = field(default_factory=list)
    # the space's data protocol: [{"key", "source", and for a config key "value": the protocol's value}]
    protocol: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str = ""
    experiment_id: str = ""
    format: str = PLAN_FORMAT  # marks the file as this tool's plan (``--resume`` refuses anything else)
    # the absolute study folder when this file was last written: how a reader tells that the folder has since been
    # moved, copied or renamed (plans written before it: ``storage/name``). Never used to find the folder.
    folder: str = ""

    def __post_init__(self) -> None:
        self._folder: Path | None = None  # the folder this plan was read from (Plan.read): where the study *is*
        self.moved_from: Path | None = None  # the folder it was recorded in, when that is another one
        self.rerooted: str | None = None  # what drl_tune.study.folder.open_study re-rooted, in one line

    @property
    def study_dir(self) -> Path:
        """The study folder. A plan read from a folder lives there, whatever its ``name`` says: the name is a label
        (MLflow experiment, Optuna study), never a path — a copied or renamed folder keeps its original's name."""
        if self._folder is not None:
            return self._folder
        return Path(self.storage) / self.name

    def to_json(self) -> str:
        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        raw["folder"] = str(self.study_dir.resolve())
        raw |= {"search": [p.to_dict() for p in self.search], "scheduler": dataclasses.asdict(self.scheduler)}
        return json.dumps(raw, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, where: str = PLAN_FILE) -> Plan:
        """Parse and check a plan file: ``--resume`` must never act on a folder this tool did not write."""
        def refuse(why: str) -> ConfigError:
            return ConfigError(f"{where} is not a drl_tune study plan ({why}); only studies that python -m "
                               f"drl_tune.run started can be resumed or confirmed — check --storage and --name")
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise refuse(f"not JSON: {err}") from None
        if not isinstance(raw, dict):
            raise refuse(f"a JSON {type(raw).__name__}, not an object")
        if raw.get("format", PLAN_FORMAT) != PLAN_FORMAT:  # plans written before the marker have all the keys
            raise refuse(f"format {raw.get('format')!r}, this drl_tune writes {PLAN_FORMAT!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in raw]
        unknown = [n for n in raw if n not in fields]
        if missing or unknown:
            raise refuse(f"missing {', '.join(missing)}" if missing else f"unknown key {unknown[0]!r}")
        expected = {"name": str, "storage": str, "constants": dict, "search": list, "num_samples": int,
                    "mlflow_uri": str, "scheduler": dict}
        wrong = [n for n, kind in expected.items() if not isinstance(raw[n], kind)]
        if wrong:
            raise refuse(f"{wrong[0]!r} should be a {expected[wrong[0]].__name__}")
        try:
            search = [Param.from_dict(p) for p in raw["search"]]
            scheduler = SchedulerSpec(**raw["scheduler"])
        except (KeyError, TypeError, AttributeError) as err:
            raise refuse(f"a malformed 'search' or 'scheduler' entry: {err!r}") from None
        return cls(**{**raw, "search": search, "scheduler": scheduler})

    @classmethod
    def read(cls, study_dir: Path) -> Plan:
        """The plan of the study folder ``study_dir`` (``--resume``, ``drl_tune.confirm``, the loaders), re-rooted
        to where the folder is now: a study folder may have been moved, copied or renamed. ``study_dir`` becomes
        the plan's folder and ``storage`` its parent; an MLflow sqlite URI inside the recorded folder (the
        default) points into this one — else a copy would write into its original's database. ``moved_from`` is
        the recorded folder when it differs (drl_tune/study/folder.py re-roots the rest)."""
        from drl_tune import compat

        compat.install()  # the folder's pickles may name modules of an earlier layout
        path = study_dir / PLAN_FILE
        if not path.is_file():
            raise ConfigError(f"no study {study_dir.name!r} in {study_dir.parent}: {study_dir} is not a study folder "
                              f"(no {PLAN_FILE}); pass the --name and --storage the study was run with")
        plan = cls.from_json(path.read_text(), where=str(path))
        here = study_dir.resolve()
        recorded = Path(plan.folder) if plan.folder else Path(plan.storage) / plan.name
        plan._folder, plan.storage, plan.folder = here, str(here.parent), str(here)
        if not _same_folder(recorded, here):
            plan.moved_from = recorded
            plan.mlflow_uri = reroot_sqlite_uri(plan.mlflow_uri, recorded, here)
        return plan

    def save(self) -> Path:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.study_dir / PLAN_FILE, self.to_json())

    def resume_args(self) -> str:
        """``--name FOLDER --storage PARENT`` of this study folder as it is now (the name it was run with is only a
        label: a copied or renamed folder is resumed by its own name)."""
        return f"--name {self.study_dir.name} --storage {self.study_dir.parent}"

    def describe(self, show_all: bool = False) -> str:
        """The human version of the plan (``--dry-run`` prints it). Its ``fixed:`` block lists the keys that matter
        (:meth:`fixed_keys`) and counts the rest; ``show_all`` lists every fixed key."""
        lines = [f"study {self.name!r}: space {self.space_name} ({self.space_path})",
                 f"  results: {self.study_dir}", f"  mlflow:  {self.mlflow_uri}",
                 f"  trials: {self.num_samples}, at most {self.max_concurrent} at a time; "
                 f"{self.cpus_per_trial:g} CPU + {self.gpus_per_trial:g} GPU per trial"
                 + ("" if self.gpus_explicit else " (GPU only if the cluster has GPUs)"),
                 ("  objectives: " + ", ".join(f"{o['mode']} {o['metric']}" for o in self.objectives)
                  + " (each at the trial's best-validation epoch); " if self.objectives
                  else f"  objective: {self.mode} {self.metric}; ")
                 + SEARCHER_TEXT[self.searcher].format(seed=self.seed).replace(
                     "), seed", ", multi-objective), seed" if self.objectives else "), seed")]
        sc = self.scheduler
        if sc.type == "asha":
            lines.append(f"  early stopping: ASHA on {sc.metric} (running best, immune to DRL's re-init dip), "
                         f"grace {sc.grace_period} epochs, reduction factor {sc.reduction_factor:g}, "
                         f"max {sc.max_t} epochs" + (" — on the first objective only: a trial good on the others "
                                                     "but not on it can be stopped" if self.objectives else ""))
        else:
            lines.append("  early stopping: none")
        lines.append(f"  checkpoints: every epoch, {self.keep_checkpoints} kept; "
                     f"a failed trial is retried {self.max_failures}x from its last checkpoint")
        if self.confirm_seeds and self.objectives:
            lines.append(f"  then confirmation: {self.confirm_top_k} configuration(s) of the searched Pareto front, "
                         f"spread along it, re-trained with {self.confirm_seeds} fresh seeds, full epochs")
        elif self.confirm_seeds:
            lines.append(f"  then confirmation: the top {self.confirm_top_k} configuration(s) of each method "
                         f"(on val/acc_best) re-trained with {self.confirm_seeds} fresh seeds, full epochs")
        else:
            lines.append("  confirmation: none (single-seed search results only)")
        lines += [f"  your method file: {m['origin']} (sha256 {m['sha256'][:12]}, its text recorded in the plan)"
                  for m in self.methods]
        lines += self.describe_protocol()
        lines.append("  searched:")
        lines += [f"    {p.key:<32} {p.describe()}" for p in self.search] or ["    (nothing: one configuration)"]
        method = next((p for p in self.search if p.key == "method"), None)
        shared = [p.key for p in self.search if p.method is None and p.key != "method"]
        if self.balanced_methods:
            lines.append(f"  equal budgets: {', '.join(self.balanced_methods)} in turn, "
                         f"{self.num_samples // len(self.balanced_methods)} search trials each "
                         f"(study.equal_trials_per_method)")
        elif method is not None:
            lines.append("  UNEQUAL budgets: the sampler draws the method, so methods may get different numbers of "
                         "trials (study.equal_trials_per_method: false)")
        if method is not None and shared:
            lines.append(f"  shared keys, one range for every method: {', '.join(shared)}")
        for name in self.balanced_methods:
            if not shared and not any(p.method == name for p in self.search):
                lines.append(f"  note: {name} has no searched key, so its "
                             f"{self.num_samples // len(self.balanced_methods)} trials all run its official setting")
        if self.balanced_methods:
            lines += [f"  first {m} trial (official setting): " + settings(point)
                      for m, point in zip(self.balanced_methods, self.points_to_evaluate, strict=True)]
        else:
            lines.append("  first trial (official setting): " + settings((self.points_to_evaluate or [{}])[0]))
            for point in self.points_to_evaluate[1:]:
                lines.append("  then the official setting of each other method: " + settings(point))
        lines.append("  fixed:")
        shown, hidden = self.fixed_keys(show_all)
        lines += [f"    {k:<32} {self.constants[k]}" for k in shown]
        if hidden:
            lines.append(f"    ({len(hidden)} more at their defaults: --dry-run -v or --show-all prints every key)")
        return "\n".join(lines)

    def study_methods(self) -> set[str]:
        """The methods this study trains: the searched ``method`` choice (or the equal-budget round robin), else the
        fixed ``method``."""
        searched = next((p for p in self.search if p.key == "method"), None)
        names = set(self.balanced_methods) | {str(m) for m in (searched.samples() if searched is not None else [])}
        return names or {str(self.constants.get("method", make_config({}).method))}

    def fixed_keys(self, show_all: bool = False) -> tuple[list[str], list[str]]:
        """The fixed keys the plan lists, and those it leaves out (sorted). Listed: a key away from its default
        (``make_config({})``), a key of a method this study trains, and the few a reader always wants
        (:data:`CORE_KEYS`), and what the dataset and device use (the feature encoders' keys for a manifest, the
        ``perf.*`` switches when GPUs are asked for); left out: the rest, all at their defaults — the ``perf.*``
        switches otherwise (they act only on a CUDA device), the feature encoders' sizes for a dataset without
        feature modalities, a generated dataset's knobs. ``show_all`` lists every key.
        A generated dataset's knobs (``data.synthetic.*``, ``data.avdigits.*``) are never listed when another
        dataset is read: they do not matter then."""
        dataset = self.constants.get("data.name")
        other = tuple(f"data.{name}." for name in sorted(GENERATED) if dataset and name != dataset)
        keys = sorted(k for k in self.constants if not k.startswith(other))
        if show_all:
            return keys, []
        defaults = make_config({}).to_flat()
        methods = self.study_methods()
        missing = object()  # a key no default has (a method not registered here, an old plan's key): shown

        # what the dataset and the device use: the feature encoders' keys where a manifest can hold feature
        # modalities (the built-in datasets have none), the GPU switches where GPUs are asked for
        used = (FEATURE_KEYS if dataset == "manifest" else ()) + (("perf.",) if self.gpus_explicit
                                                                  and self.gpus_per_trial > 0 else ())

        def matters(key: str) -> bool:
            default = defaults.get(canonical_key(key, notice=False), missing)
            return (key in CORE_KEYS or key.split(".")[0] in methods or key.startswith(used)
                    or self.constants[key] != default)

        return [k for k in keys if matters(k)], [k for k in keys if not matters(k)]


    def describe_protocol(self) -> list[str]:
        """The space's data protocol, each choice with its source; a config key set otherwise says so."""
        if not self.protocol:
            return []
        lines = ["  data protocol (every method alike; each choice with its source):"]
        searched = {p.key for p in self.search}
        for entry in self.protocol:
            key, source = entry["key"], entry["source"]
            if "value" not in entry:
                text = f"{key}: {source}"
            elif key in searched:
                text = f"{key}: SEARCHED, a departure from the protocol's {entry['value']}: {source}"
            elif self.constants.get(key) != entry["value"]:
                text = (f"{key} = {self.constants.get(key)}: CHANGED, a departure from the protocol's "
                        f"{entry['value']}: {source}")
            else:
                text = f"{key} = {entry['value']}: {source}"
            lines.append(textwrap.fill(text, width=118, initial_indent="    ", subsequent_indent="      ",
                                       break_on_hyphens=False))
        return lines


def protocol_entries(space: Space) -> list[dict[str, Any]]:
    """The plan's form of ``space.protocol``: a config key's entry carries the space's value of that key."""
    base = space.base_values()
    return [{"key": k, "source": text, **({"value": base[k]} if k in base else {})}
            for k, text in space.protocol.items()]


def official_point(space: Space, search: dict[str, Param], values: dict[str, Any]) -> dict[str, Any]:
    """The searched keys' values in the official configuration (only the keys active for its method)."""
    flat = make_config(values).to_flat()
    method = flat["method"]
    return {k: flat[k] for k, p in search.items() if p.method is None or p.method == method}


def official_points(space: Space, search: dict[str, Param], values: dict[str, Any]) -> list[dict[str, Any]]:
    """The first trials of a study: the official setting, then the same setting with each other searched
    method (its own keys at their official values where those lie inside the searched range, else sampled).

    So every method of the space runs at least once, however the sampler draws ``method`` — without it a short
    study can end with no joint-training trial, and then with no answer to "does DRL beat joint training?"."""
    first = official_point(space, search, values)
    points = [first]
    if "method" in search:
        for method in search["method"].samples():
            if method == first.get("method"):
                continue
            point = official_point(space, search, {**values, "method": method})
            points.append({k: v for k, v in point.items() if search[k].contains(v)})
    return points


def build_plan(space: Space, *, overrides: dict[str, Any], name: str, storage: Path, mlflow_uri: str | None,
               num_samples: int | None = None, max_concurrent: int | None = None, seed: int | None = None,
               cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
               confirm_seeds: int | None = None, confirm_top_k: int | None = None,
               searcher: str | None = None, objectives: list[str] | None = None) -> Plan:
    """Resolve a space and the command line into a :class:`Plan` (validates the configuration)."""
    search = space.active_search(overrides)
    values = space.study_values(overrides)
    config = make_config(values)  # every --set value typed and checked now
    flat = config.to_flat()
    cpus = float(cpus_per_trial if cpus_per_trial is not None else space.resources.cpus_per_trial)
    if flat["threads"] == 0:  # one torch thread per reserved CPU: concurrent trials must not oversubscribe
        flat["threads"] = max(1, int(cpus))
    # constants: everything not searched; a method block's keys only matter with that method
    methods = set(search["method"].samples()) if "method" in search else {flat["method"]}
    constants = {k: v for k, v in flat.items()
                 if k not in search and (k.split(".")[0] not in REGISTRY or k.split(".")[0] in methods)}
    points = official_points(space, search, {**values, "threads": flat["threads"]})
    balanced: list[str] = []
    if space.equal_budgets and "method" in search:
        # one official point per method, the space's own method first: trials 0..M-1 in this order, so the
        # round robin over trial numbers must use the same order
        balanced = [str(p["method"]) for p in points]
        n = int(num_samples or space.study.num_samples)
        if n % len(balanced):
            below, above = n - n % len(balanced), n - n % len(balanced) + len(balanced)
            use = f"{below} or {above}" if below else str(above)
            raise ConfigError(f"--num-samples {n} must be a multiple of the {len(balanced)} methods of space "
                              f"{space.name!r} ({', '.join(balanced)}), so each gets the same number of search "
                              f"trials: use {use}, or run one method with --set method=NAME")
    max_t = space.scheduler.max_t
    if max_t is None:
        max_t = int(max(search["epochs"].samples())) if "epochs" in search else int(flat["epochs"])
    storage = storage.resolve()
    plan = Plan(
        space_name=space.name, space_path=str(space.path.resolve()), name=name, storage=str(storage),
        constants=constants,
        search=list(search.values()),
        points_to_evaluate=points,
        metric=space.study.metric, mode=space.study.mode,
        num_samples=int(num_samples or space.study.num_samples),
        max_concurrent=int(max_concurrent or space.study.max_concurrent),
        seed=int(space.study.seed if seed is None else seed),
        scheduler=dataclasses.replace(space.scheduler, max_t=max_t),
        cpus_per_trial=cpus,
        gpus_per_trial=float(gpus_per_trial if gpus_per_trial is not None else space.resources.gpus_per_trial),
        gpus_explicit=gpus_per_trial is not None,
        keep_checkpoints=space.study.keep_checkpoints, max_failures=space.study.max_failures,
        mlflow_uri=mlflow_uri or default_tracking_uri(storage / name),
        overrides=dict(overrides),
        confirm_top_k=int(space.confirm.top_k if confirm_top_k is None else confirm_top_k),
        confirm_seeds=int(space.confirm.seeds if confirm_seeds is None else confirm_seeds),
        balanced_methods=balanced,
        searcher=str(searcher or space.study.searcher),
        objectives=[o.to_dict() for o in parse_objectives(
            objectives if objectives is not None else space.study.objectives, space.study.weak_modality,
            "--objectives" if objectives is not None else f"{space.path}: 'study.objectives'")],
        protocol=protocol_entries(space),
    )
    return plan
