"""Which Ray processes a study's driver started, so a later run of the same study can clean up after a driver
that was SIGKILLed — and only those: other studies and other users run their own Rays on the same machine.

What a SIGKILLed driver leaves (measured with Ray 2.60, local Ray from ``ray.init``): the GCS server, the
raylet, the autoscaler monitor, the log monitor and the dashboard die with the driver at once (Ray starts
them fate-shared with it); the trial workers die with their raylet a moment later; the DashboardAgent and
RuntimeEnvAgent are re-parented to init and linger for about a minute (little CPU) before they notice that
their raylet is gone. ``--resume`` therefore finds at most those, and stops them.

The record (``drl_tune_ray.json`` in the study folder) holds the driver's pid and the session folder; a
process belongs to the session when its pid and start time were recorded, or its command line or an open
file names the session folder. Nothing is touched while the recorded driver is still alive: then the study
is being run right now, and a second driver on it is refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from drl_tune.ground.io import atomic_write_json

SESSION_FILE = "drl_tune_ray.json"
PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (pid + start time identify a process; pids recycle)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def _children(pid: int) -> list[int]:
    try:
        tasks = (PROC / str(pid) / "task").iterdir()
        out = []
        for task in tasks:
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
        return out
    except OSError:
        return []


def describe_local_ray() -> dict[str, Any] | None:
    """The local Ray this process started: session folder and its processes (pid, start time)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - Ray has no public API for this
    if node is None or not PROC.is_dir():
        return None
    pids = {p.process.pid for procs in node.all_processes.values() for p in procs if p.process is not None}
    for pid in list(pids):  # the raylet's agents (and any prestarted workers)
        pids.update(_children(pid))
    return {"session_dir": node.get_session_dir_path(),
            "processes": {str(pid): start_time(pid) for pid in sorted(pids) if start_time(pid) is not None}}


def record(study_dir: Path, local: dict[str, Any] | None) -> None:
    me = os.getpid()
    atomic_write_json(study_dir / SESSION_FILE, {"driver_pid": me, "driver_start": start_time(me),
                                                 "started": time.time(), "ended": None, **(local or {})})


def mark_ended(study_dir: Path) -> None:
    import json

    path = study_dir / SESSION_FILE
    with contextlib.suppress(OSError, ValueError):
        value = json.loads(path.read_text())
        if value.get("driver_pid") == os.getpid():
            atomic_write_json(path, {**value, "ended": time.time()})


def _names_session(pid: int, session_dir: str) -> bool:
    folder = PROC / str(pid)
    with contextlib.suppress(OSError):
        if session_dir in (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
            return True
    with contextlib.suppress(OSError):
        for fd in (folder / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(session_dir + "/"):
                    return True
    return False


def leftovers(saved: dict[str, Any]) -> list[int]:
    """Processes of the recorded session still running (never this process or its ancestors)."""
    if not PROC.is_dir():
        return []
    protected = {os.getpid()}
    parent = os.getppid()
    while parent > 1 and parent not in protected:
        protected.add(parent)
        try:
            parent = int((PROC / str(parent) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = {int(pid) for pid, started in (saved.get("processes") or {}).items() if alive(int(pid), started)}
    session_dir = saved.get("session_dir")
    if session_dir:
        for entry in PROC.iterdir():
            if entry.name.isdigit() and int(entry.name) not in found and _names_session(int(entry.name), session_dir):
                found.add(int(entry.name))
    return sorted(found - protected)


def stop(pids: list[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns the pids that were signalled."""
    started = {pid: start_time(pid) for pid in pids}
    signalled = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p, started[p]) for p in signalled):
        time.sleep(0.1)
    for pid in signalled:
        if alive(pid, started[pid]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return signalled


class StudyRunning(RuntimeError):
    """The study's recorded driver is still alive."""


def clean_previous(study_dir: Path) -> str | None:
    """Before a study folder is run again: refuse if its driver still runs; stop what a killed driver left.
    Returns a line for the console when something was stopped."""
    import json

    path = study_dir / SESSION_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("ended"):
        return None
    pid = saved.get("driver_pid")
    if isinstance(pid, int) and pid != os.getpid() and alive(pid, saved.get("driver_start")):
        raise StudyRunning(f"study {study_dir} is being run right now by process {pid}; wait for it, or stop it "
                           f"(kill -INT {pid}) before resuming")
    pids = leftovers(saved)
    if not pids:
        return None
    stop(pids)
    return (f"stopped {len(pids)} leftover Ray process(es) of the previous, killed run of this study "
            f"(session {saved.get('session_dir')}): pids {', '.join(map(str, pids))}")
