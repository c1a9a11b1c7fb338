"""Atomic file writes: every file the project reads back (checkpoints, caches, plans, answers, reports) is
written under a temporary name in the same folder and then renamed over the final name.

Why: a process killed mid-write (SIGKILL, OOM killer, pre-emption) or a disk that fills mid-write must
never leave a half-written file under the name a later run loads — the previous complete version stays, or
no file at all. ``os.replace`` within one filesystem is atomic on POSIX; the data is fsync'ed first so a
power loss cannot reorder the rename before the content.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".drl_tune_tmp"  # part of every temporary name, so leftovers are recognisable (and ignorable)

# errors that mean "this storage cannot take more writes" (full, read-only, quota, permission)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}
STORAGE_PHRASES = ("no space left on device", "read-only file system", "database or disk is full",
                   "attempt to write a readonly database", "disk quota exceeded")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as f: ...`` — ``path`` appears only complete, or is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK, dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a results file should read like any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, value: Any, **kwargs: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, **{"indent": 2, **kwargs}) + "\n")


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file (the counterpart of ``torch.load(..., weights_only=True)``)."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """``np.save`` (no pickled objects) through a temporary file."""
    import numpy as np

    with atomic_open(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)
    return Path(path)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """For writers that insist on a file name (e.g. ``DataFrame.to_csv``, ``savefig``): ``writer(tmp_path)``
    writes the temporary file, which then replaces ``path``. The temporary keeps ``path``'s suffix so
    writers that pick a format by extension still do."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{TMP_MARK}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def storage_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (following causes and contexts) if it says the storage refuses writes."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        line = next((s.strip() for s in str(current).splitlines() if any(p in s.lower() for p in STORAGE_PHRASES)),
                    None)
        if line is not None:  # e.g. sqlite's "database or disk is full" inside an MLflow or Tune error
            full = "full" in line.lower() or "space" in line.lower()
            return OSError(errno.ENOSPC if full else errno.EROFS, line[:200])
        current = current.__cause__ or current.__context__
    return None
