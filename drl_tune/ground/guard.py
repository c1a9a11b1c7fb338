"""The last line of defence of every command: an unexpected exception becomes one line, not a traceback.

Each command handles the errors it knows (bad input: exit 2 with its own message). Anything else is a defect or an
environment problem the command did not foresee; the user gets ``error: <what>; rerun with -v for the traceback``
and exit 1, and ``-v`` (every command has it) shows the traceback. Ctrl-C is exit 130 with one line.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Sequence

EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def _verbose(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return any(a in ("-v", "--verbose") for a in args)


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main(argv)``: its own exits pass through (argparse's SystemExit too); any other exception
    is printed as one line naming its type and message, exit 1; the traceback only with ``-v``."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as err:  # noqa: BLE001 — the point of the guard
            verbose = _verbose(argv)
            if verbose:
                traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0]
            what = f"{type(err).__name__}: {first}" if first else type(err).__name__
            print(f"error: {what}" if verbose else f"error: {what}; rerun with -v for the traceback", file=sys.stderr)
            return EXIT_UNEXPECTED

    return run
