"""The study: ``python -m drl_tune.run --space NAME|PATH`` runs a Ray Tune hyperparameter study of a space.

    python -m drl_tune.run --space demo
    python -m drl_tune.run --space cremad --set data.root=/data/cremad --gpus-per-trial 0.5
    python -m drl_tune.run --space demo --name my-study --resume     # finish an interrupted study

Optuna (TPE, or random with --searcher random) proposes configurations, each method's official setting first,
every searched method the same number of trials; ASHA stops weak trials early;
every trial checkpoints each epoch; MLflow gets one parent run per study and one child run per trial.
Bad input (space file, --set value, dataset not prepared) stops with one message and exit code 2 before
anything starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from drl_tune.data.cache import CacheError
from drl_tune.doctor import check_before_start
from drl_tune.driver import (
    EXIT_BAD_INPUT,
    EXIT_STORAGE,
    UsageError,
    add_progress_args,
    check_dataset,
    progress_of,
    quiet_libraries,
    run_study,
)
from drl_tune.ground.domains import flag_type
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.paths import check_writable
from drl_tune.methods.user import check_resumed_files, use_methods
from drl_tune.study.cluster import ClusterError, check_address, check_storage_arg
from drl_tune.study.plan import DEFAULT_STORAGE, PLAN_FILE, Plan, build_plan
from drl_tune.study.safety import redact
from drl_tune.study.spaces import SEARCHERS, ConfirmSpec, ResourcesSpec, StudySpec, load_space
from drl_tune.training.config import parse_assignments
from drl_tune.training.config_keys import help_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.run", description=__doc__.split("\n\n")[0],
                                epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="search space name (search_spaces/NAME.yaml) or path to a .yaml file")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial (a searched key stops being searched); repeatable")
    p.add_argument("--num-samples", type=flag_type(StudySpec, "num_samples", integer=True),
                   help="number of trials (default: the space's study block)")
    p.add_argument("--max-concurrent", type=flag_type(StudySpec, "max_concurrent", integer=True),
                   help="trials running at once (default: the space's)")
    p.add_argument("--confirm-seeds", type=flag_type(ConfirmSpec, "seeds", integer=True),
                   help="fresh seeds per confirmed configuration after the search (default: the space's "
                        "study.confirm.seeds, 5); 0 skips the confirmation")
    p.add_argument("--confirm-top-k", type=flag_type(ConfirmSpec, "top_k", integer=True),
                   help="configurations per method to confirm (default: the space's study.confirm.top_k, 1)")
    p.add_argument("--cpus-per-trial", type=flag_type(ResourcesSpec, "cpus_per_trial"),
                   help="CPUs reserved per trial (also its torch threads)")
    p.add_argument("--gpus-per-trial", type=flag_type(ResourcesSpec, "gpus_per_trial"),
                   help="GPUs per trial, fractions allowed (default: the space's value when the cluster has "
                        "GPUs, else 0)")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help=f"results folder (default: {DEFAULT_STORAGE})")
    p.add_argument("--name", help="study name = folder under --storage (default: SPACE-YYYYmmdd-HHMMSS)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite database inside the study folder)")
    p.add_argument("--seed", type=flag_type(StudySpec, "seed", integer=True),
                   help="Optuna sampler seed (default: the space's study.seed)")
    p.add_argument("--objectives", type=lambda text: [t for t in text.split(",") if t.strip()],
                   metavar="METRIC:MODE,...",
                   help="a multi-objective search, e.g. val/acc_best:max,balance/gap:min (each at the best-validation "
                        "epoch; default: the space's study.objectives)")
    p.add_argument("--searcher", choices=SEARCHERS,
                   help="Optuna sampler: tpe (adaptive), random (i.i.d. draws: an unbiased budget curve) or nsga2 "
                        "(multi-objective); default: the space's study.searcher, tpe")
    p.add_argument("--methods-from", action="append", default=[], metavar="FILE",
                   help="register the Method subclasses of this .py file (your own method; repeatable); the study "
                        "records the file's text, so its trials and --resume run the same method")
    p.add_argument("--resume", action="store_true", help="finish the interrupted study --name (default: the latest)")
    p.add_argument("--path", type=Path, help="with --resume: the study folder itself (instead of --storage/--name); "
                                             "a moved, copied or renamed folder resumes as itself")
    p.add_argument("--address", help="Ray cluster address (e.g. auto or ray://host:10001); default: a local Ray")
    p.add_argument("--dry-run", action="store_true", help="print the resolved space and plan; run nothing (its fixed "
                                                           "keys: the ones that matter; with -v: every one)")
    p.add_argument("--show-all", action="store_true",
                   help="the plan (--dry-run, and the study's start) lists every fixed key, also those at their "
                        "defaults (perf.* switches, feature-encoder sizes, a generated dataset's knobs)")
    add_progress_args(p)
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end (drl_tune.report)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show the libraries' informational start-up lines (MLflow, Ray notices); with "
                        "--dry-run: every fixed key of the plan")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
# planning (no Ray yet: everything here can fail with a clear message before anything starts)


def latest_study(storage: Path, space: str | None) -> Path:
    plans = sorted((p for p in storage.glob(f"*/{PLAN_FILE}") if space is None or _plan_space(p) == space),
                   key=lambda p: p.stat().st_mtime)
    if not plans:
        raise UsageError(f"--resume: no study found in {storage}" + (f" for space {space!r}" if space else "")
                         + "; pass --name and --storage of the study to resume")
    return plans[-1].parent


def _plan_space(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("space_name")
    except (OSError, ValueError, AttributeError):
        return None  # not a plan of this tool: never the one to resume


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.resume:
        if args.dry_run:
            raise UsageError("--resume and --dry-run exclude each other")
        ignored = [flag for flag, value in (("--set", args.assignments), ("--num-samples", args.num_samples),
                                            ("--seed", args.seed), ("--mlflow-uri", args.mlflow_uri),
                                            ("--searcher", args.searcher), ("--objectives", args.objectives),
                                            ("--confirm-seeds", args.confirm_seeds is not None),
                                            ("--confirm-top-k", args.confirm_top_k)) if value]
        if ignored:
            raise UsageError(f"--resume continues the saved plan; {ignored[0]} cannot change it")
        from drl_tune.study.folder import open_study, study_folder

        try:
            study_dir = (study_folder(args.name, args.storage, args.path) if args.name or args.path
                         else latest_study(args.storage, _space_name(args.space)))
            plan = open_study(study_dir, write=False)  # written (re-rooted plan saved) once the checks pass
        except ConfigError as err:
            raise UsageError(f"--resume: {err}") from None
        use_methods(recorded=plan.methods)  # the methods the study started with, as their text was then
        check_resumed_files(args.methods_from, plan.methods, "study")
        return plan
    if args.path:
        raise UsageError("--path names an existing study folder: use it with --resume (a new study takes --storage "
                         "and --name)")
    if args.storage.exists() and not args.storage.is_dir():
        raise UsageError(f"--storage {args.storage} is a file, not a folder; pass the folder that holds (or will "
                         f"hold) the studies")
    if not args.space:
        raise UsageError("--space is required (a name such as demo, or a path to a .yaml file)")
    sources = use_methods(args.methods_from)  # before the space: its methods and keys must be known
    space = load_space(args.space)
    overrides = parse_assignments(args.assignments)
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name must be a plain folder name, got {name!r}")
    if (args.storage / name / PLAN_FILE).exists() and not args.dry_run:
        raise UsageError(f"study {args.storage / name} exists; resume it with --resume --name {name}, "
                         f"or choose another --name")
    if args.mlflow_uri and args.mlflow_uri.startswith("sqlite:") and not args.mlflow_uri.startswith("sqlite:////"):
        raise UsageError(f"--mlflow-uri {args.mlflow_uri}: a sqlite URI must hold an absolute path "
                         f"(sqlite:////abs/path/mlflow.db): Tune runs each trial in its own working folder")
    plan = build_plan(space, overrides=overrides, name=name, storage=args.storage, mlflow_uri=args.mlflow_uri,
                      num_samples=args.num_samples, max_concurrent=args.max_concurrent, seed=args.seed,
                      cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                      confirm_seeds=args.confirm_seeds, confirm_top_k=args.confirm_top_k, searcher=args.searcher,
                      objectives=args.objectives)
    plan.methods = [source.to_dict() for source in sources]
    return plan


def check_output_paths(plan: Plan, args: argparse.Namespace) -> None:
    """Every folder the study will write — the study folder under ``--storage`` and the folder of an
    ``--mlflow-uri sqlite:///…`` database — can be created and written, with free space, before anything starts."""
    check_writable(plan.study_dir if args.resume else args.storage, "--resume study folder" if args.resume
                   else "--storage")
    if plan.mlflow_uri.startswith("sqlite:///") and not args.resume:
        database = Path(plan.mlflow_uri.removeprefix("sqlite:///"))
        if database.parent != plan.study_dir:
            check_writable(database.parent, "--mlflow-uri folder")


def _space_name(space: str | None) -> str | None:
    return Path(space).stem if space else None


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        check_storage_arg(args.storage)
        if args.address:
            check_address(args.address)  # seconds, before the dataset check: Ray would retry for minutes
        plan = plan_from_args(args)
        check_output_paths(plan, args)
        if not args.dry_run and not check_before_start():  # a torch family that does not load: one line
            return EXIT_BAD_INPUT
        check_dataset(plan, generate=not args.dry_run)
        if args.resume:  # every check passed: now the resumed folder's re-rooted plan is written (a moved folder)
            from drl_tune.study.folder import open_study

            plan = open_study(plan.study_dir, write=True)
            if plan.rerooted:
                print(plan.rerooted, flush=True)
    except (ConfigError, CacheError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print(redact(plan.describe(show_all=args.show_all or args.verbose)))
        print("\n(dry run: nothing started)")
        return 0
    try:
        return run_study(plan, args.resume, args.address, progress_of(args), not args.no_report,
                         show_all=args.show_all)
    except (UsageError, ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # a full or read-only disk surfaces from Tune, MLflow or our own writes
        from drl_tune.study.faults import storage_message

        message = storage_message(err, plan)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_STORAGE


if __name__ == "__main__":
    exit_command(main())
