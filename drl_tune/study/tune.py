"""A resolved study plan (drl_tune/study/plan.py) -> a Ray Tune ``Tuner`` (OptunaSearch, ASHA, resume).

Search: Optuna TPE (seeded; or random sampling, ``study.searcher``) with a define-by-run function, because DRL's
parameters only exist when ``method=drl`` is drawn. The space's official setting is the first
``points_to_evaluate`` point, so every study contains the paper's configuration.

Early stopping: ASHA over epochs (one ``tune.report`` per epoch). It compares trials on
``val/acc_best`` — the best validation accuracy so far — never on ``val/acc``: DRL's soft re-initialisation
drops ``val/acc`` for an epoch or two by design, and a rung that falls into that dip would stop the
trial for the very thing the method does. A running best cannot dip, so a re-initialised trial keeps the
standing it had earned before the re-init and is stopped only if it never got anywhere.
(``tests/study/test_study_asha.py`` proves both halves with the real scheduler.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune import Callback
from ray.tune.logger import LoggerCallback, TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from drl_tune.study.plan import Plan
from drl_tune.study.spaces import Param, SchedulerSpec
from drl_tune.study.tables import ProgressSpec, ProgressTable
from drl_tune.study.trainable import train_trial


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


def make_sampler(searcher: str, seed: int, num_samples: int = 0) -> optuna.samplers.BaseSampler:
    """``tpe``: multivariate+group TPE, which models the conditional (per-method) parameters jointly, as Optuna
    recommends (it handles several objectives too). ``random``: i.i.d. draws from the space, what the budget curve's
    closed form assumes (the enqueued official settings are still the first trials; the curve leaves them out of its
    draws). ``nsga2``: Optuna's NSGA-II; its default population of 50 would leave a study of a few dozen trials in
    its first, random generation, so the population is a quarter of the trials (at least 4)."""
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, num_samples // 4))
    if searcher == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    raise ValueError(f"unknown searcher {searcher!r}; one of tpe, random")


def make_searcher(plan: Plan) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress table says what matters
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler = make_sampler(plan.searcher, plan.seed, plan.num_samples)
    space = DefineByRun(plan.search, plan.constants, tuple(plan.balanced_methods))
    # several objectives: Ray's OptunaSearch takes lists (TuneConfig takes none); each result key is the value at the
    # trial's best-validation epoch (Engine: at_best_val/*), read from the trial's last report
    metric = [o["key"] for o in plan.objectives] if plan.objectives else plan.metric
    mode = [o["mode"] for o in plan.objectives] if plan.objectives else plan.mode
    search = OptunaSearch(space, metric=metric, mode=mode, points_to_evaluate=plan.points_to_evaluate,
                          sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=plan.max_concurrent)


def make_scheduler(sc: SchedulerSpec) -> Any:
    """ASHA on a running-best metric, one rung step per reported epoch (see the module docstring)."""
    if sc.type == "none":
        return FIFOScheduler()
    assert sc.max_t is not None  # a plan's scheduler has it resolved (None in a space: the trial's epochs)
    return ASHAScheduler(time_attr="training_iteration", metric=sc.metric, mode="max", max_t=sc.max_t,
                         grace_period=min(sc.grace_period, sc.max_t), reduction_factor=sc.reduction_factor)


# Each new trial actor is a fresh Ray worker process that boots Ray (~3 s here) and imports torch, torchvision and
# sklearn (~8 s here) before its first epoch: the whole of a demo trial's start-up (docs/performance.md,
# `overhead.startup_breakdown`). Ray 2.60 Tune does not reuse actors unless asked; reusing them runs the next trial in
# the finished (or ASHA-stopped) trial's process, which has all that done. Safe for train_trial: a function
# trainable's thread is stopped at a report (synchronous reporting), every trial builds its own Engine (seeds, RNGs,
# model, data), restores the worker's torch thread count (trainable.py) and gets its own trial folder and cwd.
REUSE_ACTORS = True


def make_trainable(plan: Plan, gpus: float) -> Any:
    """One trial's function with its resources; the study's own method files travel with it (Ray's object store), so
    a trial registers them wherever it runs — a worker on another node has no copy of the user's file."""
    trainable = tune.with_parameters(train_trial, methods=plan.methods) if plan.methods else train_trial
    return tune.with_resources(trainable, {"cpu": plan.cpus_per_trial, "gpu": gpus})


class RootedSearchGenerator(SearchGenerator):
    """Tune's wrapper of a searcher, which on ``--resume`` makes the trials still to come in the experiment folder
    Tune was restored from. Why: ``Tuner.restore`` re-roots the trials it saved (their folders and checkpoints), but
    the ``SearchGenerator`` state it restores holds the ``Experiment`` as it was pickled, with the storage of the folder
    the study was *made* in, and Ray 2.60 creates every later trial with that storage — so a moved study's new trials
    would write into a folder that is gone, and a copy's into its original. Here the restored experiment's storage is
    pointed at ``folder`` (as ``TuneController._restore_trials`` does for the saved trials)."""

    def __init__(self, searcher: Any, folder: str) -> None:
        super().__init__(searcher)
        self.folder = folder

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        storage = getattr(self._experiment, "storage", None)
        if storage is not None:
            folder = Path(self.folder)
            storage.storage_fs_path = folder.parent.as_posix()
            storage.experiment_dir_name = folder.name


def reroot_restored(tuner: Any, plan: Plan, folder: Path, progress: ProgressSpec | None = None) -> None:
    """Point a restored Tuner (the experiment in ``folder``) at where the study is now: its searcher's future trials
    (:class:`RootedSearchGenerator`) and its MLflow callback, which ``Tuner.restore`` unpickles with the absolute sqlite
    URI of the folder the study was made in (a moved folder's would fail on a missing database, a copy's would log
    into its original's). Ray 2.60 has no public way to replace a restored searcher or callbacks, so the ones the
    Tuner holds are changed in place (through Ray Client, where the driver runs remotely, there are none to reach).
    The restored progress callback takes this run's ``progress`` settings, not the first run's."""
    from ray.tune.search import Searcher

    from drl_tune.study.tracking import MLflowTrialCallback

    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        return
    config = local._tune_config  # noqa: SLF001
    if isinstance(config.search_alg, RootedSearchGenerator):
        config.search_alg.folder = str(folder)
    elif isinstance(config.search_alg, Searcher):
        config.search_alg = RootedSearchGenerator(config.search_alg, str(folder))
    for callback in local.get_run_config().callbacks or []:
        if isinstance(callback, MLflowTrialCallback) and callback.tracking_uri != plan.mlflow_uri:
            callback.tracking_uri = plan.mlflow_uri
            callback._client = None  # noqa: SLF001 — rebuilt on first use, on the new URI
        if isinstance(callback, ProgressTable) and progress is not None:
            callback.use(progress)


def search_callbacks(tuner: Any) -> list:
    """The callbacks a (restored) Tuner will run with; none through Ray Client (no local Tuner)."""
    local = getattr(tuner, "_local_tuner", None)
    return list(local.get_run_config().callbacks or []) if local is not None else []


class WarmNextStage(Callback):
    """Once the search has made its last trial and a trial ends, workers for the confirmation that follows are
    prestarted, one per slot (``study.cluster.prestart_workers`` says why): they start, and import the trainable,
    while the last trials still run, in the CPU those trials no longer use. All at the first freed slot: the
    confirmation takes every slot at once, and one prestarted as each slot freed was still starting when the
    confirmation asked for it (``python -m drl_tune.bench study``: its second trial waited ≈ 5 s)."""

    def __init__(self, num_samples: int, slots: int) -> None:
        self.num_samples, self.slots = num_samples, slots
        self.asked = False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._warm(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._warm(trials)

    def _warm(self, trials: list) -> None:
        from drl_tune.study.cluster import prestart_workers

        if len(trials) < self.num_samples or self.asked:
            return  # the searcher will make another trial, which takes the freed slot; or asked already
        self.asked = True  # once: a raylet that did not answer is not kept waiting on at every trial's end
        prestart_workers(self.slots)


def trial_name(trial: Any) -> str:
    """Short trial names/folders (``drl_1a2b3c4d``): Tune's default packs the whole config into the name."""
    return f"{trial.config.get('method', 'trial')}_{trial.trial_id}"


class NoTensorBoard(TBXLoggerCallback):
    """Stands where Tune would put its TensorBoard logger, and logs nothing: Tune adds its own only when none is in
    the callbacks, and nothing here reads TensorBoard files (it wrote one per trial-epoch). Tune's JSON and CSV loggers
    (``result.json``: the loaders and the confirmation read it) are still added as usual."""

    def __init__(self) -> None:  # noqa: D107 — TBXLoggerCallback's own imports tensorboardX and keeps writers
        LoggerCallback.__init__(self)

    def log_trial_start(self, trial: Any) -> None:
        pass

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        pass

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        pass


def with_loggers(callbacks: list) -> list:
    """The study's callbacks without Tune's TensorBoard logger (:class:`NoTensorBoard`). Tune's new output engine
    prints a "Configuration for experiment" box and a TensorBoard hint at every start whatever the verbosity; the
    commands select the old one, silent at ``verbose=0`` (``driver.quiet_libraries``): the study prints its own plan
    and progress."""
    return [*callbacks, NoTensorBoard()]


def make_tuner(plan: Plan, gpus: float, callbacks: list) -> Any:
    run_config = tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=with_loggers(callbacks),
        verbose=0,  # the ProgressTable callback prints the few columns that matter
    )
    tune_config = tune.TuneConfig(
        search_alg=make_searcher(plan),
        scheduler=make_scheduler(plan.scheduler),
        num_samples=plan.num_samples,
        reuse_actors=REUSE_ACTORS,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return tune.Tuner(make_trainable(plan, gpus), tune_config=tune_config, run_config=run_config)


def finished_trials(results: Any) -> int:
    """Trials of a Tune ``ResultGrid`` that really ended: errored, or terminated after reporting at least one
    epoch. (A trial still pending when Ctrl-C stops the run is also marked terminated by Tune, with no result;
    counting it would make an interrupted study look finished.)"""
    return sum(1 for r in results if r.error is not None or "epoch" in (r.metrics or {}))
