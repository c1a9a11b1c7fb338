"""Datasets, all read through one cached format (data/cache.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from drl_tune.data.avdigits import load_avdigits
from drl_tune.data.cache import CacheError, MultimodalData, Split, load_cache
from drl_tune.data.config import DataConfig
from drl_tune.data.synthetic import load_synthetic
from drl_tune.ground.paths import default_root


def _prepared(name: str) -> Callable[[DataConfig], MultimodalData]:
    def load(cfg: DataConfig) -> MultimodalData:
        root = Path(cfg.root or os.environ.get(f"DRL_TUNE_{name.upper()}_ROOT") or default_root() / name)
        try:
            data = load_cache(root)
        except CacheError as err:
            raise CacheError(
                f"dataset {name!r} is not prepared at {root}. Prepare it once with\n"
                f"  python -m drl_tune.data.prepare {name} "
                f"{'--manifest FILE' if name == 'manifest' else '--src RAW_DIR'} --out {root}\n"
                f"then point the run at it with --set data.root={root} "
                f"(or DRL_TUNE_{name.upper()}_ROOT). ({err})"
            ) from None
        if data.name != name:
            raise CacheError(f"{root} holds a prepared {data.name!r} dataset, not {name!r}")
        return data

    return load


DATASETS: dict[str, Callable[[DataConfig], MultimodalData]] = {
    "synthetic": lambda cfg: load_synthetic(cfg.synthetic, cfg.root or None),
    "avdigits": lambda cfg: load_avdigits(cfg.avdigits, cfg.root or None),
    "cremad": _prepared("cremad"),
    "kinetics_sounds": _prepared("kinetics_sounds"),
    "ucf101": _prepared("ucf101"),
    "manifest": _prepared("manifest"),  # your own data (data/manifest.py): any modalities the manifest names
}


GENERATED = frozenset({"synthetic", "avdigits"})  # made by the project on first use, not prepared from files


def load_dataset(cfg: DataConfig) -> MultimodalData:
    """The dataset a run asks for, with a clear error when it is unknown or not prepared."""
    if cfg.name not in DATASETS:
        raise CacheError(f"unknown dataset {cfg.name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[cfg.name](cfg)


__all__ = ["DATASETS", "GENERATED", "CacheError", "MultimodalData", "Split", "load_dataset"]
