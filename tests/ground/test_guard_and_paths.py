"""The boundary: declared domains (ground/domains.py), writable output folders (ground/paths.py) and the top-level guard
of every command (ground/guard.py) — each answered in one line, exit non-zero, nothing left behind."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from drl_tune import run as run_cli
from drl_tune import train as train_cli
from drl_tune.ground.domains import Domain, check
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.paths import PathError, check_writable

COMMANDS = ["drl_tune.run", "drl_tune.train", "drl_tune.confirm", "drl_tune.report", "drl_tune.doctor",
            "drl_tune.bench.cli", "drl_tune.data.prepare", "drl_tune.benchmark"]


def test_domains_say_key_value_and_what_is_allowed():
    assert check(0.5, Domain(gt=0), "lr") == 0.5
    with pytest.raises(ConfigError, match=r"^lr must be a finite number > 0, got nan$"):
        check(float("nan"), Domain(gt=0), "lr")
    with pytest.raises(ConfigError, match=r"^x must be a finite number, got inf$"):
        check(float("inf"), None, "x")  # every float is finite, declared domain or not
    with pytest.raises(ConfigError, match=r"^m must be a number in \[0, 1\), got 1.0$"):
        check(1.0, Domain(ge=0, lt=1), "m")
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1, got 0$"):
        check(0, Domain(ge=1), "n")
    assert check(10**40, Domain(ge=1), "n") == 10**40  # an int is finite however large
    share = Domain(ge=0, gpu_share=True)
    assert [share.contains(v) for v in (0, 0.25, 1.0, 2.0, 1.5, -0.5)] == [True, True, True, True, False, False]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_output_folders_that_cannot_be_written_are_named_before_anything_runs(tmp_path, monkeypatch):
    before = listing(tmp_path)
    check_writable(tmp_path / "new" / "deeper", "--storage")  # creatable: fine, and nothing made
    assert listing(tmp_path) == before
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PathError, match=r"a_file is a file, not a folder"):
        check_writable(tmp_path / "a_file" / "studies", "--storage")
    with pytest.raises(PathError, match=r"^--out /proc/drl_tune_nope/out: cannot be created or written under /proc"):
        check_writable("/proc/drl_tune_nope/out", "--out")  # a virtual file system: root or not
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 9, 1))
    with pytest.raises(PathError, match=r"only 0 MiB free on .* free space or pass another folder"):
        check_writable(tmp_path, "--storage")
    assert listing(tmp_path) == [*before, "a_file"]


def test_a_read_only_mount_is_named(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({made.stderr.decode().strip()})")
    try:
        with pytest.raises(PathError, match=r"\(the file system is read-only\); pass a folder you can write"):
            check_writable(mount / "studies", "--storage")
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("argv", [
    ["--space", "demo", "--dry-run", "--storage", "/proc/drl_tune_nope/studies"],
    ["--space", "demo", "--dry-run", "--storage", "{tmp}/a_file/studies"],
])
def test_run_refuses_a_storage_it_cannot_write(tmp_path, capsys, argv):
    (tmp_path / "a_file").write_text("x")
    code = run_cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --storage ") and "Traceback" not in err


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_is_guarded_and_has_verbose(module):
    mod = importlib.import_module(module)
    assert hasattr(mod.main, "__wrapped__"), f"{module}.main is not wrapped by ground.guard.guarded"


def test_the_guard_turns_an_unexpected_error_into_one_line(monkeypatch, capsys, tmp_path):
    def boom(args):
        raise RuntimeError("the unforeseen\nsecond line")

    monkeypatch.setattr(run_cli, "plan_from_args", boom)
    argv = ["--space", "demo", "--dry-run", "--storage", str(tmp_path)]
    assert run_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: the unforeseen; rerun with -v for the traceback\n"
    assert run_cli.main([*argv, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("error: RuntimeError: the unforeseen")
    # train too, once the engine is built
    monkeypatch.setattr(train_cli, "Engine", lambda config: (_ for _ in ()).throw(MemoryError()))
    assert train_cli.main(["--space", "demo", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == "error: MemoryError; rerun with -v for the traceback\n"


def test_the_guard_never_hides_a_known_errors_own_message(capsys, tmp_path):
    assert run_cli.main(["--space", "demo", "--dry-run", "--storage", str(tmp_path), "--set", "lr=nan"]) == 2
    assert capsys.readouterr().err == "error: lr must be a finite number > 0, got nan\n"
    assert train_cli.main(["--space", "demo", "--set", "momentum=1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "momentum must be a number in [0, 1), got 1.0" in err and "-v" not in err


def test_exit_command_skips_the_last_collection_but_keeps_the_exit_code_and_atexit():
    """exit_command freezes the objects alive at the end (so the interpreter's final collection skips them); the
    exit code, atexit handlers and flushed output are as with sys.exit."""
    import sys

    code = ("import atexit, gc, sys\n"
            "from drl_tune.ground.guard import exit_command\n"
            "atexit.register(lambda: print('atexit ran, frozen', gc.get_freeze_count() > 0))\n"
            "print('before', end='')\n"
            "exit_command(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "beforeatexit ran, frozen True\n"
