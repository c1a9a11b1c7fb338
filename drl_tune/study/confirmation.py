"""The confirmation stage and the study's answer.

A search ranks single-seed trials, and the best of many noisy trials is biased upwards (it is partly the
luckiest seed). So after the search the top-K configurations of each method — ranked on the *validation*
metric ``val/acc_best``, never on test — are re-trained with N fresh seeds (seeds no search trial used), full
epochs, no early stopping, as Ray Tune trials of their own experiment in ``STUDY/confirm/`` (same resources,
retries and ``--resume`` as the search; MLflow children of the same parent, tagged ``drl_tune.stage=confirm``).

The answer (``answer.json``, ``answer.csv``, printed) gives per configuration the mean and Student-t 95%
interval over seeds of ``test/acc_at_best_val``, ``val/acc_best``, ``balance/gap`` and each modality's probe
accuracy, all read at the trial's best-validation epoch; and the paired difference of every configuration
against the reference joint-training configuration, seed by seed (same seed ⇒ same data order and
initialisation), with its interval and a plain sentence. Test figures are reported, never ranked on: the
reference joint configuration (when K > 1) is the one with the best mean *validation* accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from mlflow.entities import Metric
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from drl_tune.ground.io import atomic_write_text
from drl_tune.ground.stats import Interval, paired_difference, paired_t_pvalue, t_interval
from drl_tune.study.answer import (
    BASE_METRICS,
    HEADLINE_METRIC,
    SELECT_METRIC,
    _finite,
    add_multiplicity_and_power,
    parent_metrics,
    write_answer,
)
from drl_tune.study.front import front_section, select_front
from drl_tune.study.history import read_result_json
from drl_tune.study.plan import Plan
from drl_tune.study.stop import fit_watch
from drl_tune.study.tables import ProgressSpec, ProgressTable
from drl_tune.study.tracking import PARENT_TAG, STAGE_TAG, TRIAL_TAG, MLflowTrialCallback
from drl_tune.study.tune import (
    REUSE_ACTORS,
    finished_trials,
    make_trainable,
    reroot_restored,
    search_callbacks,
    trial_name,
    with_loggers,
)

CONFIRM_DIR = "confirm"
CONFIRM_FILE = "drl_tune_confirm.json"
REFERENCE_METHOD = "joint"


class ConfirmError(ValueError):
    """The confirmation cannot start (no study, no finished trial, bad K or N); one message, exit code 2."""


def config_key(config: dict[str, Any]) -> str:
    """A canonical text of a configuration (matches a confirmation trial to its planned entry)."""
    return json.dumps(config, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------
# reading a Tune experiment folder


@dataclass
class TrialRecord:
    """One trial as read back from disk: its config, status and per-epoch rows (one per epoch)."""

    trial_id: str
    method: str
    config: dict[str, Any]
    status: str  # completed, stopped, error, running
    rows: list[dict[str, Any]] = field(default_factory=list)
    path: str = ""

    @property
    def final(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    def summary(self) -> dict[str, float]:
        """The answer's metrics for this trial: everything at its best-validation epoch.

        ``val/acc_best`` and ``test/acc_at_best_val`` are read from the last row (they are running values
        that already refer to the best epoch); per-epoch metrics (balance gap, probes) from the row of
        ``best_epoch``."""
        if not self.rows:
            return {}
        last = self.final
        best_epoch = last.get("best_epoch", -1)
        at_best = next((r for r in self.rows if r.get("epoch") == best_epoch), last)
        out = {k: float(v) for k, v in at_best.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and (k == "balance/gap" or (k.startswith("val/acc_") and k != "val/acc_best"))}
        for key in ("val/acc_best", "test/acc_at_best_val"):
            if key in last:
                out[key] = float(last[key])
        return out


def read_trials(experiment_dir: Path) -> list[TrialRecord]:
    """Every trial of the Tune experiment in ``experiment_dir`` with its status (from Tune's experiment
    state) and its de-duplicated per-epoch history."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise ConfirmError(f"{experiment_dir}: no Tune experiment state found ({err})") from None
    records = []
    for trial in analysis.trials:
        path = Path(cast(str, trial.path))  # the trial's folder in the study's storage (a restored trial has one)
        if not path.is_dir():  # the study folder was moved: find the trial by its folder name
            path = experiment_dir / path.name
        records.append(record_of(trial.trial_id, dict(trial.config or {}), trial.status, path))
    return records


def record_of(trial_id: str, config: dict[str, Any], tune_status: str, path: Path) -> TrialRecord:
    """A trial's record from its Tune status and its folder's ``result.json``."""
    rows = read_result_json(path)
    epochs = int(config.get("epochs", 0))
    if tune_status == "ERROR":
        status = "error"
    elif tune_status == "TERMINATED":
        status = "completed" if rows and int(rows[-1]["epoch"]) + 1 >= epochs else "stopped"
    else:
        status = "running"  # PENDING/RUNNING/PAUSED: an interrupted experiment
    return TrialRecord(trial_id, str(config.get("method", "?")), config, status, rows, str(path))


# ---------------------------------------------------------------------------------------------------------
# planning the confirmation


@dataclass
class ConfirmEntry:
    """One confirmation trial: configuration ``rank`` of ``method`` (a copy of search trial
    ``source_trial``) with a fresh ``seed``."""

    method: str
    rank: int
    source_trial: str
    seed: int
    config: dict[str, Any]
    source_val: float = math.nan  # the search trial's (optimistic) val/acc_best
    front: int = 0  # a multi-objective study: position along the searched Pareto front (1 = best first objective)

    @property
    def label(self) -> str:
        return f"{self.method}#{self.rank}"


def fresh_seeds(used: set[int], n: int) -> list[int]:
    """The ``n`` smallest positive seeds no search trial used (deterministic, so a re-run picks the same)."""
    seeds: list[int] = []
    candidate = 1
    while len(seeds) < n:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def select_top(records: list[TrialRecord], top_k: int,
               methods: list[str] | None = None) -> dict[str, list[TrialRecord]]:
    """The ``top_k`` best distinct configurations per method on ``val/acc_best`` (validation only).

    Candidates are the trials that ran all their epochs; a method none of whose trials did (all stopped
    early) falls back to its stopped trials. Errored trials are never candidates. Two trials with the same
    configuration (up to the seed) count once."""
    chosen: dict[str, list[TrialRecord]] = {}
    for method in sorted({r.method for r in records} | set(methods or [])):
        if methods is not None and method not in methods:
            continue
        mine = [r for r in records if r.method == method and r.status in ("completed", "stopped")
                and SELECT_METRIC in r.final and not math.isnan(float(r.final[SELECT_METRIC]))]
        pool = [r for r in mine if r.status == "completed"] or mine
        pool.sort(key=lambda r: float(r.final[SELECT_METRIC]), reverse=True)
        seen, picked = set(), []
        for record in pool:
            key = config_key({k: v for k, v in record.config.items() if k != "seed"})
            if key not in seen:
                seen.add(key)
                picked.append(record)
            if len(picked) == top_k:
                break
        chosen[method] = picked
    return chosen


def plan_confirmation(records: list[TrialRecord], top_k: int, n_seeds: int,
                      methods: list[str] | None = None, strict: bool = True,
                      objectives: list[dict[str, str]] | None = None) -> list[ConfirmEntry]:
    """Entries for K configurations × N fresh seeds × methods. Raises ConfirmError when a method asked for
    (or present in the search) has no finished trial to confirm; with ``strict=False`` (the stage at the end of
    a study) such a method is left out with a note, and only a search with no finished trial at all fails."""
    if top_k < 1 or n_seeds < 1:
        raise ConfirmError(f"the confirmation needs top_k >= 1 and seeds >= 1, got top_k={top_k}, seeds={n_seeds}")
    if not records:
        raise ConfirmError("the search has no trials to confirm")
    unfinished = [r.trial_id for r in records if r.status == "running"]
    if unfinished:
        raise ConfirmError(f"the search is not finished ({len(unfinished)} trials still pending); finish it first "
                           f"with python -m drl_tune.run --resume --name STUDY")
    if objectives:  # a multi-objective study: top_k points of the searched Pareto front, spread along it
        return front_entries(records, top_k, n_seeds, objectives, methods)
    chosen = select_top(records, top_k, methods)
    empty = [m for m, picked in chosen.items() if not picked]
    if empty and not strict and len(empty) < len(chosen):
        print(f"note: no finished trial of method {', '.join(empty)} (every trial errored): not confirmed", flush=True)
        chosen = {m: picked for m, picked in chosen.items() if picked}
    elif empty:
        raise ConfirmError(f"no finished trial of method {', '.join(empty)} to confirm (every trial errored); "
                           f"confirm the other methods with --methods "
                           f"{','.join(m for m in chosen if m not in empty) or 'METHOD'}")
    return entries_of(chosen, records, n_seeds)


def entries_of(chosen: dict[str, list[TrialRecord]], records: list[TrialRecord], n_seeds: int) -> list[ConfirmEntry]:
    """The entries for the ``chosen`` configurations × ``n_seeds`` seeds no trial of ``records`` used."""
    used = {int(r.config.get("seed", 0)) for r in records}
    seeds = fresh_seeds(used, n_seeds)
    entries = []
    for method, picked in chosen.items():
        for rank, record in enumerate(picked, start=1):
            for seed in seeds:
                entries.append(ConfirmEntry(method, rank, record.trial_id, seed, {**record.config, "seed": seed},
                                            float(record.final.get(SELECT_METRIC, math.nan))))
    return entries


def front_entries(records: list[TrialRecord], k: int, n_seeds: int, objectives: list[dict[str, str]],
                  methods: list[str] | None) -> list[ConfirmEntry]:
    """Confirmation entries for the ``k`` front points × ``n_seeds`` fresh seeds; a point's rank counts within its
    method, its ``front`` field is its position along the front."""
    pool = [r for r in records if methods is None or r.method in methods]
    picked = select_front(pool, objectives, k)
    if not picked:
        raise ConfirmError("no finished search trial has every objective; nothing on the front to confirm")
    seeds = fresh_seeds({int(r.config.get("seed", 0)) for r in records}, n_seeds)
    entries: list[ConfirmEntry] = []
    ranks: dict[str, int] = {}
    for position, record in enumerate(picked, start=1):
        ranks[record.method] = ranks.get(record.method, 0) + 1
        entries += [ConfirmEntry(record.method, ranks[record.method], record.trial_id, seed,
                                 {**record.config, "seed": seed}, float(record.final.get(SELECT_METRIC, math.nan)),
                                 front=position) for seed in seeds]
    return entries


def save_entries(path: Path, entries: list[ConfirmEntry], top_k: int, seeds: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"top_k": top_k, "seeds": seeds, "entries": [e.__dict__ for e in entries]}
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def load_entries(path: Path) -> tuple[list[ConfirmEntry], int, list[int]]:
    payload = json.loads(path.read_text())
    return [ConfirmEntry(**e) for e in payload["entries"]], int(payload["top_k"]), list(payload["seeds"])


# ---------------------------------------------------------------------------------------------------------
# the answer


@dataclass
class ConfigResult:
    entry: ConfirmEntry  # the first entry (method, rank, source); seeds vary
    seeds: list[int]
    trials: list[str]
    summaries: list[dict[str, float]]  # per seed, aligned with seeds
    failed_seeds: list[int]
    stats: dict[str, Interval]


def _searched_keys(entries: list[ConfirmEntry]) -> list[str]:
    """Config keys that differ between the confirmed configurations (what the tables show)."""
    keys: set[str] = set()
    configs = [e.config for e in entries]
    for key in {k for c in configs for k in c}:
        if key in ("seed", "method"):
            continue
        values = {json.dumps(c.get(key), default=str) for c in configs}
        if len(values) > 1:
            keys.add(key)
    return sorted(keys)


def build_answer(study_dir: Path, study_name: str, objectives: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Read the finished confirmation trials and compute the answer (see the module docstring)."""
    entries, top_k, seeds = load_entries(study_dir / CONFIRM_DIR / CONFIRM_FILE)
    records = {config_key(r.config): r for r in read_trials(study_dir / CONFIRM_DIR)}
    groups: dict[tuple[str, int], list[ConfirmEntry]] = {}
    for e in entries:
        groups.setdefault((e.method, e.rank), []).append(e)
    modalities = sorted({k for r in records.values() for k in r.summary() if k.startswith("val/acc_")
                         and k != "val/acc_best"})
    metrics = [*BASE_METRICS, *modalities]
    results: dict[tuple[str, int], ConfigResult] = {}
    for (method, rank), group in sorted(groups.items()):
        ok_seeds, trials, summaries, failed = [], [], [], []
        for e in sorted(group, key=lambda e: e.seed):
            record = records.get(config_key(e.config))
            if record is None or record.status != "completed":
                failed.append(e.seed)
                continue
            ok_seeds.append(e.seed)
            trials.append(record.trial_id)
            summaries.append(record.summary())
        stats = {m: t_interval([s[m] for s in summaries]) for m in metrics
                 if summaries and all(m in s for s in summaries)}
        results[(method, rank)] = ConfigResult(group[0], ok_seeds, trials, summaries, failed, stats)

    # the reference: the joint configuration with the best mean *validation* accuracy
    joint = [r for (m, _), r in results.items() if m == REFERENCE_METHOD and SELECT_METRIC in r.stats]
    reference = max(joint, key=lambda r: r.stats[SELECT_METRIC].mean) if joint else None
    paired = []
    if reference is not None:
        ref_by_seed = dict(zip(reference.seeds, reference.summaries, strict=True))
        for (method, rank), res in results.items():
            if res is reference:
                continue
            common = [(s, summ) for s, summ in zip(res.seeds, res.summaries, strict=True) if s in ref_by_seed]
            for metric in metrics:
                pairs = [(summ[metric], ref_by_seed[s][metric]) for s, summ in common
                         if metric in summ and metric in ref_by_seed[s]]
                if not pairs:
                    continue
                diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
                paired.append({"method": method, "rank": rank, "metric": metric,
                               **{k: v for k, v in diff.to_dict().items() if k != "level"},
                               "p": paired_t_pvalue(diff), "_diff": diff})
        add_multiplicity_and_power(paired, reference.entry.method, top_k)
    shown = _searched_keys([e for e in entries])
    answer: dict[str, Any] = {
        "study": study_name,
        "select_metric": SELECT_METRIC,
        "seeds": seeds,
        "top_k": top_k,
        "metrics": metrics,
        "configs": [{
            "method": method, "rank": rank, "source_trial": res.entry.source_trial,
            "source_val_acc_best": res.entry.source_val,
            "config": {k: res.entry.config.get(k) for k in shown if k in res.entry.config},
            "full_config": {k: v for k, v in res.entry.config.items() if k != "seed"},
            "seeds": res.seeds, "trials": res.trials, "failed_seeds": res.failed_seeds, "front": res.entry.front,
            "stats": {m: iv.to_dict() for m, iv in res.stats.items()},
        } for (method, rank), res in results.items()],
        "reference": ({"method": reference.entry.method, "rank": reference.entry.rank}
                      if reference is not None else None),
        "paired": paired,
        "headline": [p["sentence"] for p in paired if p["metric"] == HEADLINE_METRIC],
    }
    if reference is None:
        answer["headline"] = [f"no {REFERENCE_METHOD} configuration was confirmed, so there is no paired "
                              f"difference against joint training"]
    if objectives:
        answer["objectives"] = objectives
        answer["front"] = front_section(answer["configs"], objectives)
        kept = [p["label"] for p in answer["front"] if p["non_dominated"]]
        answer["headline"].append(f"confirmed Pareto front: {len(kept)} of {len(answer['front'])} points remain "
                                  f"non-dominated with 95% intervals ({', '.join(kept)})")
    return _finite(answer)


# ---------------------------------------------------------------------------------------------------------
# running the confirmation as a Tune experiment of the study


class PlannedConfigs(Searcher):
    """A Tune searcher that proposes exactly the planned configurations, once each, in order.

    Tune's basic variant generator cannot do this when the configurations have different keys (a joint
    configuration has no ``drl.*`` keys, and its ``points_to_evaluate`` must fill every key of one shared
    space), so the few lines of a searcher are written here.

    An ``open`` plan (a confirmation started while the search still runs, :class:`EarlyConfirmation`) gets more
    configurations later (:meth:`add`, from the driver's main thread) and ends only once an ``add`` closes it;
    until then it answers "nothing yet". ``final`` (not saved) replaces a restored open plan with the whole plan, in
    the order its configurations were handed out (``drl_tune_confirm.json``)."""

    WAIT_S = 0.1  # Tune asks at every step of its loop, which does not wait when no trial runs: ask at most 10x/s

    def __init__(self, configs: list[dict[str, Any]], open: bool = False) -> None:  # noqa: A002 — the plan's state
        super().__init__()
        self.configs = [dict(c) for c in configs]
        self.next_index = 0
        self.open = open
        self.final: list[dict[str, Any]] | None = None
        self._more = threading.Event()

    # Ray documents dict | FINISHED | None as suggest's result; its annotation leaves FINISHED (a str) out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.next_index >= len(self.configs):
            if not self.open:
                return Searcher.FINISHED
            self._more.wait(self.WAIT_S)
            self._more.clear()
            return None
        self.next_index += 1
        return dict(self.configs[self.next_index - 1])

    def add(self, configs: list[dict[str, Any]], close: bool = True) -> None:
        self.configs += [dict(c) for c in configs]
        self.open = self.open and not close
        self._more.set()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # nothing to learn: the plan is fixed

    def get_state(self) -> dict[str, Any]:
        return {"configs": self.configs, "next_index": self.next_index, "open": self.open}

    def set_state(self, state: dict[str, Any]) -> None:
        self.configs, self.next_index = state["configs"], state["next_index"]
        self.open = bool(state.get("open", False))
        if self.final is not None:
            self.configs, self.open = [dict(c) for c in self.final], False

    def save(self, checkpoint_path: str) -> None:
        atomic_write_text(checkpoint_path, json.dumps(self.get_state(), default=str))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_more"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"open": False, "final": None, **state})
        self._more = threading.Event()


def planned_configs(tuner: Any) -> PlannedConfigs | None:
    """The :class:`PlannedConfigs` inside a (restored) confirmation Tuner, through Tune's wrappers; None through Ray
    Client (no local Tuner)."""
    local = getattr(tuner, "_local_tuner", None)
    search = local._tune_config.search_alg if local is not None else None  # noqa: SLF001
    while search is not None and not isinstance(search, PlannedConfigs):
        search = getattr(search, "searcher", None)
    return search


def make_confirm_tuner(plan: Plan, gpus: float, searcher: PlannedConfigs, callbacks: list,
                       num_samples: int | None = None) -> Any:
    """One Tune trial per planned configuration, FIFO (no early stopping), the study's resources and retries, as
    the Tune experiment ``STUDY/confirm``. ``num_samples``: at most that many trials (an open plan's bound)."""
    run_config = tune.RunConfig(
        name=CONFIRM_DIR, storage_path=str(plan.study_dir),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=with_loggers(callbacks), verbose=0,
    )
    tune_config = tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, plan.max_concurrent),
                                  scheduler=FIFOScheduler(), num_samples=num_samples or len(searcher.configs),
                                  reuse_actors=REUSE_ACTORS, trial_name_creator=trial_name,
                                  trial_dirname_creator=trial_name)
    return tune.Tuner(make_trainable(plan, gpus), tune_config=tune_config, run_config=run_config)


def confirm_tags(entries: list[ConfirmEntry]) -> dict[str, dict[str, str]]:
    """MLflow tags of each confirmation trial, keyed by its configuration."""
    return {config_key(e.config): {"drl_tune.confirm_rank": str(e.rank), "drl_tune.source_trial": e.source_trial,
                                   "drl_tune.confirm_seed": str(e.seed)} for e in entries}


def confirm_callbacks(plan: Plan, progress: ProgressSpec, entries: list[ConfirmEntry], total: int) -> list[Any]:
    """The confirmation's MLflow callback (a child run per trial, tagged with its entry) and its progress table."""
    return [MLflowTrialCallback(plan.mlflow_uri, plan.experiment_id, plan.parent_run_id, plan.name, stage="confirm",
                                tags_by_config=confirm_tags(entries)),
            ProgressTable(plan, progress, stage="confirmation", total=total)]


def describe_plan(entries: list[ConfirmEntry], plan: Plan, top_k: int) -> None:
    """Print what the confirmation re-trains (the lines a study shows when its confirmation is planned)."""
    seeds = sorted({e.seed for e in entries})
    labels = sorted({(e.method, e.rank, e.source_trial, e.source_val) for e in entries})
    what = (f"{len(labels)} configuration(s) of the searched Pareto front, spread along it," if plan.objectives
            else f"the top {top_k} configuration(s) of each method (ranked on {SELECT_METRIC})")
    print(f"\nconfirmation: {what} re-trained with {len(seeds)} fresh seeds ({', '.join(map(str, seeds))}), "
          f"full epochs, no early stopping — {len(entries)} trials", flush=True)
    for method, rank, source, val in labels:
        print(f"  {method} #{rank}: search trial {source} (search val acc {val:.3f}, single seed)", flush=True)


def discard_unplanned(folder: Path, plan: Plan) -> None:
    """Remove a confirmation that was started early and never planned in full (its driver stopped while the search
    still ran; :class:`EarlyConfirmation`): its trials are run again, and their MLflow runs are deleted so that the
    review shows each confirmation trial once."""
    if not folder.is_dir() or (folder / CONFIRM_FILE).is_file():
        return
    ids = {d.name.rsplit("_", 1)[-1] for d in folder.iterdir() if d.is_dir()}
    if ids:
        from mlflow import MlflowClient

        client = MlflowClient(plan.mlflow_uri)
        runs = client.search_runs([plan.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{plan.parent_run_id}' "
                                  f"and tags.`{STAGE_TAG}` = 'confirm'")
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) in ids:
                client.delete_run(run.info.run_id)
    shutil.rmtree(folder)


def run_confirmation(plan: Plan, gpus: float, tracker: Any, progress: ProgressSpec, *, top_k: int, n_seeds: int,
                     methods: list[str] | None = None, strict: bool = True,
                     early: EarlyConfirmation | None = None) -> tuple[dict[str, Any] | None, bool]:
    """Plan (or, when ``STUDY/confirm`` exists, resume) the confirmation, run it, and compute the answer. With
    ``early`` started (the confirmation of the methods whose search had ended, already running), the rest of the plan
    is handed to it and the run waited for.

    Returns ``(answer, interrupted)``; the answer is None when the run was interrupted, or (``strict=False``)
    when the search left nothing to confirm."""
    folder = plan.study_dir / CONFIRM_DIR
    entries_file = folder / CONFIRM_FILE
    outcome = ""
    if early is not None and early.started:
        outcome, entries, results = early.complete(top_k, n_seeds, methods, strict)
        if outcome in ("stopped", "none"):
            return None, outcome == "stopped"
    if outcome != "done":
        if entries_file.is_file() and tune.Tuner.can_restore(str(folder)):
            entries, top_k, seeds = load_entries(entries_file)
            print(f"\nresuming the confirmation: {len(entries)} trials in {folder}", flush=True)
            tuner = tune.Tuner.restore(str(folder), trainable=make_trainable(plan, gpus), resume_unfinished=True,
                                       resume_errored=False)
            reroot_restored(tuner, plan, folder, progress)
            restored = planned_configs(tuner)
            if restored is not None:  # an early confirmation's saved plan may predate its last configurations
                restored.final = [e.config for e in entries]
            for callback in search_callbacks(tuner):  # ... and so may its callbacks, pickled when it started
                if isinstance(callback, MLflowTrialCallback):
                    callback.tags_by_config.update(confirm_tags(entries))
                elif isinstance(callback, ProgressTable):
                    callback.total = len(entries)
        else:
            try:
                entries = plan_confirmation(read_trials(plan.study_dir), top_k, n_seeds, methods, strict,
                                            plan.objectives)
            except ConfirmError as err:
                if strict:
                    raise
                print(f"\nno confirmation: {err}", flush=True)
                return None, False
            discard_unplanned(folder, plan)
            save_entries(entries_file, entries, top_k, sorted({e.seed for e in entries}))
            describe_plan(entries, plan, top_k)
            tuner = make_confirm_tuner(plan, gpus, PlannedConfigs([e.config for e in entries]),
                                       confirm_callbacks(plan, progress, entries, len(entries)))
        with fit_watch() as stop:
            results = tuner.fit()
        if stop.is_set():
            return None, True
    if finished_trials(results) < len(entries):
        return None, True
    answer = build_answer(plan.study_dir, plan.name, plan.objectives)
    paths = write_answer(plan.study_dir, answer)
    if tracker is not None:
        for path in paths.values():
            tracker.client.log_artifact(plan.parent_run_id, str(path))
        metrics = parent_metrics(answer)
        if metrics:
            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
            for start in range(0, len(items), 500):
                tracker.client.log_batch(plan.parent_run_id, metrics=items[start : start + 500])
    return answer, False


def early_entries(trials: list, ended: Any, status: str, num_samples: int, top_k: int,
                  n_seeds: int) -> tuple[list[ConfirmEntry], list[str], int] | None:
    """What the confirmation can start while the search's last trials run (:class:`EarlyConfirmation`), when the
    search's trial ``ended`` has just ended with Tune ``status`` (TERMINATED or ERROR): the entries of the methods
    none of whose trials is still live, the methods still searching, and the most trials the confirmation can have
    (top-K × seeds × every searched method). None while the search may still make trials, when no trial is live
    (the search ends now), or when no ready method has a trial to confirm."""
    if len(trials) < num_samples:
        return None
    statuses = {t.trial_id: status if t is ended else str(t.status) for t in trials}
    live = sorted({str(t.config.get("method", "?")) for t in trials
                   if statuses[t.trial_id] not in ("TERMINATED", "ERROR")})
    if not live:
        return None
    records = [record_of(t.trial_id, dict(t.config or {}), statuses[t.trial_id], Path(t.path)) for t in trials]
    ready = sorted({r.method for r in records} - set(live))
    chosen = {m: picked for m, picked in select_top(records, top_k, ready).items() if picked}
    if not chosen:
        return None
    bound = top_k * n_seeds * len({r.method for r in records})
    return entries_of(chosen, records, n_seeds), live, bound


class EarlyConfirmation(Callback):
    """A search callback that starts the confirmation of the methods whose search trials have all ended while the
    search's last trials still run, in the slots they leave free (issue 41: on the demo study one of the two slots
    sat idle for 7-18 s at the end of every search).

    Only what the search can no longer change is started: the search has made its last trial, every trial of the
    method has ended (completed, stopped by ASHA, or errored with no retry left), and its entries are those the
    confirmation planned at the end would give — the method's own top configurations (:func:`select_top` reads only
    them) with the fresh seeds of the whole search, whose seeds are all drawn once its last trial is made. At the
    search's end :meth:`complete` plans the whole confirmation from disk as before, checks that, hands the other
    methods' entries to the running Tuner and waits for it. A study with several objectives (one front over every
    method) starts no early confirmation.

    The confirmation's Tuner runs in a thread of the driver (Tune's trial actors need no more than its loop), as the
    experiment ``STUDY/confirm`` the confirmation always has; a stop signal stops it with the search
    (``study.stop.fit_in_thread``). Stopped before the search ended, its folder is removed on ``--resume`` and its
    trials run again (:func:`discard_unplanned`). Picklable (Tune saves the search's callbacks): what runs is not
    kept in the pickle; the driver attaches the study (:meth:`attach`) after building or restoring the search's
    Tuner."""

    THREAD = "drl-tune-confirmation"

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self._reset()

    def _reset(self) -> None:
        self.plan: Plan | None = None
        self.gpus, self.progress, self.top_k, self.n_seeds = 0.0, ProgressSpec(), 1, 1
        self.entries: list[ConfirmEntry] = []
        self.searcher: PlannedConfigs | None = None
        self.callbacks: list[Any] = []
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.results: Any = None
        self.error: BaseException | None = None
        self._watch: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.num_samples = state["num_samples"]
        self._reset()

    def attach(self, plan: Plan, gpus: float, progress: ProgressSpec, top_k: int, n_seeds: int) -> None:
        self.plan, self.gpus, self.progress, self.top_k, self.n_seeds = plan, gpus, progress, top_k, n_seeds

    @property
    def started(self) -> bool:
        return self.thread is not None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._maybe_start(trials, trial, "TERMINATED")  # Tune marks it TERMINATED right after its callbacks

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._maybe_start(trials, trial, "ERROR")

    def _maybe_start(self, trials: list, ended: Any, status: str) -> None:
        plan = self.plan
        if plan is None or self.started or plan.objectives:
            return
        ready = early_entries(trials, ended, status, self.num_samples, self.top_k, self.n_seeds)
        if ready is None:
            return
        entries, live, bound = ready
        chosen = sorted({e.method for e in entries})
        folder = plan.study_dir / CONFIRM_DIR
        if (folder / CONFIRM_FILE).is_file():
            return  # a planned confirmation is there: the study resumes it after the search
        discard_unplanned(folder, plan)
        self.entries = entries
        self.searcher = PlannedConfigs([e.config for e in entries], open=True)
        self.callbacks = confirm_callbacks(plan, self.progress, entries, bound)
        tuner = make_confirm_tuner(plan, self.gpus, self.searcher, self.callbacks, num_samples=bound)
        print(f"\nconfirmation of {', '.join(chosen)} started while the search's last trials of "
              f"{', '.join(sorted(live))} run ({len(entries)} trials, fresh seeds "
              f"{', '.join(map(str, sorted({e.seed for e in entries})))}; the whole plan follows the search)",
              flush=True)
        self._link()  # a stop signal stops this run too, from now on
        self.thread = threading.Thread(target=self._fit, args=(tuner,), name=self.THREAD, daemon=True)
        self.thread.start()

    def _fit(self, tuner: Any) -> None:
        from drl_tune.study.stop import fit_in_thread

        quiet = _WaitingNotice(self)
        logger = logging.getLogger(INSUFFICIENT_RESOURCES_LOGGER)
        logger.addFilter(quiet)
        try:
            with fit_in_thread(self.stop):
                self.results = tuner.fit()
        except BaseException as err:  # noqa: BLE001 — raised again in the driver's thread (:meth:`wait`)
            self.error = err
        finally:
            logger.removeFilter(quiet)

    def complete(self, top_k: int, n_seeds: int, methods: list[str] | None,
                 strict: bool) -> tuple[str, list[ConfirmEntry], Any]:
        """After the search: plan the whole confirmation from disk, hand the rest of it to the running Tuner, wait
        for that. Returns ``("done", entries, results)``; ``("stopped", [], None)`` after a stop signal;
        ``("none", [], None)`` when the search left nothing to confirm; ``("again", [], None)`` when the trials
        started early are not the plan's (it cannot happen by construction: a guard), their run stopped."""
        assert self.plan is not None and self.searcher is not None
        plan, searcher = self.plan, self.searcher
        outcome, entries = "stopped", []
        started = {config_key(e.config) for e in self.entries}
        if not self.stop.is_set():
            try:
                entries = plan_confirmation(read_trials(plan.study_dir), top_k, n_seeds, methods, strict,
                                            plan.objectives)
                outcome = "done" if started <= {config_key(e.config) for e in entries} else "again"
            except ConfirmError as err:
                print(f"\nno confirmation: {err}", flush=True)
                outcome = "none"
        if outcome != "done":
            self.abandon()
            return (outcome if not self.stop_signal() else "stopped"), [], None
        rest = [e for e in entries if config_key(e.config) not in started]
        ordered = self.entries + rest  # the order the Tuner hands them out (a resumed Tuner takes it from the file)
        save_entries(plan.study_dir / CONFIRM_DIR / CONFIRM_FILE, ordered, top_k, sorted({e.seed for e in entries}))
        describe_plan(ordered, plan, top_k)
        mlflow_callback, table = self.callbacks
        mlflow_callback.tags_by_config.update(confirm_tags(rest))
        table.total = len(ordered)
        searcher.add([e.config for e in rest])
        self.wait()
        return ("stopped" if self.stop_signal() else "done"), ordered, self.results

    def stop_signal(self) -> bool:
        """Whether a stop signal (not the study itself) stopped the confirmation."""
        from drl_tune.study.stop import stopping

        return stopping() is not None

    def wait(self) -> None:
        """Wait for the confirmation's thread (a stop signal meanwhile stops it: its event is linked to the study's
        stop signals from its start, :meth:`StopSignals.link`); then unlink it and raise what the thread raised."""
        try:
            while self.thread is not None and self.thread.is_alive():
                self.thread.join(0.2)
        finally:
            self._unlink()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def abandon(self, wait: bool = True) -> None:
        """Stop a confirmation still running (the search was stopped, or nothing is to be confirmed); ``wait`` for
        its run to save its state and end (a daemon thread: not waited for, it ends with the driver)."""
        if self.thread is not None and self.thread.is_alive():
            self.stop.set()
            if self.searcher is not None:
                self.searcher.add([])
            if wait:
                self.thread.join(120)
        self._unlink()

    def _link(self) -> None:
        from drl_tune.study.stop import active

        watch = active()
        if watch is not None:
            watch.link(self.stop)
            self._watch = watch

    def _unlink(self) -> None:
        if self._watch is not None:
            self._watch.unlink(self.stop)
            self._watch = None


INSUFFICIENT_RESOURCES_LOGGER = "ray.tune.execution.insufficient_resources_manager"


class _WaitingNotice(logging.Filter):
    """Drops Tune's "no trial is running ... the cluster may lack resources" warning from the early confirmation's run
    while its plan waits for the search: nothing runs there then because the rest of the plan is not known yet."""

    def __init__(self, early: EarlyConfirmation) -> None:
        super().__init__()
        self.early = early

    def filter(self, record: logging.LogRecord) -> bool:
        searcher = self.early.searcher
        return not (record.threadName == EarlyConfirmation.THREAD and searcher is not None and searcher.open)
