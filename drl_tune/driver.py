"""How a study runs, from a checked plan to its answer: the search (Ray Tune), the confirmation over fresh seeds, the
answer, the Optuna Dashboard copy, the HTML report and the MLflow review — one module that the commands call
(``python -m drl_tune.run`` starts or resumes a study, ``python -m drl_tune.confirm`` confirms one), so neither
command holds the study's orchestration or imports the other's private names.

It sits above ``analysis`` (the report) and below the commands; everything before :func:`run_study` (the checks)
runs before Ray starts, so bad input stops with one line and nothing written.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from drl_tune.ground.domains import Domain, flag, flag_type
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import Stopped
from drl_tune.study.mlflow_db import NewDatabase
from drl_tune.study.plan import Plan
from drl_tune.study.safety import redact
from drl_tune.study.spaces import ConfirmSpec, StudySpec
from drl_tune.study.stop import StopSignals
from drl_tune.study.tables import ProgressSpec
from drl_tune.training.config import make_config

EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3  # the results storage is full or read-only


class UsageError(ConfigError):
    """Bad command-line input (reported like a config error: one message, exit code 2)."""


# every numeric flag parses through the domain its value has in the space file (ground/domains.py): one sentence,
# naming the flag, the value and what is allowed, before anything starts
positive_int = flag_type(StudySpec, "num_samples", integer=True)  # also --top-k of drl_tune.confirm
count = flag_type(ConfirmSpec, "seeds", integer=True)  # >= 0; also --seeds of drl_tune.confirm
seconds = flag(Domain(ge=0))


def add_progress_args(p: Any) -> None:
    """``--progress`` and ``--progress-interval``: the same for every command that runs trials."""
    from drl_tune.study.tables import PROGRESS_MODES

    p.add_argument("--progress", choices=PROGRESS_MODES, default="line",
                   help="line: a status line (in place on a terminal) and one line per trial event; table: also "
                        "the whole trial table every --progress-interval seconds")
    p.add_argument("--progress-interval", type=seconds, default=15.0,
                   help="seconds between status lines when the output is not a terminal, and between tables")


def progress_of(args: Any) -> ProgressSpec:
    return ProgressSpec(args.progress, args.progress_interval)


# ---------------------------------------------------------------------------------------------------------
# checks before anything starts


def check_dataset(plan: Plan, generate: bool = True) -> None:
    """Load the dataset the trials will read (a real one's cache; a generated one is made here once, so
    concurrent trials never generate it twice). Raises CacheError naming where it looked. ``generate=False``
    (the dry run) leaves a generated set to the run: making it computes audio features, which a dry run
    should need no torchaudio for."""
    from drl_tune.data import GENERATED, load_dataset

    config = make_config({**plan.constants, **(plan.points_to_evaluate or [{}])[0]})
    if generate or config.data.name not in GENERATED:
        data = load_dataset(config.data)
        modalities = [m for m in data.modalities if not config.data.modalities or m in config.data.modalities]
        check_methods_fit(plan, modalities)
        check_objectives(plan, modalities, config.data.name)


def check_objectives(plan: Plan, modalities: list[str], dataset: str) -> None:
    """Every objective names a modality the data have: ``val/acc_<m>`` (or ``val/acc_weak`` through
    ``study.weak_modality``) is a probe the engine reports only for the modalities it trains, so a Tune run with
    another would end in a TuneError after its first trial — checked here, before Ray starts, like every other key."""
    from drl_tune.study.spaces import OBJECTIVES

    allowed = ", ".join([*OBJECTIVES, *(f"val/acc_{m}" for m in modalities)])
    for objective in plan.objectives:
        key = objective["key"]
        if key.startswith("at_best_val/acc_") and key.removeprefix("at_best_val/acc_") not in modalities:
            modality = key.removeprefix("at_best_val/acc_")
            via = " (study.weak_modality)" if objective["metric"] == "val/acc_weak" else ""
            raise UsageError(f"objective {objective['metric']!r}{via} names modality {modality!r}, which dataset "
                             f"{dataset} does not have ({', '.join(modalities)}); allowed objectives: {allowed}")


def check_methods_fit(plan: Plan, modalities: list[str]) -> None:
    """Every method the study runs is defined for this many modalities (a comparator whose authors' rule compares
    a pair refuses three before anything starts, not in every one of its trials)."""
    from drl_tune.methods import REGISTRY
    from drl_tune.methods.base import modality_mismatch

    method = next((p for p in plan.search if p.key == "method"), None)
    methods = list(method.samples()) if method is not None else [plan.constants.get("method", "joint")]
    for name in methods:
        mismatch = modality_mismatch(REGISTRY[name], name, modalities)
        if mismatch:
            raise UsageError(mismatch + (" (or leave it out of search.method)" if method is not None else ""))


# ---------------------------------------------------------------------------------------------------------
# running


def start_ray(address: str | None, plan: Plan) -> bool:
    """Join ``address``, the Ray job's cluster, or start a local Ray (drl_tune/study/cluster.py says which when) whose
    prestarted workers take the plan's first trials (``study.cluster.local_workers``); False if Ray was
    already running here. Prints which Ray it is as the first line."""
    import ray

    from drl_tune.study.cluster import connect, local_workers, starts_local

    if ray.is_initialized():
        return False
    preload, env = local_workers(plan.cpus_per_trial, plan.max_concurrent) if starts_local(address) else ((), {})
    # trial processes' own log lines (Tune's "checkpoint created" chatter) stay in the trial logs; the driver
    # prints the progress table, trial endings and errors
    print(connect(address, preload, env), flush=True)
    return True


class LocalRay:
    """The Ray a study's driver started (or None: it joined one, which it leaves running), and its shutdown.

    Ray's shutdown is mostly waiting for its processes to exit (2.5 s of a demo study's driver, py-spy). Once the
    study's last Tune run has ended, :meth:`release` starts it in a thread, so the answer, MLflow's review and the
    report are written meanwhile; :meth:`close` waits for it (or shuts Ray down now if nothing released it)."""

    def __init__(self, started: bool) -> None:
        self.started = started
        self._thread: threading.Thread | None = None

    def release(self) -> None:
        if self.started and self._thread is None:
            import ray

            self._thread = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if not self.started:
            return
        if self._thread is None:
            import ray

            ray.shutdown()
        else:
            self._thread.join()


def resolve_gpus(plan: Plan) -> float:
    """GPUs per trial: the plan's when the cluster has GPUs, else 0 — so one command works on both."""
    import ray

    available = float(ray.cluster_resources().get("GPU", 0))
    if available > 0:
        return plan.gpus_per_trial
    if plan.gpus_explicit and plan.gpus_per_trial > 0:
        raise UsageError(f"--gpus-per-trial {plan.gpus_per_trial:g} asked for, but the Ray cluster has no GPU; "
                         f"use --gpus-per-trial 0 (or leave it out) to run on CPUs")
    return 0.0


def trial_slots(plan: Plan, gpus: float) -> int:
    """How many trials run at once: the plan's limit, or fewer where the cluster's CPUs (GPUs) hold fewer."""
    import ray

    total = ray.cluster_resources()
    fits = [plan.max_concurrent, int(total.get("CPU", 0) // plan.cpus_per_trial) if plan.cpus_per_trial else None,
            int(total.get("GPU", 0) // gpus) if gpus else None]
    return max(1, min(n for n in fits if n is not None))


def open_tracking(plan: Plan, resumed: bool) -> Any:
    """The study's MLflow experiment and parent run (created once; re-opened on --resume)."""
    from drl_tune.study.tracking import StudyTracker, git_commit

    # a tracking server keeps the artifacts itself (proxied), so a laptop reviewing the study can read them
    remote = plan.mlflow_uri.startswith(("http://", "https://"))
    tracker = StudyTracker(plan.mlflow_uri, plan.name, artifact_dir=None if remote else plan.study_dir / "mlartifacts")
    if resumed and plan.parent_run_id:
        tracker.reopen_parent(plan.parent_run_id)
        return tracker
    plan.experiment_id = tracker.experiment_id
    plan_path = plan.save()
    space_copy = plan.study_dir / Path(plan.space_path).name
    shutil.copyfile(plan.space_path, space_copy)
    tags = {"drl_tune.space": plan.space_name, "drl_tune.study": plan.name, "drl_tune.storage": str(plan.study_dir)}
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    params = {"space": plan.space_name, "num_samples": plan.num_samples, "metric": plan.metric,
              "seed": plan.seed, "max_concurrent": plan.max_concurrent,
              **{f"set.{k}": v for k, v in plan.overrides.items()}}
    plan.parent_run_id = tracker.start_parent(plan.name, tags, params, {"": space_copy})
    plan.save()
    tracker.client.log_artifact(plan.parent_run_id, str(plan_path))
    tracker.client.log_text(plan.parent_run_id, redact(plan.describe(show_all=True)), "plan.txt")  # the record
    return tracker


def review(plan: Plan, write_report: bool) -> tuple[Path | None, str]:
    """The end of a study: the HTML report (unless skipped) and the MLflow review (parent-run summary metrics and
    artifacts, the saved runs view); returns the report's path and the URL that opens the review. A failure here
    is reported and leaves the study's results as they are."""
    from drl_tune.analysis.publish import publish_study
    from drl_tune.study.tracking import review_url

    report = None
    if write_report:
        try:
            from drl_tune.analysis.html_report import write_report as write

            report = write(plan.study_dir)
        except Exception as err:  # noqa: BLE001 — the study itself succeeded; say what failed, keep going
            print(f"report: not written ({type(err).__name__}: {err}); try python -m drl_tune.report "
                  f"--path {plan.study_dir}", file=sys.stderr, flush=True)
    try:
        view = publish_study(plan.mlflow_uri, plan.experiment_id, plan.parent_run_id, plan.study_dir, report)
    except Exception as err:  # noqa: BLE001
        print(f"MLflow review: summary not published ({type(err).__name__}: {err})", file=sys.stderr, flush=True)
        view = None
    return report, review_url(plan.mlflow_uri, plan.experiment_id, view=view)


def sync_optuna_db(plan: Plan) -> str | None:
    """Write the search's trials to ``STUDY/optuna.db`` for Optuna Dashboard (drl_tune/study/optuna_db.py says why
    from the trials); returns the command that opens it. A failure is one line: the study's results stand."""
    from drl_tune.study.confirmation import read_trials
    from drl_tune.study.optuna_db import dashboard_command, write_optuna_db

    try:
        write_optuna_db(plan, read_trials(plan.study_dir))
    except Exception as err:  # noqa: BLE001 — the dashboard's copy is a convenience, not the study's record
        print(f"optuna.db: not written ({type(err).__name__}: {err})", file=sys.stderr, flush=True)
        return None
    return dashboard_command(plan.study_dir)


def resume_command(plan: Plan) -> str:
    """The command that finishes this study, as the stop line prints it."""
    return f"python -m drl_tune.run --resume {plan.resume_args()}"


def run_study(plan: Plan, resumed: bool, address: str | None, progress: ProgressSpec,
              write_report: bool = True, show_all: bool = False) -> int:
    """The search, then (``plan.confirm_seeds`` > 0) the confirmation and its answer; the report and the MLflow
    review at the end; exit code. The plan printed at the start lists the fixed keys that matter (``show_all``:
    every one; the MLflow run's ``plan.txt`` always has every one)."""
    from drl_tune.study import ray_session
    from drl_tune.study.stop import stop_signals

    try:  # a SIGKILLed earlier driver of this study may have left Ray processes behind: stop those (only those)
        cleaned = ray_session.clean_previous(plan.study_dir)
    except ray_session.StudyRunning as err:
        raise UsageError(str(err)) from None
    if cleaned:
        print(cleaned, flush=True)
    database = NewDatabase(plan.mlflow_uri, plan.study_dir.parent)
    if not resumed:
        database.start()  # MLflow's tables are created while Ray starts
    local = LocalRay(start_ray(address, plan))
    try:
        with stop_signals() as stop:  # after Ray's start, whose own SIGTERM handler dumps a native stack
            try:
                code = _run_study(plan, resumed, address, progress, write_report, show_all, local, stop, database)
            except Stopped as stopped:
                print(f"\nstopped by {stop.name or stopped}: what had finished is saved in {plan.study_dir}; finish "
                      f"it with  {resume_command(plan)}", flush=True)
                code = stopped.exit_code
        return code
    finally:
        database.discard()
        ray_session.mark_ended(plan.study_dir)
        local.close()


def _run_study(plan: Plan, resumed: bool, address: str | None, progress: ProgressSpec, write_report: bool,
               show_all: bool, local: LocalRay, stop: StopSignals, database: NewDatabase) -> int:
    from ray import tune

    from drl_tune.study import ray_session
    from drl_tune.study.cluster import preflight, starts_local
    from drl_tune.study.confirmation import EarlyConfirmation
    from drl_tune.study.tables import ProgressTable
    from drl_tune.study.tracking import MLflowTrialCallback
    from drl_tune.study.tune import WarmNextStage, make_trainable, make_tuner, reroot_restored, search_callbacks

    gpus = resolve_gpus(plan)
    # every node can read the dataset and write the storage — checked before this study writes anything
    preflight({**plan.constants, **(plan.points_to_evaluate or [{}])[0]}, plan.storage, plan.cpus_per_trial,
              gpus)
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    ray_session.record(plan.study_dir, ray_session.describe_local_ray() if local.started and not address else None)
    database.adopt()
    tracker = open_tracking(plan, resumed)
    print(redact(plan.describe(show_all)) if not resumed else f"resuming study {plan.name!r} in {plan.study_dir}",
          flush=True)
    start = time.monotonic()
    if resumed:
        tuner = tune.Tuner.restore(str(plan.study_dir), trainable=make_trainable(plan, gpus),
                                   resume_unfinished=True, resume_errored=False)
        reroot_restored(tuner, plan, plan.study_dir, progress)
        early = next((c for c in search_callbacks(tuner) if isinstance(c, EarlyConfirmation)), None)
    else:
        callbacks = [MLflowTrialCallback(plan.mlflow_uri, plan.experiment_id, plan.parent_run_id, plan.name),
                     ProgressTable(plan, progress)]
        early = EarlyConfirmation(plan.num_samples) if plan.confirm_seeds > 0 and not plan.objectives else None
        if early is not None:  # each method's confirmation starts once its own search trials have ended
            callbacks.append(early)
        if plan.confirm_seeds > 0 and local.started and starts_local(address):  # workers for the confirmation
            callbacks.append(WarmNextStage(plan.num_samples, trial_slots(plan, gpus)))
        tuner = make_tuner(plan, gpus, callbacks)
    if early is not None:
        early.attach(plan, gpus, progress, plan.confirm_top_k, plan.confirm_seeds)
    hurry = False
    try:
        return _search_and_confirm(plan, tuner, early, gpus, tracker, progress, write_report, local, stop, start)
    except KeyboardInterrupt:
        hurry = True  # a second signal stops at once: the confirmation's thread is not waited for
        raise
    finally:
        if early is not None:
            early.abandon(wait=not hurry)  # a confirmation started early still running as the study ends otherwise


def _search_and_confirm(plan: Plan, tuner: Any, early: Any, gpus: float, tracker: Any, progress: ProgressSpec,
                        write_report: bool, local: LocalRay, stop: StopSignals, start: float) -> int:
    from drl_tune.study.answer import answer_tables
    from drl_tune.study.cluster import review_command
    from drl_tune.study.confirmation import CONFIRM_DIR, CONFIRM_FILE, run_confirmation
    from drl_tune.study.faults import storage_message
    from drl_tune.study.stop import fit_watch
    from drl_tune.study.tables import outcomes, summary_table
    from drl_tune.study.tracking import ui_command
    from drl_tune.study.tune import finished_trials

    # a confirmation already under way means the search had finished: read it, don't run it again
    confirming = (plan.study_dir / CONFIRM_DIR / CONFIRM_FILE).is_file()
    with fit_watch():
        results = tuner.get_results() if confirming else tuner.fit()
    items = outcomes(results)
    finished = finished_trials(results)
    interrupted = stop.is_set() or finished < plan.num_samples
    table = summary_table(items, plan)
    print(f"\nsearch of study {plan.name!r} ({len(items)} trials, {time.monotonic() - start:.0f} s"
          + (", INTERRUPTED" if interrupted else "") + "): one seed per trial — the best of many noisy trials "
          "is optimistic" + (", the confirmation is the answer" if plan.confirm_seeds else ""), flush=True)
    print(table, flush=True)
    answer = None
    if not interrupted and plan.confirm_seeds > 0:
        answer, interrupted = run_confirmation(plan, gpus, tracker, progress, top_k=plan.confirm_top_k,
                                               n_seeds=plan.confirm_seeds, strict=False, early=early)
    local.release()  # the last Tune run has ended: Ray shuts down while the rest is written
    dashboard = sync_optuna_db(plan)
    wall = time.monotonic() - start
    best = [i for i in items if not math.isnan(i.val_acc_best) and i.status != "error"]
    metrics = {"trials": float(len(items)), "wall_s": wall}
    if best:
        top = max(best, key=lambda i: i.val_acc_best)
        metrics |= {"best/val_acc": top.val_acc_best, "best/test_acc_at_best_val": top.test_at_best_val}
    summary = "search (one seed per trial, optimistic):\n" + table
    if answer is not None:
        text = answer_tables(answer)
        summary += "\n\nanswer (confirmation over fresh seeds):\n" + text
        print(f"\nanswer of study {plan.name!r} ({wall:.0f} s in all):\n{text}", flush=True)
    tracker.finish_parent(plan.parent_run_id, "KILLED" if interrupted else "FINISHED", metrics, summary)
    report, url = review(plan, write_report and not interrupted)
    print(f"\nresults: {plan.study_dir}" + (f"  (answer: {plan.study_dir / 'answer.json'}, answer.csv)"
                                            if answer is not None else ""), flush=True)
    if report:
        print(f"report:  {report}")
    print(f"MLflow:  {redact(plan.mlflow_uri)}  (experiment {plan.name!r})")
    print(f"review:  {redact(review_command(plan.mlflow_uri, plan.experiment_id, ui_command(plan.mlflow_uri)))}")
    print(f"         then open {redact(url)}")
    if dashboard:
        print(f"optuna:  {dashboard}")
    if interrupted:
        saved = (f"{finished} of {plan.num_samples} search trials finished" if answer is None and
                 finished < plan.num_samples else "the search finished, the confirmation not")
        print(f"{'stopped by ' + stop.name if stop.is_set() else 'interrupted'}: {saved}, saved in "
              f"{plan.study_dir}; finish it with  {resume_command(plan)}", flush=True)
        return stop.exit_code
    full = next((m for m in (storage_message(i.error, plan) for i in items if i.status == "error") if m), None)
    if full:  # trials failed because results could not be written: say so, and which path
        print(f"error: {full}", file=sys.stderr)
        return EXIT_STORAGE
    return 1 if items and all(i.status == "error" for i in items) else 0


# notices libraries log that say nothing about this study (dropped unless -v): Ray's note that a local cluster has
# token authentication on by default (it stays on; the note only says how to turn it off), Tune's on a stop
LIBRARY_NOTICES = {
    "ray._private.authentication.authentication_token_setup":
        ("Token authentication is enabled for this Ray cluster.",),
    # a stop signal: Tune's two warnings name its own Tuner.restore(); the study prints one line with --resume
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted"),
}


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_libraries(verbose: bool = False) -> None:
    """The first screen is the study's own: per-epoch checkpoints are the point here, so Tune's warning about
    frequent experiment snapshots is noise; unless ``verbose``, MLflow's INFO lines (creating its database
    tables) and the known start-up notices above are left out. Every other warning still shows."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's new output engine prints a "Configuration for experiment" box and a TensorBoard hint at every start
    # whatever the verbosity; the old one is silent at verbose=0 (the study prints its own plan and progress)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    for name, prefixes in LIBRARY_NOTICES.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _DropNotices)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(_DropNotices(prefixes))
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])  # in case it already was


def confirm_study(plan: Plan, top_k: int, seeds: int, methods: list[str] | None, address: str | None,
                  progress: ProgressSpec, verbose: bool = False) -> int:
    """The confirmation of a finished search on its own (``python -m drl_tune.confirm``, the plan and its arguments
    checked): re-train the top configurations with fresh seeds, write and print the answer; exit code."""
    from drl_tune.ground.paths import PathError
    from drl_tune.study.answer import ANSWER_JSON, answer_tables
    from drl_tune.study.confirmation import ConfirmError, run_confirmation
    from drl_tune.study.stop import stop_signals

    quiet_libraries(verbose)
    local = LocalRay(start_ray(address, plan))
    resume = f"python -m drl_tune.confirm --resume {plan.resume_args()}"
    try:
        with stop_signals() as stop:  # after Ray's start, whose own SIGTERM handler dumps a native stack
            gpus = resolve_gpus(plan)
            tracker = open_tracking(plan, resumed=True)
            answer, interrupted = run_confirmation(plan, gpus, tracker, progress, top_k=top_k,
                                                   n_seeds=seeds, methods=methods)
            local.release()
            if interrupted or answer is None:
                tracker.finish_parent(plan.parent_run_id, "KILLED", {}, None)
                print(f"{'stopped by ' + stop.name if stop.is_set() else 'interrupted'}: the finished confirmation "
                      f"trials are saved in {plan.study_dir}; finish it with  {resume}", flush=True)
                return stop.exit_code
            text = answer_tables(answer)
            tracker.finish_parent(plan.parent_run_id, "FINISHED", {}, None)
            tracker.client.log_text(plan.parent_run_id, text, "answer.txt")
            print(f"\nanswer of study {plan.name!r}:\n{text}\n\nanswer: {plan.study_dir / ANSWER_JSON}", flush=True)
            return 0
    except Stopped as stopped:
        print(f"\nstopped by {stopped}: finish it with  {resume}", flush=True)
        return stopped.exit_code
    except (ConfigError, ConfirmError, PathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        local.close()
