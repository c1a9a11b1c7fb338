"""A space file -> a resolved study plan -> a Ray Tune ``Tuner`` (OptunaSearch, ASHA, MLflow, resume).

Search: Optuna TPE (seeded) with a define-by-run function, because DRL's parameters only exist when
``method=drl`` is drawn. The space's official setting is the first ``points_to_evaluate`` point, so every
study contains the paper's configuration.

Early stopping: ASHA over epochs (one ``tune.report`` per epoch). It compares trials on
``val/acc_best`` — the best validation accuracy so far — never on ``val/acc``: DRL's soft re-initialisation
drops ``val/acc`` for an epoch or two by design, and a rung that falls into that dip would stop the
trial for the very thing the method does. A running best cannot dip, so a re-initialised trial keeps the
standing it had earned before the re-init and is stopped only if it never got anywhere.
(``tests/test_study_asha.py`` proves both halves with the real scheduler.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from drl_tune.config import ConfigError, make_config
from drl_tune.io import atomic_write_text
from drl_tune.spaces import Param, SchedulerSpec, Space

PLAN_FILE = "drl_tune_study.json"
PLAN_FORMAT = "drl_tune.study/1"
# what the live table shows per trial (result key -> column title)
PROGRESS_COLUMNS = {"epoch": "epoch", "val/acc": "val acc", "val/acc_best": "best", "balance/gap": "gap"}


@dataclass
class Plan:
    """Everything a study run needs, resolved from the space file, ``study.overrides``, ``--set`` and flags.
    Saved as JSON in the study folder so ``--resume`` continues with exactly the same plan."""

    space_name: str
    space_path: str
    name: str
    storage: str
    constants: dict[str, Any]
    search: list[dict[str, Any]]
    points_to_evaluate: list[dict[str, Any]]
    metric: str
    mode: str
    num_samples: int
    max_concurrent: int
    seed: int
    scheduler: dict[str, Any]
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
    parent_run_id: str = ""
    experiment_id: str = ""
    format: str = PLAN_FORMAT  # marks the file as this tool's plan (``--resume`` refuses anything else)

    @property
    def study_dir(self) -> Path:
        return Path(self.storage) / self.name

    @property
    def params(self) -> list[Param]:
        return [Param(**{**p, "values": tuple(p.get("values", ()))}) for p in self.search]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, where: str = PLAN_FILE) -> Plan:
        """Parse and check a plan file: ``--resume`` must never act on a folder this tool did not write."""
        def refuse(why: str) -> ConfigError:
            return ConfigError(f"{where} is not a drl_tune study plan ({why}); --resume only continues studies "
                               f"that python -m drl_tune.run started — check --storage and --name")
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
        return cls(**raw)

    def save(self) -> Path:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.study_dir / PLAN_FILE, self.to_json())

    def describe(self) -> str:
        """The human version of the plan (``--dry-run`` prints it)."""
        lines = [f"study {self.name!r}: space {self.space_name} ({self.space_path})",
                 f"  results: {self.study_dir}", f"  mlflow:  {self.mlflow_uri}",
                 f"  trials: {self.num_samples}, at most {self.max_concurrent} at a time; "
                 f"{self.cpus_per_trial:g} CPU + {self.gpus_per_trial:g} GPU per trial"
                 + ("" if self.gpus_explicit else " (GPU only if the cluster has GPUs)"),
                 f"  objective: {self.mode} {self.metric}; Optuna TPE, seed {self.seed}"]
        sc = self.scheduler
        if sc["type"] == "asha":
            lines.append(f"  early stopping: ASHA on {sc['metric']} (running best, immune to DRL's re-init dip), "
                         f"grace {sc['grace_period']} epochs, reduction factor {sc['reduction_factor']:g}, "
                         f"max {sc['max_t']} epochs")
        else:
            lines.append("  early stopping: none")
        lines.append(f"  checkpoints: every epoch, {self.keep_checkpoints} kept; "
                     f"a failed trial is retried {self.max_failures}x from its last checkpoint")
        if self.confirm_seeds:
            lines.append(f"  then confirmation: the top {self.confirm_top_k} configuration(s) of each method "
                         f"(on val/acc_best) re-trained with {self.confirm_seeds} fresh seeds, full epochs")
        else:
            lines.append("  confirmation: none (single-seed search results only)")
        lines.append("  searched:")
        lines += [f"    {p.key:<32} {p.describe()}" for p in self.params] or ["    (nothing: one configuration)"]
        if self.balanced_methods:
            lines.append(f"  methods: {', '.join(self.balanced_methods)} in turn, "
                         f"{self.num_samples // len(self.balanced_methods)} trials each "
                         f"(study.equal_trials_per_method)")
            lines += [f"  first {m} trial (official setting): " + ", ".join(f"{k}={v}" for k, v in point.items())
                      for m, point in zip(self.balanced_methods, self.points_to_evaluate, strict=True)]
        else:
            lines.append("  first trial (official setting): "
                         + ", ".join(f"{k}={v}" for k, v in (self.points_to_evaluate or [{}])[0].items()))
            for point in self.points_to_evaluate[1:]:
                lines.append("  then the official setting of each other method: "
                             + ", ".join(f"{k}={v}" for k, v in point.items()))
        lines.append("  fixed:")
        lines += [f"    {k:<32} {v}" for k, v in sorted(self.constants.items())]
        return "\n".join(lines)


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
        for method in search["method"].values:
            if method == first.get("method"):
                continue
            point = official_point(space, search, {**values, "method": method})
            points.append({k: v for k, v in point.items() if search[k].contains(v)})
    return points


def build_plan(space: Space, *, overrides: dict[str, Any], name: str, storage: Path, mlflow_uri: str | None,
               num_samples: int | None = None, max_concurrent: int | None = None, seed: int | None = None,
               cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
               confirm_seeds: int | None = None, confirm_top_k: int | None = None) -> Plan:
    """Resolve a space and the command line into a :class:`Plan` (validates the configuration)."""
    from drl_tune.tracking import default_tracking_uri

    search = space.active_search(overrides)
    values = space.study_values(overrides)
    config = make_config(values)  # every --set value typed and checked now
    flat = config.to_flat()
    cpus = float(cpus_per_trial if cpus_per_trial is not None else space.resources.cpus_per_trial)
    if flat["threads"] == 0:  # one torch thread per reserved CPU: concurrent trials must not oversubscribe
        flat["threads"] = max(1, int(cpus))
    # constants: everything not searched; a method block's keys only matter with that method
    methods = {p for p in search["method"].values} if "method" in search else {flat["method"]}
    from drl_tune.methods import REGISTRY

    constants = {k: v for k, v in flat.items()
                 if k not in search and (k.split(".")[0] not in REGISTRY or k.split(".")[0] in methods)}
    points = official_points(space, search, {**values, "threads": flat["threads"]})
    balanced: list[str] = []
    if space.study.equal_trials_per_method and "method" in search:
        # one official point per method, the space's own method first: trials 0..M-1 in this order, so the
        # round robin over trial numbers must use the same order
        balanced = [str(p["method"]) for p in points]
        n = int(num_samples or space.study.num_samples)
        if n % len(balanced):
            raise ConfigError(f"--num-samples {n} must be a multiple of the {len(balanced)} methods of space "
                              f"{space.name!r} (study.equal_trials_per_method gives each the same number of trials)")
    max_t = space.scheduler.max_t
    if max_t is None:
        max_t = int(search["epochs"].high) if "epochs" in search else int(flat["epochs"])
    storage = storage.resolve()
    plan = Plan(
        space_name=space.name, space_path=str(space.path.resolve()), name=name, storage=str(storage),
        constants=constants,
        search=[{k: v for k, v in dataclasses.asdict(p).items()} for p in search.values()],
        points_to_evaluate=points,
        metric=space.study.metric, mode=space.study.mode,
        num_samples=int(num_samples or space.study.num_samples),
        max_concurrent=int(max_concurrent or space.study.max_concurrent),
        seed=int(space.study.seed if seed is None else seed),
        scheduler={**dataclasses.asdict(space.scheduler), "max_t": max_t},
        cpus_per_trial=cpus,
        gpus_per_trial=float(gpus_per_trial if gpus_per_trial is not None else space.resources.gpus_per_trial),
        gpus_explicit=gpus_per_trial is not None,
        keep_checkpoints=space.study.keep_checkpoints, max_failures=space.study.max_failures,
        mlflow_uri=mlflow_uri or default_tracking_uri(storage / name),
        overrides=dict(overrides),
        confirm_top_k=int(space.confirm.top_k if confirm_top_k is None else confirm_top_k),
        confirm_seeds=int(space.confirm.seeds if confirm_seeds is None else confirm_seeds),
        balanced_methods=balanced,
    )
    return plan


# ---------------------------------------------------------------------------------------------------------
# Tune objects


@dataclass
class DefineByRun:
    """Optuna define-by-run space: ``method`` first, then the keys of the method that was drawn.
    A class (not a closure) so Tune can pickle it into the experiment checkpoint for ``--resume``.

    With ``balanced`` methods the method is not drawn but assigned in turn by Optuna's trial number
    (trial n gets ``balanced[n % M]``), so every method gets the same number of trials; the enqueued
    official points (one per method, in the same order) are trials 0..M-1, so each method's official
    setting is its first trial. TPE still models each method's own keys."""

    params: list[Param]
    constants: dict[str, Any]
    balanced: tuple[str, ...] = ()

    def __call__(self, trial: Any) -> dict[str, Any]:
        method = self.constants.get("method")
        out = dict(self.constants)
        if self.balanced:
            method = self.balanced[trial.number % len(self.balanced)]
            out["method"] = method
        for param in self.params:
            if param.method is None and not (self.balanced and param.key == "method"):
                value = param.suggest(trial)
                if param.key == "method":
                    method = value
        for param in self.params:
            if param.method is not None and param.method == method:
                param.suggest(trial)
        return out


def make_searcher(plan: Plan) -> Any:
    import warnings

    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress table says what matters
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # multivariate+group TPE models the conditional (per-method) parameters jointly, as Optuna recommends
    sampler = optuna.samplers.TPESampler(seed=plan.seed, multivariate=True, group=True)
    space = DefineByRun(plan.params, plan.constants, tuple(plan.balanced_methods))
    search = OptunaSearch(space, metric=plan.metric, mode=plan.mode,
                          points_to_evaluate=plan.points_to_evaluate, sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=plan.max_concurrent)


def make_scheduler(spec: dict[str, Any]) -> Any:
    """ASHA on a running-best metric, one rung step per reported epoch (see the module docstring)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sc = SchedulerSpec(**spec)
    if sc.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=sc.metric, mode="max", max_t=sc.max_t,
                         grace_period=min(sc.grace_period, sc.max_t), reduction_factor=sc.reduction_factor)


def make_trainable(plan: Plan, gpus: float) -> Any:
    from ray import tune

    from drl_tune.trainable import train_trial

    return tune.with_resources(train_trial, {"cpu": plan.cpus_per_trial, "gpu": gpus})


def trial_name(trial: Any) -> str:
    """Short trial names/folders (``drl_1a2b3c4d``): Tune's default packs the whole config into the name."""
    return f"{trial.config.get('method', 'trial')}_{trial.trial_id}"


def make_tuner(plan: Plan, gpus: float, callbacks: list) -> Any:
    from ray import tune

    run_config = tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=callbacks,
        verbose=0,  # the ProgressTable callback prints the few columns that matter
    )
    tune_config = tune.TuneConfig(
        search_alg=make_searcher(plan),
        scheduler=make_scheduler(plan.scheduler),
        num_samples=plan.num_samples,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return tune.Tuner(make_trainable(plan, gpus), tune_config=tune_config, run_config=run_config)


# ---------------------------------------------------------------------------------------------------------
# output


def knob_columns(plan: Plan) -> list[str]:
    """Searched keys shown in the tables: the few that matter, short names."""
    return [p.key for p in plan.params if p.key != "method"][:4]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


class ProgressTable(Callback):
    """Tune callback printing a compact live table (method, key knobs, epoch, val acc, best, balance gap) at
    most every ``interval`` seconds, and one line whenever a trial ends. Picklable (Tune saves callbacks)."""

    def __init__(self, plan: Plan, interval: float = 15.0) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.interval = interval
        self.last_print = 0.0
        self.dirty = False
        self.knobs = knob_columns(plan)

    def _row(self, trial: Any) -> dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"status": "RUNNING", "config": dict(trial.config)})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "RUNNING"
        self.dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._row(trial)["result"] = result
        self.dirty = True

    def _end(self, trial: Any, status: str) -> None:
        row = self._row(trial)
        res = row.get("result", {})
        epochs_run = int(res.get("epoch", -1)) + 1
        if status == "TERMINATED" and epochs_run < int(trial.config.get("epochs", 0)):
            status = "STOPPED"
        row["status"] = status
        print(f"[{time.strftime('%H:%M:%S')}] trial {trial.trial_id} {status.lower()} "
              f"({trial.config.get('method')}) after {epochs_run} epochs, "
              f"best val acc {_fmt(res.get('val/acc_best'))}", flush=True)
        self.dirty = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "ERROR")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.dirty and time.monotonic() - self.last_print >= self.interval:
            self.print_table()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.dirty:
            self.print_table()

    def print_table(self) -> None:
        headers = ["trial", "status", "method", *self.knobs, "epoch", "val acc", "best", "gap"]
        rows = []
        for trial_id, row in self.rows.items():
            res, cfg = row.get("result", {}), row["config"]
            epoch = f"{int(res['epoch']) + 1}/{cfg.get('epochs', '?')}" if "epoch" in res else "-"
            rows.append([trial_id, row["status"], cfg.get("method"), *[cfg.get(k) for k in self.knobs],
                         epoch, res.get("val/acc"), res.get("val/acc_best"), res.get("balance/gap")])
        print(f"[{time.strftime('%H:%M:%S')}] progress", flush=True)
        print(render_table(headers, rows), flush=True)
        self.last_print = time.monotonic()
        self.dirty = False


@dataclass
class TrialOutcome:
    trial_id: str
    method: str
    status: str  # completed, stopped, error
    config: dict[str, Any]
    val_acc_best: float = float("nan")
    test_at_best_val: float = float("nan")
    gap_at_best_val: float = float("nan")
    epochs_run: int = 0
    path: str = ""
    error: str = ""  # one line: why an errored trial failed


def finished_trials(results: Any) -> int:
    """Trials of a Tune ``ResultGrid`` that really ended: errored, or terminated after reporting at least one
    epoch. (A trial still pending when Ctrl-C stops the run is also marked terminated by Tune, with no result;
    counting it would make an interrupted study look finished.)"""
    return sum(1 for r in results if r.error is not None or "epoch" in (r.metrics or {}))


def outcomes(results: Any) -> list[TrialOutcome]:
    """One :class:`TrialOutcome` per trial of a Tune ``ResultGrid`` (read from the per-epoch history)."""
    from drl_tune.faults import reason_of, recorded_error
    from drl_tune.history import dedupe_frame

    out = []
    for result in results:
        config = dict(result.config or {})
        frame = dedupe_frame(result.metrics_dataframe)  # a restored trial may have re-reported epochs
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        item = TrialOutcome(trial_id=str(trial_id), method=str(config.get("method", "?")), status="completed",
                            config=config, path=str(result.path))
        if frame is not None and len(frame) and "epoch" in frame:
            last = frame.iloc[-1]
            item.epochs_run = int(last["epoch"]) + 1
            item.val_acc_best = float(last.get("val/acc_best", float("nan")))
            item.test_at_best_val = float(last.get("test/acc_at_best_val", float("nan")))
            best = frame[frame["epoch"] == last.get("best_epoch", -1)]
            if len(best) and "balance/gap" in best:
                item.gap_at_best_val = float(best.iloc[-1]["balance/gap"])
        if result.error is not None:
            item.status = "error"
            recorded = recorded_error(result.path)
            item.error = str(recorded["reason"]) if recorded else reason_of(result.error)
        elif item.epochs_run < int(config.get("epochs", 0)):
            item.status = "stopped"
        out.append(item)
    return out


def summary_table(items: list[TrialOutcome], plan: Plan) -> str:
    """Per method: the best trial's val acc, test acc at its best-val epoch, balance gap; trial counts."""
    headers = ["method", "best trial", *knob_columns(plan), "val acc", "test@best-val", "gap", "trials",
               "stopped early", "errored"]
    rows = []
    for method in sorted({i.method for i in items}):
        mine = [i for i in items if i.method == method]
        scored = [i for i in mine if not math.isnan(i.val_acc_best) and i.status != "error"]
        best = max(scored, key=lambda i: i.val_acc_best) if scored else None
        owner = {p.key: p.method for p in plan.params}
        knobs = [best.config.get(k) if best and owner.get(k) in (None, method) else None for k in knob_columns(plan)]
        rows.append([method, best.trial_id if best else "-", *knobs,
                     best.val_acc_best if best else None, best.test_at_best_val if best else None,
                     best.gap_at_best_val if best else None, len(mine),
                     sum(i.status == "stopped" for i in mine), sum(i.status == "error" for i in mine)])
    table = render_table(headers, rows)
    errored = [i for i in items if i.status == "error"]
    if errored:  # why each errored trial failed (they never count as a method's best)
        table += "\n\nerrored trials:\n" + render_table(
            ["trial", "method", "epochs", "error"], [[i.trial_id, i.method, i.epochs_run, i.error] for i in errored])
    return table
