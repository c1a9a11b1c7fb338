"""Search-space files (``search_spaces/*.yaml``): loading, validation, and the values a run starts from.

A space file has these top-level blocks (all optional but ``dataset``):

* ``dataset``: the ``data.*`` keys (``name``, ``root``, ``augment``, ``synthetic.*``);
* ``fixed``: config values every trial uses;
* ``defaults``: the paper's setting of the searched keys — what ``drl_tune.train`` runs and what a study
  evaluates first;
* ``search``, ``scheduler``, ``study``, ``resources``: the study harness's blocks (drl_tune.run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drl_tune.config import ConfigError, TrainConfig, make_config

TOP_LEVEL = ("name", "description", "dataset", "fixed", "defaults", "search", "scheduler", "study", "resources")


class SpaceError(ConfigError):
    """A space file is missing or malformed; the message names the file and the key."""


@dataclass
class Space:
    name: str
    path: Path
    dataset: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def base_values(self) -> dict[str, Any]:
        """Flat config values: dataset block, then fixed values, then the defaults of searched keys."""
        values = {f"data.{k}": v for k, v in self.dataset.items()}
        values.update(self.fixed)
        values.update(self.defaults)
        return values

    def config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The run configuration of this space's defaults, with ``overrides`` (``--set``) on top."""
        values = self.base_values()
        values.update(overrides or {})
        try:
            return make_config(values)
        except SpaceError:
            raise
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None


def search_dirs() -> list[Path]:
    """Where ``--space NAME`` is looked up: $DRL_TUNE_SPACES, ./search_spaces, the checkout's search_spaces."""
    dirs = [Path(p) for p in os.environ.get("DRL_TUNE_SPACES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "search_spaces", Path(__file__).resolve().parent.parent / "search_spaces"]
    return dirs


def resolve_space_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise SpaceError(f"search space file {candidate} does not exist")
    for folder in search_dirs():
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise SpaceError(
        f"no search space named {name_or_path!r}; known: {', '.join(known) or 'none'} "
        f"(looked in {', '.join(str(d) for d in search_dirs())}); or pass a path to a .yaml file"
    )


def _block(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise SpaceError(f"{path}: '{key}' must be a mapping of keys to values, got {type(value).__name__}")
    return value


def load_space(name_or_path: str) -> Space:
    """Load and check a space file (YAML syntax, top-level blocks, and that its defaults form a valid config)."""
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with blocks {', '.join(TOP_LEVEL)}")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL)}")
    if "dataset" not in raw:
        raise SpaceError(f"{path}: missing the 'dataset' block (e.g. dataset: {{name: synthetic}})")
    space = Space(
        name=str(raw.get("name") or path.stem),
        path=path,
        dataset=_block(raw, "dataset", path),
        fixed=_block(raw, "fixed", path),
        defaults=_block(raw, "defaults", path),
        raw=raw,
    )
    space.config()  # fail now, naming the file, if fixed/defaults are not a valid configuration
    return space
