"""The install a newcomer gets: every compiled extension loads in a fresh interpreter, the lock pins what
pyproject allows and is what is installed, and a mismatched torchaudio (the 2.11.1-on-torch-2.11.0 break of
2026-12-02, reproduced with a stand-in package) gives one line naming the fix instead of a traceback — from the
doctor, ``run`` and ``train`` — while the commands that need no torchaudio still work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from drl_tune import doctor
from drl_tune.study.stop import fit_watch, stop_signals

ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "torch_exception_get_what_without_backtrace"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


def test_every_compiled_extension_loads_in_a_fresh_interpreter():
    probes = doctor.probe_fresh()
    assert set(probes) == set(doctor.PROBES)
    bad = {name: p.detail for name, p in probes.items() if not p.ok}
    assert not bad, bad
    assert probes["torchaudio"].detail == "extension loads, Kaldi fbank runs"
    assert probes["torchvision"].detail == "compiled ops run (nms)"
    assert probes["av"].detail.startswith("FFmpeg ")


def test_doctor_on_this_install_is_healthy():
    proc = cli("-m", "drl_tune.doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ""
    for name in doctor.PROBES:
        assert any(line.split()[:2] == ["ok", name] for line in proc.stdout.splitlines()), (name, proc.stdout)
    assert "every installed package it pins is at its pinned version" in proc.stdout
    assert proc.stdout.rstrip().endswith("healthy: drl-tune runs in this environment")


def test_preflight_finds_nothing_wrong_here():
    assert doctor.preflight() == ([], [])


def test_the_lock_pins_what_pyproject_allows():
    pins = doctor.lock_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for deps in project["optional-dependencies"].values() for d in deps)]
    for text in wanted:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in pins, f"constraints.txt does not pin {req.name}: bash .ci/lock"
        assert req.specifier.contains(pins[key], prereleases=True), (text, pins[key])
    assert {name: pins[name] for name in doctor.FAMILY} == {"torch": "2.11.0", "torchvision": "0.26.0",
                                                            "torchaudio": "2.11.0"}
    assert "pip" in pins  # CI upgrades pip to the lock's version before installing


def test_what_is_installed_is_the_lock():
    """CI installs with ``-c constraints.txt``: a package at another version means the README's line and CI's
    install have drifted apart."""
    drift = {name: (doctor.installed(name), version) for name, version in doctor.lock_pins().items()
             if doctor.installed(name) is not None and doctor._public(doctor.installed(name)) != version}
    assert not drift, f"installed (have, lock): {drift}; pip install -e '.[dev]' -c constraints.txt"


def test_root_cause_reads_through_torchs_wrapper():
    try:
        try:
            raise OSError(f"/venv/torchaudio/lib/libtorchaudio.so: undefined symbol: {SYMBOL}")
        except OSError as inner:
            raise OSError("Could not load this library: /venv/torchaudio/lib/_torchaudio.so") from inner
    except OSError as err:
        assert doctor.root_cause(err) == f"undefined symbol: {SYMBOL}"
    err = OSError("libc10_cuda.so: cannot open shared object file: No such file or directory")
    assert doctor.root_cause(err) == "libc10_cuda.so is missing"


def test_the_fix_pins_every_family_member_that_differs_from_the_lock(monkeypatch):
    pins = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}
    have = {"torch": "2.12.0", "torchvision": "0.26.0", "torchaudio": "2.11.1"}
    monkeypatch.setattr(doctor, "installed", have.get)
    assert doctor.family_fix(pins, {}, "torchvision") == "pip install 'torch==2.11.0' 'torchaudio==2.11.0'"
    have.update(torch="2.11.0+cpu", torchaudio="2.11.0")  # a CPU wheel of the locked release is the release
    assert doctor.family_fix(pins, {}, "torchaudio") == "pip install --force-reinstall --no-deps 'torchaudio==2.11.0'"
    reqs = {"torchaudio": Requirement("torchaudio>=2.11.0,<2.12,!=2.11.1")}
    have.update(torchaudio="2.11.1")  # no lock (an install from a wheel): drl-tune's own range
    assert doctor.family_fix({}, reqs, "torchaudio") == "pip install --force-reinstall --no-deps " \
                                                       "'torchaudio!=2.11.1,<2.12,>=2.11.0'"


@pytest.fixture(scope="module")
def broken_torchaudio(tmp_path_factory) -> dict[str, str]:
    """An environment whose torchaudio is '2.11.1' and fails to load as the real one does on torch 2.11.0:
    a stand-in package and its metadata, first on the path."""
    site = tmp_path_factory.mktemp("broken-site")
    (site / "torchaudio").mkdir()
    (site / "torchaudio" / "__init__.py").write_text(textwrap.dedent(f"""\
        # what torchaudio 2.11.1 does on torch 2.11.0: torch.ops.load_library wraps the dynamic loader's error
        try:
            raise OSError("{site}/torchaudio/lib/libtorchaudio.so: undefined symbol: {SYMBOL}")
        except OSError as err:
            raise OSError("Could not load this library: {site}/torchaudio/lib/_torchaudio.so") from err
        """))
    meta = site / "torchaudio-2.11.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "DRL_TUNE_DATA": str(tmp_path_factory.mktemp("data"))}


def expected_line() -> str:
    return (f"error: torchaudio 2.11.1 does not load with torch {doctor.installed('torch')} (undefined symbol: "
            f"{SYMBOL}): pip install 'torchaudio=={doctor.lock_pins()['torchaudio']}'")


def test_doctor_names_a_mismatched_torchaudio_and_the_fix(broken_torchaudio):
    proc = cli("-m", "drl_tune.doctor", env=broken_torchaudio)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [expected_line()]
    assert any(line.split()[:3] == ["BAD", "torchaudio", "2.11.1"] for line in proc.stdout.splitlines())
    assert "torchaudio 2.11.1 (lock 2.11.0)" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [
    ["-m", "drl_tune.run", "--space", "demo", "--name", "x"],
    ["-m", "drl_tune.train", "--space", "demo", "--set", "epochs=1"],
])
def test_run_and_train_stop_with_the_same_line(broken_torchaudio, command, tmp_path):
    proc = cli(*command, "--storage" if "drl_tune.run" in command else "--out", str(tmp_path / "out"),
               env=broken_torchaudio, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[0] == expected_line()
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_commands_that_need_no_torchaudio_still_work(broken_torchaudio, tmp_path):
    for command in (["-m", "drl_tune.run", "--help"], ["-m", "drl_tune.report", "--help"],
                    ["-m", "drl_tune.confirm", "--help"],
                    ["-m", "drl_tune.run", "--space", "demo", "--dry-run", "--storage", str(tmp_path / "s")]):
        proc = cli(*command, env=broken_torchaudio, cwd=tmp_path)
        assert proc.returncode == 0, (command, proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr


def test_importing_the_commands_does_not_import_torchaudio():
    proc = cli("-c", "import sys, drl_tune.run, drl_tune.train, drl_tune.confirm, drl_tune.report, drl_tune.bench.cli, "
                     "drl_tune.data.prepare, drl_tune.study.trainable; print('torchaudio' in sys.modules)",
               env={"PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "False", proc.stderr


def test_ctrl_c_during_fit_is_recorded_and_handed_to_tune_as_sigusr1():
    """Tune's own SIGINT handler tells its caller nothing; the watch records the Ctrl-C and passes it on."""
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: got.append("usr1"))  # Tune's graceful-stop handler
    before = signal.getsignal(signal.SIGINT)
    try:
        with fit_watch() as stop:
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
            assert not stop.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.is_set() and got == ["usr1"] and stop.exit_code == 130
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once, as without the watch
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before
        assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigterm_stops_tune_gracefully_in_fit_and_raises_outside_it():
    """SIGTERM takes the same path as Ctrl-C inside fit (exit status 143); outside fit — where Ray's own handler
    would dump a native stack and abort — it raises ``Stopped`` where the driver is."""
    from drl_tune.ground.guard import Stopped

    got = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: got.append("usr1"))
    before = signal.getsignal(signal.SIGTERM)
    try:
        with stop_signals() as study:
            with fit_watch() as stop:
                assert stop is study  # the study's watch, so the driver sees what stopped the fit
                os.kill(os.getpid(), signal.SIGTERM)
            assert study.is_set() and got == ["usr1"] and study.exit_code == 143 and study.name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is before
        with stop_signals(), pytest.raises(Stopped) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes: the raise comes before this ends
        assert raised.value.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGUSR1, previous)
