"""What a trial leaves in its folder so failures can be explained and handled: which process runs it, and why
it failed.

* ``drl_tune_worker.json`` — pid, host and start time of the process running the trial's current attempt
  (rewritten by every attempt). An operator (or a test) finds the worker of *this* trial here instead of
  guessing by process name.
* ``drl_tune_error.json`` — the reason of the last failure in one line, and whether a retry could help.
  A non-finite loss or a bad configuration happens again, identically, when the trial is retried from its
  checkpoint (runs restore exactly), so a retry of such a trial stops at once with the same reason instead
  of training another epoch into the same wall. The MLflow callback and the summary table read the reason
  from here.

Worker deaths (SIGKILL, the OOM killer, a lost node) leave no Python handler a chance to write anything;
the driver sees them as a Ray actor error and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from drl_tune.ground.errors import ConfigError
from drl_tune.ground.io import atomic_write_json, storage_error
from drl_tune.study.safety import redact

WORKER_FILE = "drl_tune_worker.json"
ERROR_FILE = "drl_tune_error.json"
# failures that a retry from the checkpoint would reproduce exactly
DETERMINISTIC = (FloatingPointError, ConfigError)
WORKER_DIED = ("the trial's worker process died without a Python error (killed by a signal, e.g. SIGKILL "
               "or the out-of-memory killer, or its node was lost)")


def one_line(text: str, limit: int = 500) -> str:
    """The first non-empty line of ``text``, shortened: what a table cell or an MLflow tag can hold."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def record_worker(trial_dir: str | os.PathLike) -> dict[str, Any]:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with contextlib.suppress(OSError):  # informational; a full disk is reported where a checkpoint fails to save
        atomic_write_json(Path(trial_dir) / WORKER_FILE, info)
    return info


def record_error(trial_dir: str | os.PathLike, err: BaseException) -> None:
    reason = f"{type(err).__name__}: {one_line(str(err))}"
    with contextlib.suppress(OSError):
        atomic_write_json(Path(trial_dir) / ERROR_FILE,
                          {"reason": redact(reason), "deterministic": isinstance(err, DETERMINISTIC),
                           "time": time.time()})


def recorded_error(trial_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    if not trial_dir:
        return None
    path = Path(trial_dir) / ERROR_FILE
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "reason" in value else None


class RepeatedFailure(RuntimeError):
    """A retry of a trial whose previous attempt failed deterministically (same checkpoint, same failure)."""


def refuse_deterministic_retry(trial_dir: str | os.PathLike) -> None:
    previous = recorded_error(trial_dir)
    if previous and previous.get("deterministic"):
        raise RepeatedFailure(f"{previous['reason']} (not retried: a restart from the checkpoint repeats it)")


def error_reason(trial: Any) -> str:
    """One line saying why a Tune trial failed: the trainable's own record, else Ray's error."""
    # the trainable writes its record into the trial's --storage folder (study/trainable.trial_folder)
    recorded = recorded_error(getattr(trial, "path", None)) or recorded_error(getattr(trial, "local_path", None))
    if recorded:
        return str(recorded["reason"])
    error: Any = None
    try:
        error = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unreadable error file must not hide the failure itself
        error = None
    return reason_of(error) if error is not None else "unknown error (see error.txt in the trial folder)"


def reason_of(error: Any) -> str:
    """One line for a Ray/Tune error object (a worker death gets a plain explanation)."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(error, RayTaskError):
        cause = error.as_instanceof_cause()
        if isinstance(cause, RayActorError):
            return WORKER_DIED
        inner = getattr(error, "cause", None)
        if inner is not None:
            return f"{type(inner).__name__}: {one_line(str(inner))}"
    if isinstance(error, RayActorError):
        return WORKER_DIED
    return one_line(str(error)) or type(error).__name__


def storage_message(error: BaseException | str, plan: Any) -> str | None:
    """One line for a failure caused by storage that refuses writes (full, read-only, quota), else None."""
    import re

    if isinstance(error, str):
        if not re.search(r"No space left on device|Read-only file system|Disk quota exceeded|database or disk is "
                         r"full|attempt to write a readonly database", error):
            return None
        found = re.search(r"'(/[^']+)'", error)
        where, why = (found.group(1) if found else str(plan.study_dir)), one_line(error, 200)
    else:
        cause = storage_error(error)
        if cause is None:
            return None
        where = cause.filename or str(plan.study_dir)
        why = cause.strerror or one_line(str(cause), 200)
    return (f"cannot write the study's results at {where} ({why}); what was complete is kept — free space or "
            f"make {plan.study_dir} writable, then finish with: python -m drl_tune.run --resume "
            f"{plan.resume_args()}")
