"""What a person sees: a tiny study run in a pseudo-terminal, as in a shell, stopped by SIGTERM, then resumed.

In a terminal the study prints its plan, a status line redrawn in place (``\\r``), one line per trial event and the
search's table once — never Tune's trial table every few seconds, its "Configuration for experiment" box or its
TensorBoard hint. SIGTERM (``kill``, a scheduler) ends it with one line naming the ``--resume`` command and exit
143 — not Ray's native crash dump — and that command finishes the study (its output, not a terminal, gets plain
appended status lines).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from tests.study.test_faults_kill import env_for, ray_tmp, study_cli  # noqa: F401 — ray_tmp is a fixture

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint}
defaults: {lr: 0.05}
search:
  lr: {type: choice, values: [0.05, 0.02]}
scheduler: {type: none}
study: {num_samples: 3, max_concurrent: 1, seed: 0, confirm: {top_k: 1, seeds: 2}, overrides: {epochs: 3}}
resources: {cpus_per_trial: 1}
"""


def run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, stop_when, timeout: float = 900.0):
    """Run ``argv`` with a pseudo-terminal as its stdout/stderr; send SIGTERM once ``stop_when(text)``; return
    (exit status, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell would do the same
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160 x 40 terminal window
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
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_a_study_in_a_terminal_stopped_by_sigterm_then_resumed(tmp_path, ray_tmp):  # noqa: F811
    space = tmp_path / "t.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "studies"
    argv = study_cli("--space", str(space), "--storage", str(storage), "--name", "t")
    assert argv[0] == sys.executable

    def one_finished_and_the_next_running(text: str) -> bool:
        return "finished (joint) after 3 epochs" in text and len(re.findall(r"trial \w+ started", text)) >= 2

    code, out = run_in_terminal(argv, env_for(ray_tmp, TERM="xterm"), tmp_path,
                                one_finished_and_the_next_running)
    assert code == 143, out
    # the status line, redrawn in place
    assert re.search(r"\r[^\n]*search: \d/3 trials done, \d running, \d pending \| \d+m\d\ds elapsed, (–|~\d+m\d\ds) "
                     r"left \| 0 stopped early, 0 errored", out), out
    assert re.search(r"\] trial \w+ started \(joint, lr=0\.05\)", out), out
    # no table every few seconds (the status line replaces it) and nothing of Tune's own output
    assert len(re.findall(r"trial +status +method", out)) <= 1, out
    assert "TensorBoard" not in out and "Configuration for experiment" not in out, out
    # SIGTERM: one line with the command that continues, no native dump
    assert "SIGTERM received" not in out and "PC: @" not in out, out
    stop = [line for line in out.splitlines() if "stopped by SIGTERM" in line]
    assert len(stop) == 1, out
    assert f"finish it with  python -m drl_tune.run --resume --name t --storage {storage}" in stop[0], out
    assert re.search(r"1 of 3 search trials finished, saved in ", stop[0]), stop[0]
    assert not (storage / "t" / "answer.json").exists()

    resume = [sys.executable, "-m", "drl_tune.run", "--resume", "--name", "t", "--storage", str(storage),
              "--progress-interval", "1"]
    done = subprocess.run(resume, capture_output=True, text=True, env=env_for(ray_tmp), cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads((storage / "t" / "answer.json").read_text())
    assert [len(c["trials"]) for c in answer["configs"]] == [2]
    # not a terminal: plain appended lines, none redrawn
    assert "\r" not in done.stdout
    assert re.search(r"^\[\d\d:\d\d:\d\d\] confirmation: 2/2 trials done", done.stdout, re.M), done.stdout
    assert re.search(r"^\[\d\d:\d\d:\d\d\] search: 3/3 trials done", done.stdout, re.M), done.stdout
