"""A study run in a pseudo-terminal, as a person runs it in a shell, then stopped by SIGTERM: what the terminal
shows (used by the chained stop/kill/resume test in tests/study/test_faults_kill.py).

In a terminal the study prints its plan, a status line redrawn in place (``\\r``), one line per trial event and the
search's table once — never Tune's trial table every few seconds, its "Configuration for experiment" box or its
TensorBoard hint. SIGTERM (``kill``, a scheduler) ends it with one line naming the ``--resume`` command and exit
143 — not Ray's native crash dump.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, stop_when: Callable[[str], bool],
                    timeout: float = 900.0) -> tuple[int, str]:
    """Run ``argv`` with a 160 x 40 pseudo-terminal as its stdout/stderr; send SIGTERM once ``stop_when(text)``;
    return (exit status, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell would do the same
        os.chdir(cwd)
        os.execve(argv[0], argv, {**env, "TERM": "xterm"})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    chunks: list[bytes] = []
    sent, deadline = False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal (it ended)
                    break
                if not data:
                    break
                chunks.append(data)
            if not sent and stop_when(b"".join(chunks).decode(errors="replace")):
                os.kill(pid, signal.SIGTERM)
                sent = True
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the study in the terminal did not end:\n" + b"".join(chunks).decode(errors="replace"))
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert sent, "the study ended before the moment to stop it:\n" + b"".join(chunks).decode(errors="replace")
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def stopped_in_a_terminal(argv: list[str], env: dict[str, str], cwd: Path, stop_when: Callable[[str], bool]) -> str:
    """Run a study in a terminal, SIGTERM it once ``stop_when``; check what the terminal showed; its output."""
    code, out = run_in_terminal(argv, env, cwd, stop_when)
    assert code == 143, out
    # the status line, redrawn in place, and the event lines
    assert re.search(r"\r[^\n]*search: \d+/\d+ trials done, \d+ running, \d+ pending \| \d+m\d\ds elapsed, "
                     r"(–|~\d+m\d\ds) left \| \d+ stopped early, \d+ errored", out), out
    assert re.search(r"\] trial \w+ started \(\w+, lr=[0-9.]+", out), out
    assert re.search(r"\] trial \w+ finished \(\w+\) after \d+ epochs, best val acc", out), out
    # no table every few seconds (the status line replaces it), nothing of Tune's own output
    assert len(re.findall(r"trial +status +method", out)) <= 1, out
    assert "TensorBoard" not in out and "Configuration for experiment" not in out, out
    assert "Stop signal received" not in out and "Tuner.restore" not in out, out
    # SIGTERM: one line with what was saved and the command that continues; no native dump
    assert "SIGTERM received" not in out and "PC: @" not in out, out
    stop = [line for line in out.splitlines() if "stopped by SIGTERM" in line]
    assert len(stop) == 1, out
    assert re.search(r"stopped by SIGTERM: \d+ of \d+ search trials finished, saved in .+; finish it with  "
                     r"python -m drl_tune\.run --resume --name \S+ --storage \S+", stop[0]), stop[0]
    return out
