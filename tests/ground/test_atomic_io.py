"""Atomic writes: a file the project reads back is either its previous complete version or the new complete
one — never half of it — whether the writer raises, the disk fills, or the process is SIGKILLed mid-write.
And the package uses the helper wherever such a file is written (an ast scan with a short allow-list)."""

from __future__ import annotations

import ast
import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from drl_tune.ground import io as dio
from drl_tune.training.engine import Engine

ROOT = Path(__file__).resolve().parents[2]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if dio.TMP_MARK in p.name)


def test_writer_that_raises_leaves_the_old_file(tmp_path):
    path = dio.atomic_write_text(tmp_path / "answer.json", '{"old": true}\n')
    with pytest.raises(RuntimeError), dio.atomic_open(path, "w") as handle:
        handle.write('{"new": ')
        raise RuntimeError("crash mid-write")
    assert path.read_text() == '{"old": true}\n' and not leftovers(tmp_path)


def test_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    path = dio.atomic_write_bytes(tmp_path / "cache.bin", b"complete")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        dio.atomic_write_bytes(path, b"x" * 1_000_000)
    assert dio.storage_error(caught.value) is not None
    assert path.read_bytes() == b"complete" and not leftovers(tmp_path)


def test_sigkill_mid_write_never_exposes_a_partial_file(tmp_path):
    """A child writes 200 MB slowly under the final name's helper; SIGKILL lands mid-write."""
    target = tmp_path / "big.bin"
    dio.atomic_write_bytes(target, b"previous")
    script = textwrap.dedent(f"""
        import sys, time
        from drl_tune.ground.io import atomic_open
        with atomic_open({str(target)!r}, "wb") as f:
            for _ in range(200):
                f.write(b"x" * 1_000_000)
                f.flush()
                print("wrote", flush=True)
                time.sleep(0.02)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None
    for _ in range(5):
        assert child.stdout.readline().startswith("wrote")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert target.read_bytes() == b"previous"
    # the torn temporary is recognisable by its name (and never read): SIGKILL allows no clean-up
    assert all(name.startswith(".big.bin.") for name in leftovers(tmp_path))


def test_checkpoint_save_interrupted_keeps_the_last_loadable_checkpoint(tmp_path, tiny_config, tiny_data,
                                                                         monkeypatch):
    engine = Engine(tiny_config(epochs=2), tiny_data)
    engine.run_epoch()
    path = tmp_path / "engine.pt"
    engine.save(path)
    real_save = torch.save

    def torn_save(obj, handle, *args, **kwargs):  # writes a few bytes, then the disk is full
        handle.write(b"PK\x03\x04 torn")
        raise OSError(errno.ENOSPC, "No space left on device")

    engine.run_epoch()
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        engine.save(path)
    monkeypatch.setattr(torch, "save", real_save)
    restored = Engine(tiny_config(epochs=2), tiny_data)
    restored.load(path)  # the epoch-1 checkpoint, complete
    assert restored.epoch == 1 and not leftovers(tmp_path)


# files written with plain open/write_text/torch.save/np.save on purpose, and why
ALLOWED = {
    "data/fixtures.py": "builds raw test inputs in a fresh folder (not read back as project state)",
    "bench/data.py": "writes the benchmark's throw-away raw clips",
    "data/cache.py": "writes inside a temporary folder that is renamed into place as a whole",
    "ground/io.py": "the helper itself",
    "study/cluster.py": "a throw-away probe file that checks the storage is writable, deleted at once",
    "train.py": "metrics.jsonl is an append-only log (one complete line per epoch; readers skip a torn line)",
    "experiments/imbalance.py": "metrics.jsonl, an append-only log as in train.py",
}
WRITERS = {"write_text", "write_bytes", "save", "savefig", "to_csv", "to_json", "dump"}


def test_package_writes_read_back_files_atomically():
    offenders = []
    for path in sorted((ROOT / "drl_tune").rglob("*.py")):
        rel = path.relative_to(ROOT / "drl_tune").as_posix()
        if rel in ALLOWED:
            continue
        tree = ast.parse(path.read_text())
        # names bound to an in-memory buffer (io.BytesIO()): a figure saved into one is not a file write
        buffers = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                   and isinstance(n.value.func, ast.Attribute) and n.value.func.attr in ("BytesIO", "StringIO")
                   for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in WRITERS:
                if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in buffers:
                    continue  # into memory (then written with an atomic helper, or embedded)
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if func.attr == "save" and owner not in ("torch", "np", "numpy"):
                    continue  # the project's own save() methods (Plan, Engine) are atomic
                if func.attr in ("to_json", "to_csv") and not node.args:
                    continue  # to a string, not a file
                offenders.append(f"{rel}:{node.lineno} .{func.attr}()")
            if isinstance(func, ast.Name) and func.id == "open" and len(node.args) > 1 and isinstance(
                    node.args[1], ast.Constant) and str(node.args[1].value).startswith(("w", "a", "x")):
                offenders.append(f"{rel}:{node.lineno} open(..., {node.args[1].value!r})")
    assert not offenders, f"use drl_tune.ground.io's atomic helpers: {offenders}"


def test_storage_error_recognises_full_and_read_only():
    assert dio.storage_error(OSError(errno.EROFS, "Read-only file system")) is not None
    wrapped = RuntimeError("mlflow failed")
    wrapped.__cause__ = Exception("(sqlite3.OperationalError) database or disk is full")
    assert dio.storage_error(wrapped) is not None
    assert dio.storage_error(ValueError("lr must be > 0")) is None
