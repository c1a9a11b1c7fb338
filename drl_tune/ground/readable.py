"""Numbers as people read them: a float shown to 4 significant digits (``4.434``, ``0.002774``, ``0.01``,
``1.5e-05``) wherever a person reads a configuration or a table — the plan's first trials, the printed tables, the
HTML report. Integers, booleans and strings are shown as they are. The files a study writes for programs
(``answer.json``, ``answer.csv``, ``table.json``, …) keep full precision: only text for people goes through here."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

SIGNIFICANT = 4


def sig4(value: Any) -> str:
    """``value`` as text; a non-integral real number (a Python or NumPy float) to 4 significant digits."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{float(value):.{SIGNIFICANT}g}"
    return str(value)


def settings(config: Mapping[str, Any]) -> str:
    """``key=value, key=value`` of a configuration, each value through :func:`sig4`."""
    return ", ".join(f"{k}={sig4(v)}" for k, v in config.items())
