"""This process's environment, changed for a block and then put back as it was."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def scoped(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` inside the block; afterwards every name has its earlier value again, or is unset
    if it was (a child process started inside keeps what it inherited)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
