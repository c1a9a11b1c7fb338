"""Where the package keeps generated data, in a module that imports nothing heavy (the doctor reads it)."""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """Where generated data lives: ``$DRL_TUNE_DATA`` or the user's cache directory."""
    base = os.environ.get("DRL_TUNE_DATA") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "drl_tune"
    )
    return Path(base)


# a folder the program will write must have at least this much free space before anything starts: a floor that
# catches a full disk, not an estimate of what the run needs (a study's results are small; a dataset cache is not,
# and its preparer checks again with the real size)
MIN_FREE_BYTES = 10 * 1024 * 1024


class PathError(ValueError):
    """A folder the program would write cannot be written: the message names it and says what to do."""


def check_writable(path: str | os.PathLike, what: str, *, min_free: int = MIN_FREE_BYTES) -> None:
    """Raise :class:`PathError` unless ``path`` (a folder, existing or to be made) can be created and written, with
    at least ``min_free`` bytes free. Nothing is left behind: the nearest existing folder above ``path`` gets a probe
    folder that is removed at once (permission bits alone say nothing for root, a read-only mount or /proc).
    ``what`` names the folder in the message, e.g. ``--storage``."""
    import errno
    import shutil
    import tempfile

    target = Path(os.path.abspath(os.fspath(path)))
    existing = target
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise PathError(f"{what} {path}: {existing} is a broken link; remove it or pass another folder")
        existing = existing.parent
    if not existing.is_dir():
        raise PathError(f"{what} {path}: {existing} is a file, not a folder; pass a folder path")
    try:
        probe = tempfile.mkdtemp(prefix=".drl_tune-write-check-", dir=existing)
    except OSError as err:
        reasons: dict[int | None, str | None] = {
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "not permitted", errno.ENOSPC: "no space left",
            errno.ENOENT: "the file system does not allow new folders there"}
        reason = reasons.get(err.errno, err.strerror)
        raise PathError(f"{what} {path}: cannot be created or written under {existing} ({reason}); pass a folder "
                        f"you can write") from None
    os.rmdir(probe)
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise PathError(f"{what} {path}: only {free / 2**20:.0f} MiB free on {existing} (at least "
                        f"{min_free / 2**20:.0f} MiB needed before starting); free space or pass another folder")
