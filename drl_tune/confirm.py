"""Confirm an existing study: ``python -m drl_tune.confirm --name STUDY``.

    python -m drl_tune.confirm --name demo-20261125-120000                 # the space's top_k and seeds
    python -m drl_tune.confirm --name my-study --seeds 10 --top-k 2        # more seeds, two configs per method
    python -m drl_tune.confirm --name my-study --resume                    # finish an interrupted confirmation
    python -m drl_tune.confirm --name my-study --answer                    # print the saved answer again

Re-trains the best configurations of each method (ranked on validation accuracy) with fresh seeds as Tune
trials in ``STUDY/confirm/`` and writes the answer (``answer.json``, ``answer.csv``): mean and 95% interval per
configuration and the paired difference against joint training. ``python -m drl_tune.run`` does this at the
end of a study unless ``--confirm-seeds 0``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drl_tune.driver import (
    EXIT_BAD_INPUT,
    UsageError,
    add_progress_args,
    confirm_study,
    count,
    positive_int,
    progress_of,
)
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.paths import PathError, check_writable
from drl_tune.methods.user import use_methods
from drl_tune.study.answer import ANSWER_JSON, answer_tables
from drl_tune.study.confirmation import (
    CONFIRM_DIR,
    CONFIRM_FILE,
    ConfirmError,
    plan_confirmation,
    read_trials,
)
from drl_tune.study.folder import open_study, read_answer, study_folder
from drl_tune.study.plan import DEFAULT_STORAGE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.confirm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="the study to confirm: its folder's name under --storage (a copied or renamed "
                                  "folder's own name)")
    p.add_argument("--path", type=Path, help="the study folder itself (instead of --name/--storage)")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help=f"results folder (default: {DEFAULT_STORAGE})")
    p.add_argument("--seeds", type=count, help="fresh seeds per configuration (default: the study's, else 5)")
    p.add_argument("--top-k", type=positive_int, help="configurations per method (default: the study's, else 1)")
    p.add_argument("--methods", help="comma-separated methods to confirm (default: every method the search ran)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted confirmation")
    p.add_argument("--answer", action="store_true", help="print the saved answer; run nothing")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    add_progress_args(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show the libraries' informational start-up lines (MLflow, Ray notices)")
    return p.parse_args(argv)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study_dir = study_folder(args.name, args.storage, args.path)
        label = study_dir.name  # how the user named the study: its folder (the recorded name is only a label)
        plan = open_study(study_dir, write=False)
        use_methods(recorded=plan.methods)  # a study of the user's own method confirms it from the recorded text
        folder = plan.study_dir / CONFIRM_DIR
        if args.answer:
            answer = read_answer(plan.study_dir, plan)
            if answer is None:
                raise UsageError(f"study {label!r} has no answer yet ({plan.study_dir / ANSWER_JSON}); confirm it "
                                 f"first")
            print(answer_tables(answer))
            return 0
        check_writable(plan.study_dir, "the study folder")  # the confirmation writes its trials and answer there
        started = (folder / CONFIRM_FILE).is_file()
        if started and not args.resume:
            raise UsageError(f"study {label!r} already has a confirmation in {folder}; finish it with --resume "
                             f"(or print its answer with --answer)")
        if args.resume and not started:
            raise UsageError(f"study {label!r} has no confirmation to resume; run without --resume")
        top_k = args.top_k or plan.confirm_top_k or 1
        seeds = args.seeds if args.seeds is not None else (plan.confirm_seeds or 5)
        if seeds == 0:
            raise UsageError("--seeds 0 confirms nothing; give at least 1 (5 is the default)")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        if not started:  # check everything before Ray starts and before anything is written
            records = read_trials(plan.study_dir)
            known = sorted({r.method for r in records})
            if methods and sorted(set(methods) - set(known)):
                raise UsageError(f"--methods: {', '.join(sorted(set(methods) - set(known)))} did not run in study "
                                 f"{label!r}; it ran {', '.join(known)}")
            plan_confirmation(records, top_k, seeds, methods, objectives=plan.objectives)
        plan = open_study(study_dir, write=True)  # every check passed: a moved folder's re-rooted plan is saved
        if plan.rerooted:
            print(plan.rerooted, flush=True)
    except (ConfigError, ConfirmError, PathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    return confirm_study(plan, top_k, seeds, methods, args.address, progress_of(args), args.verbose)


if __name__ == "__main__":
    exit_command(main())
