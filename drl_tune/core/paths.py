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
