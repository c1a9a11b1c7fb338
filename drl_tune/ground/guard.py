"""The last line of defence of every command: an unexpected exception becomes one line, not a traceback.

Each command handles the errors it knows (bad input: exit 2 with its own message). Anything else is a defect or an
environment problem the command did not foresee; the user gets ``error: <what>; rerun with -v for the traceback``
and exit 1, and ``-v`` (every command has it) shows the traceback. Ctrl-C is exit 130 with one line, and so is
SIGTERM (exit 143): a scheduler's or ``kill``'s stop is an expected end, not a crash.
"""

from __future__ import annotations

import functools
import gc
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shells' convention (SIGTERM: 143)


class Stopped(BaseException):
    """A stop signal (SIGTERM, or SIGINT outside the places that stop gracefully) raised where the program was.

    A ``BaseException``, as ``KeyboardInterrupt`` is: no ``except Exception`` on the way up may swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.signum)


def raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def exit_code_of(signum: int | None) -> int:
    """128 + the signal (130 for SIGINT, 143 for SIGTERM); no signal counts as an interruption (130)."""
    return EXIT_INTERRUPTED if signum in (None, signal.SIGINT) else 128 + int(signum)


def _verbose(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return any(a in ("-v", "--verbose") for a in args)


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main(argv)``: its own exits pass through (argparse's SystemExit too); any other exception
    is printed as one line naming its type and message, exit 1; the traceback only with ``-v``."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        main_thread = threading.current_thread() is threading.main_thread()
        # without this SIGTERM ends the process with no word (and, once Ray is up, with Ray's native dump)
        previous = signal.signal(signal.SIGTERM, raise_stopped) if main_thread else None
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Stopped as stop:
            print(f"stopped ({stop})", file=sys.stderr)
            return stop.exit_code
        except Exception as err:  # noqa: BLE001 — the point of the guard
            verbose = _verbose(argv)
            if verbose:
                traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0]
            what = f"{type(err).__name__}: {first}" if first else type(err).__name__
            print(f"error: {what}" if verbose else f"error: {what}; rerun with -v for the traceback", file=sys.stderr)
            return EXIT_UNEXPECTED
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    return run


def exit_command(code: int) -> NoReturn:
    """``sys.exit(code)`` for a command run as ``python -m``, without the interpreter's last garbage collection.

    At exit CPython runs one full collection over every object still alive; with torch, Ray, MLflow and pandas
    loaded that took 2.5-2.8 s of every study command here (py-spy --native: ``gc_collect_main`` after ``main``
    returned), to free memory the ending process gives back anyway. ``gc.freeze()`` moves those objects to the
    permanent generation that collection skips; atexit handlers, stream flushing and module teardown still run.
    Only at the very end of a process: called in-process (tests), ``main`` itself never freezes."""
    gc.freeze()
    sys.exit(code)
