"""What a numeric value may be, declared once beside the key it belongs to, checked wherever the key is parsed.

A dataclass field declares its domain with :func:`bounded` (``lr: float = bounded(2e-3, gt=0)``); every number is
also required to be finite (``nan`` and ``inf`` are never a configuration). :func:`check` is called by the config
builder (``--set``, space files' ``fixed``/``defaults``/search bounds, plans), by the space file's own blocks
(``study``, ``scheduler``, ``resources``) and, through :func:`flag_type`, by the command-line flags that set the
same values — so ``--cpus-per-trial 0``, ``--set lr=nan`` and ``resources: {cpus_per_trial: 0}`` get the same
sentence: the key, the value, and what is allowed. Imports nothing heavy: the method files use it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drl_tune.ground.errors import ConfigError

DOMAIN = "drl_tune.domain"  # the key in a dataclass field's metadata
DOC = "drl_tune.doc"  # a method parameter's meaning (the docs' table and --help are made from it)
CHOICES = "drl_tune.choices"  # the values a text parameter may take


@dataclass(frozen=True)
class Domain:
    """Bounds on a number (all optional): ``ge``/``gt`` below, ``le``/``lt`` above; ``gpu_share``: 0, a fraction
    in (0, 1] or a whole number of GPUs (what Ray can place)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    gpu_share: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):  # (an int is finite, however large)
            return False
        if self.gpu_share and value > 1 and value != int(value):
            return False
        return not ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))

    def describe(self, integer: bool = False) -> str:
        """``an integer >= 1``, ``a finite number > 0``, ``a number in [0, 1)`` ..."""
        kind = "an integer" if integer else "a finite number"
        if self.gpu_share:
            return "0, a fraction in (0, 1] or a whole number of GPUs"
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"{'an integer' if integer else 'a number'} in {low}, {high}"
        if low:
            return f"{kind} {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{kind} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return kind


    def short(self) -> str:
        """The bounds alone, for tables: ``> 0``, ``>= 1``, ``[0, 1)``, ``0, (0, 1] or whole``."""
        text = self.describe()
        for kind in ("a finite number ", "an integer ", "a number in "):
            text = text.removeprefix(kind)
        return "0, (0, 1] or whole" if self.gpu_share else text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


FINITE = Domain()


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, gpu_share: bool = False) -> Any:
    """A dataclass field with ``default`` whose values must lie in the declared domain."""
    return dataclasses.field(default=default,
                             metadata={DOMAIN: Domain(ge=ge, gt=gt, le=le, lt=lt, gpu_share=gpu_share)})


def param(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A method parameter: its default, what it means (``doc``, one sentence for the docs' configuration table and
    ``--help``) and what it may be — bounds for a number, ``choices`` for a text. A method's ``Params`` dataclass
    declares every key this way, so the method's file is the one place its keys are described and checked."""
    domain = Domain(ge=ge, gt=gt, le=le, lt=lt) if any(b is not None for b in (ge, gt, le, lt)) else None
    metadata: dict[str, Any] = {DOC: doc, DOMAIN: domain}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def domain_of(cls: type, name: str) -> Domain | None:
    """The declared domain of field ``name`` of dataclass ``cls`` (None: only the type is checked)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(DOMAIN)
    raise KeyError(name)


def check(value: Any, domain: Domain | None, key: str) -> Any:
    """``value`` itself when it is allowed; otherwise a :class:`ConfigError` naming ``key``, the value and the domain.
    Every float must be finite, with or without a declared domain; non-numbers pass (their type is checked apart)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    domain = domain or FINITE
    if not domain.contains(value):
        raise ConfigError(f"{key} must be {domain.describe(integer=isinstance(value, int))}, got {value!r}")
    return value


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every numeric field of dataclass instance ``obj`` against its declared domain, for a ``__post_init__``:
    a directly constructed block is checked as ``config.build`` checks a parsed one. A nested block is skipped: it
    checked itself when it was made."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not dataclasses.is_dataclass(value):
            check(value, f.metadata.get(DOMAIN), prefix + f.name)
        choices = f.metadata.get(CHOICES)
        if choices is not None and value not in choices:
            raise ConfigError(f"{prefix}{f.name} must be one of {', '.join(choices)}, got {value!r}")


def flag_type(cls: type, name: str, integer: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type`` for a flag that sets field ``name`` of ``cls``: parses the number and checks the field's
    domain, so the flag and the space file say the same thing."""
    return flag(domain_of(cls, name) or FINITE, integer)


def flag(domain: Domain, integer: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type``: a number (an integer with ``integer``) inside ``domain``; the message says which."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {domain.describe(integer)}, got {text!r}") from None
        if not domain.contains(value):
            raise argparse.ArgumentTypeError(f"must be {domain.describe(integer)}, got {text}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse
