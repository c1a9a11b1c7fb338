"""The searched keys of a space file: one class per distribution (``choice``, ``uniform``, ``loguniform``, ``int``),
each with its own parsing, Optuna sampling, membership test and description (drl_tune/study/spaces.py reads the
files). Tune pickles these objects into a study folder, so their names stay importable from
``drl_tune.study.spaces`` too."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from drl_tune.ground.errors import ConfigError


class SpaceError(ConfigError):
    """A space file is missing or malformed; the message names the file and the key."""


def _number(spec: dict[str, Any], name: str, where: str, integer: bool = False) -> float | int:
    value: Any = spec.get(name)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise SpaceError(f"{where}: '{name}' must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class Param:
    """One searched config key; one subclass per distribution, each with its own parsing, sampling
    (:meth:`suggest`), membership test and description. ``method`` is set for a conditional key (sampled only
    with that method). The distribution's name (``kind``) appears only at the boundaries: the space file's
    ``type`` and the plan file's ``kind``."""

    key: str
    method: str | None = field(default=None, kw_only=True)
    kind: ClassVar[str] = ""
    fields_allowed: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, method: str | None) -> Param:
        """This distribution from a space file's ``search`` entry (its keys already checked)."""
        raise NotImplementedError

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (define-by-run) for this key's value."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def samples(self) -> list[Any]:
        """The values a space check builds a configuration from (every choice; a range's two ends)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _when(self) -> str:
        return f"   (only when method={self.method})" if self.method else ""

    def to_dict(self) -> dict[str, Any]:
        """The plan file's shape (``drl_tune.study/1``): every distribution writes the same seven keys."""
        out: dict[str, Any] = {"key": self.key, "kind": self.kind, "low": None, "high": None, "step": None,
                               "values": [], "method": self.method}
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()})
        return out

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Param:
        """The inverse of :meth:`to_dict` (also reads plans written before the distributions were classes)."""
        cls = DISTRIBUTIONS[raw["kind"]]
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        if "values" in values:
            values["values"] = tuple(values["values"])
        return cls(**values)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a Tune experiment saved before the distributions were classes pickled ``Param(key, kind, ...)`` objects
        # inside its searcher; restoring one (``--resume`` of such a study) turns each into its distribution
        if "kind" in state:
            upgraded = Param.from_dict(state)
            object.__setattr__(self, "__class__", type(upgraded))
            state = dict(upgraded.__dict__)
        self.__dict__.update(state)


@dataclass(frozen=True)
class Choice(Param):
    """One of a list of plain values (numbers, strings, true/false, null)."""

    values: tuple[Any, ...] = ()
    kind: ClassVar[str] = "choice"
    fields_allowed: ClassVar[frozenset[str]] = frozenset({"type", "values"})

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, method: str | None) -> Param:
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: 'values' must be a non-empty list, got {values!r}")
        if any(isinstance(v, (dict, list)) for v in values):
            raise SpaceError(f"{where}: 'values' must be plain values (numbers, strings, true/false, null)")
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{where}: 'values' has duplicates: {values!r}")
        return cls(key, tuple(values), method=method)

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_categorical(self.key, list(self.values))

    def contains(self, value: Any) -> bool:
        return value in self.values

    def samples(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return "choice " + ", ".join("null" if v is None else str(v) for v in self.values) + self._when()


@dataclass(frozen=True)
class _Range(Param):
    """A numeric range [low, high], optionally on a grid of ``step``."""

    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    fields_allowed: ClassVar[frozenset[str]] = frozenset({"type", "low", "high", "step"})
    integer: ClassVar[bool] = False

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, method: str | None) -> _Range:
        low, high = _number(spec, "low", where, cls.integer), _number(spec, "high", where, cls.integer)
        if low > high:
            raise SpaceError(f"{where}: low ({low:g}) must be <= high ({high:g})")
        step = None
        if "step" in spec:
            step = _number(spec, "step", where, cls.integer)
            if step <= 0:
                raise SpaceError(f"{where}: 'step' must be > 0, got {step:g}")
            n = (high - low) / step
            if not math.isclose(n, round(n), abs_tol=1e-9):
                raise SpaceError(f"{where}: high - low ({high - low:g}) must be a multiple of step ({step:g})")
        return cls(key, low=low, high=high, step=step, method=method)

    def contains(self, value: Any) -> bool:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:
            return math.isclose(round((value - self.low) / self.step) * self.step + self.low, value)
        return True

    def samples(self) -> list[Any]:
        return [self.low, self.high]

    def describe(self) -> str:
        return (f"{self.kind} [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")
                + self._when())


@dataclass(frozen=True)
class Uniform(_Range):
    kind: ClassVar[str] = "uniform"

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_float(self.key, self.low, self.high, step=self.step)


@dataclass(frozen=True)
class LogUniform(_Range):
    kind: ClassVar[str] = "loguniform"
    fields_allowed: ClassVar[frozenset[str]] = frozenset({"type", "low", "high"})

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], where: str, method: str | None) -> _Range:
        param = super().parse(key, spec, where, method)
        if param.low <= 0:
            raise SpaceError(f"{where}: a loguniform range needs low > 0, got {param.low:g}")
        return param

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_float(self.key, self.low, self.high, log=True)


@dataclass(frozen=True)
class IntRange(_Range):
    kind: ClassVar[str] = "int"
    integer: ClassVar[bool] = True

    def suggest(self, trial: Any) -> Any:
        return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))

    def contains(self, value: Any) -> bool:
        if not super().contains(value):
            return False
        return float(value).is_integer() and (int(value) - int(self.low)) % int(self.step or 1) == 0

    def samples(self) -> list[Any]:
        return [int(self.low), int(self.high)]


# the space file's ``type`` (and the plan file's ``kind``) -> its distribution
DISTRIBUTIONS: dict[str, type[Param]] = {cls.kind: cls for cls in (Choice, Uniform, LogUniform, IntRange)}
