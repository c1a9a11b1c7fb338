"""The clean-up after a SIGKILLed driver touches only the processes of *that* study's Ray session, and never
acts while the study's driver is still alive (no Ray needed: stand-in processes carry the session path)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from drl_tune.study import ray_session


def stand_in(session_dir: str) -> subprocess.Popen:
    """A process whose command line names ``session_dir`` (as raylet, GCS and workers' logs do)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--session-dir={session_dir}"])


@pytest.mark.skipif(not ray_session.PROC.is_dir(), reason="needs /proc (Linux)")
def test_only_the_killed_sessions_processes_are_stopped(tmp_path):
    ours, theirs = str(tmp_path / "ray" / "session_a"), str(tmp_path / "ray" / "session_b")
    mine, other, recorded = stand_in(ours), stand_in(theirs), stand_in("/elsewhere")
    dead_driver = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_driver.wait()
    try:
        time.sleep(0.5)
        ray_session.atomic_write_json(tmp_path / ray_session.SESSION_FILE, {
            "driver_pid": dead_driver.pid, "driver_start": 1, "ended": None, "session_dir": ours,
            "processes": {str(recorded.pid): ray_session.start_time(recorded.pid)}})
        message = ray_session.clean_previous(tmp_path)
        assert message and str(mine.pid) in message and str(recorded.pid) in message
        assert mine.wait(timeout=10) is not None and recorded.wait(timeout=10) is not None
        assert other.poll() is None  # another study's Ray is left alone
    finally:
        for proc in (mine, other, recorded):
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not ray_session.PROC.is_dir(), reason="needs /proc (Linux)")
def test_a_study_whose_driver_still_runs_is_refused(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.3)
        ray_session.atomic_write_json(tmp_path / ray_session.SESSION_FILE, {
            "driver_pid": driver.pid, "driver_start": ray_session.start_time(driver.pid), "ended": None})
        with pytest.raises(ray_session.StudyRunning, match=f"process {driver.pid}"):
            ray_session.clean_previous(tmp_path)
        assert driver.poll() is None
    finally:
        driver.kill()
        driver.wait()


def test_a_cleanly_ended_session_needs_nothing(tmp_path):
    ray_session.atomic_write_json(tmp_path / ray_session.SESSION_FILE, {"driver_pid": 1, "ended": 123.0})
    assert ray_session.clean_previous(tmp_path) is None
    assert ray_session.clean_previous(tmp_path / "no-study-here") is None
