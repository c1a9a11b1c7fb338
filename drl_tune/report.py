"""The study report: ``python -m drl_tune.report --name STUDY [--storage DIR] | --path DIR [--out DIR]``.

Writes one self-contained HTML file (figures embedded, the answer table, the search table, the commands that
reproduce the study) and prints its path. Reads the study's Tune results folder; ``--mlflow-uri URI`` reads
the study from MLflow instead (e.g. a remote ``mlflow server``). Bad input — no such study, no trials, every
trial errored, an MLflow server that does not answer — prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drl_tune.ground.guard import exit_command, guarded
from drl_tune.ground.paths import PathError, check_writable

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drl_tune.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", help="study name (folder under --storage; MLflow experiment name with --mlflow-uri)")
    p.add_argument("--storage", type=Path, help="results folder of python -m drl_tune.run (default: runs/studies)")
    p.add_argument("--path", type=Path, help="the study folder itself (instead of --name/--storage)")
    p.add_argument("--mlflow-uri", help="read the study from this MLflow tracking URI instead of its folder")
    p.add_argument("--out", type=Path, help="output folder (default: STUDY/report)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    return p.parse_args(argv)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from drl_tune.analysis.html_report import write_report
    from drl_tune.analysis.load import StudyError, load_mlflow, resolve_study_dir

    try:
        if args.mlflow_uri:
            if not args.name:
                raise StudyError("--mlflow-uri needs --name (the study's MLflow experiment)")
            study = load_mlflow(args.mlflow_uri, args.name)
            folder = study.study_dir
            out = args.out or (folder / "report" if folder else Path(f"{study.name}-report"))
            check_writable(out, "--out")
            path = write_report(folder or out, out=out, study=study)
        else:
            folder = resolve_study_dir(args.name, args.storage, args.path)
            check_writable(args.out or folder / "report", "--out" if args.out else "the report folder")
            path = write_report(folder, out=args.out)
    except (StudyError, PathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report: {path.resolve()}")
    return 0


if __name__ == "__main__":
    exit_command(main())
