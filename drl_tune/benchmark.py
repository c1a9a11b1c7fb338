"""python -m drl_tune.benchmark — one comparison over several datasets, as one resumable job, and its table.

    python -m drl_tune.benchmark --spaces demo_compare avdigits_compare --name B
    python -m drl_tune.benchmark --spaces demo_compare avdigits_compare --methods joint,drl,aux_heads \\
        --methods-from examples/my_method.py --name B
    python -m drl_tune.benchmark --resume --name B
    python -m drl_tune.benchmark --from runs/studies/demo_compare-… runs/studies/avdigits_compare-… --name B

Each dataset is a normal study (equal budgets, confirmation over fresh seeds, its own MLflow parent run) in
STORAGE/NAME/studies/; the table (Markdown, LaTeX, CSV, JSON, HTML) is written to STORAGE/NAME/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from drl_tune.driver import (
    EXIT_BAD_INPUT,
    UsageError,
    add_progress_args,
    count,
    positive_int,
    progress_of,
    quiet_libraries,
)
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.paths import PathError, check_writable
from drl_tune.methods.user import check_resumed_files, use_methods
from drl_tune.study.plan import DEFAULT_STORAGE
from drl_tune.suite import Benchmark, check_benchmark, run_benchmark
from drl_tune.training.config import parse_assignments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spaces", nargs="+", default=[], metavar="SPACE",
                   help="comparison spaces, one per dataset (names or .yaml files), in the table's column order")
    p.add_argument("--from", dest="finished", nargs="+", default=[], type=Path, metavar="STUDY",
                   help="finished study folders to put in the table as they are (their answers)")
    p.add_argument("--methods", help="comma-separated methods to compare (default: each space's own)")
    p.add_argument("--methods-from", action="append", default=[], metavar="FILE",
                   help="register the Method subclasses of this .py file (your own method; repeatable)")
    p.add_argument("--name", help="the benchmark's folder under --storage (default: bench-YYYYmmdd-HHMMSS)")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE, help=f"results folder (default: {DEFAULT_STORAGE})")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every space (repeatable)")
    p.add_argument("--num-samples", type=positive_int, help="search trials per study (default: each space's)")
    p.add_argument("--confirm-seeds", type=count, help="fresh seeds per confirmed configuration (default: each "
                                                       "space's)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--resume", action="store_true", help="finish the benchmark --name (its studies as they stand)")
    add_progress_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show the libraries' start-up lines")
    return p.parse_args(argv)


def benchmark_from_args(args: argparse.Namespace) -> Benchmark:
    if args.resume:
        if not args.name:
            raise UsageError("--resume needs the --name of the benchmark to finish")
        changed = [f for f, v in (("--spaces", args.spaces), ("--from", args.finished), ("--methods", args.methods),
                                  ("--set", args.assignments), ("--num-samples", args.num_samples),
                                  ("--confirm-seeds", args.confirm_seeds is not None)) if v]
        if changed:
            raise UsageError(f"--resume finishes the saved benchmark; {changed[0]} cannot change it")
        bench = Benchmark.read(args.storage / args.name)
        check_resumed_files(args.methods_from, bench.method_files, "benchmark")
        return bench
    if not args.spaces and not args.finished:
        raise UsageError("give --spaces (one comparison space per dataset) and/or --from (finished studies)")
    labels = [Path(s).stem for s in args.spaces] + [Path(f).name for f in args.finished]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two datasets of the table have one name: {', '.join(labels)}")
    name = args.name or time.strftime("bench-%Y%m%d-%H%M%S")
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name must be a plain folder name, got {name!r}")
    if (args.storage / name).exists():
        raise UsageError(f"benchmark {args.storage / name} exists; finish it with --resume --name {name}, or choose "
                         f"another --name")
    sources = use_methods(args.methods_from)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else []
    return Benchmark(name=name, storage=str(args.storage.resolve()), spaces=list(args.spaces), methods=methods,
                     overrides=parse_assignments(args.assignments), num_samples=args.num_samples,
                     confirm_seeds=args.confirm_seeds, method_files=[s.to_dict() for s in sources],
                     finished={Path(f).name: str(Path(f).resolve()) for f in args.finished})


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        check_writable(args.storage, "--storage")
        bench = benchmark_from_args(args)
        check_benchmark(bench)  # every space, method and dataset, before anything starts
    except (ConfigError, PathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return run_benchmark(bench, args.address, progress_of(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    exit_command(main())
