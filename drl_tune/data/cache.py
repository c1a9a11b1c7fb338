"""The one on-disk format every dataset is read through.

A cache directory holds ``manifest.json`` and, per split, one ``.npy`` array per modality plus
``labels.npy`` (int64) and ``clip_ids.npy`` (unicode). Arrays are opened with ``mmap_mode="r"`` so all
trials on a node share them through the page cache. Modality kinds and their array layout:

* ``spectrogram``: float16 [N, T, F] (time frames × mel bins)
* ``frames``: uint8 [N, T, 3, H, W] (RGB frames at the training resolution)
* ``flow``: uint8 [N, T, 2, H, W] (optical flow u/v, 128 = zero motion)

Writing is atomic: everything goes into a sibling temporary directory that is renamed into place only
after the manifest is written, so an interrupted writer never leaves a cache that loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drl_tune.ground.modality import ModalityKind

CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


class CacheError(RuntimeError):
    """A cache is missing, incomplete, or of another version; the message says what to run."""


@dataclass
class Split:
    """One split: modality name -> array [N, ...] (memory-mapped or in memory), labels [N]."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    clip_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class MultimodalData:
    """A dataset as the engine sees it. ``modalities`` maps name -> kind, in fusion order."""

    name: str
    classes: list[str]
    modalities: dict[str, ModalityKind]
    splits: dict[str, Split]
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modalities = {m: ModalityKind.parse(kind) for m, kind in self.modalities.items()}

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class CacheWriter:
    """Streams samples into a new cache: ``with CacheWriter(...) as w: w.add_split(...); w.write(...)``.

    ``modalities`` maps name -> (kind, per-sample shape). Nothing is visible at ``root`` until the
    ``with`` block exits without an exception.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        dataset: str,
        classes: list[str],
        modalities: Mapping[str, tuple[str, tuple[int, ...]]],
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        for name, (kind, _) in modalities.items():
            try:
                ModalityKind.parse(kind)
            except ValueError as err:
                raise ValueError(f"modality {name!r}: {err}") from None
        self.root = Path(root)
        self.dataset, self.classes = dataset, list(classes)
        self.modalities = {m: (ModalityKind(kind), tuple(int(s) for s in shape))
                           for m, (kind, shape) in modalities.items()}
        self.preprocessing = dict(preprocessing or {})
        self._tmp: Path | None = None
        self._arrays: dict[str, dict[str, np.memmap]] = {}
        self._ids: dict[str, list[str]] = {}

    def __enter__(self) -> CacheWriter:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-", dir=self.root.parent))
        return self

    def add_split(self, split: str, n: int) -> None:
        """Allocate the arrays of a split of ``n`` samples."""
        assert self._tmp is not None, "use CacheWriter as a context manager"
        if n < 1:
            raise CacheError(f"split {split!r} of {self.dataset} is empty")
        folder = self._tmp / split
        folder.mkdir()
        arrays = {
            m: np.lib.format.open_memmap(folder / f"{m}.npy", "w+", kind.dtype, (n, *shape))
            for m, (kind, shape) in self.modalities.items()
        }
        arrays["labels"] = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.int64, (n,))
        arrays["labels"][:] = -1
        self._arrays[split] = arrays
        self._ids[split] = [""] * n

    def write(self, split: str, index: int, sample: dict[str, np.ndarray], label: int, clip_id: str) -> None:
        """Store one sample (arrays converted to the modality's dtype)."""
        arrays = self._arrays[split]
        for m, (_, shape) in self.modalities.items():
            if m not in sample:
                raise CacheError(f"{clip_id}: no {m!r} input was decoded")
            if tuple(np.shape(sample[m])) != shape:
                got = list(np.shape(sample[m]))
                raise CacheError(f"{clip_id}: {m!r} has shape {got}, the cache expects {list(shape)}")
            arrays[m][index] = sample[m]
        if not 0 <= label < len(self.classes):
            raise CacheError(f"{clip_id}: label {label} outside 0..{len(self.classes) - 1}")
        arrays["labels"][index] = label
        self._ids[split][index] = clip_id

    def write_split(self, split: str, data: Split) -> None:
        """Allocate and fill a whole split from in-memory arrays."""
        self.add_split(split, len(data))
        arrays = self._arrays[split]
        for m in self.modalities:
            arrays[m][:] = data.inputs[m]
        if len(data.labels) and not (data.labels.min() >= 0 and data.labels.max() < len(self.classes)):
            raise CacheError(f"split {split!r}: labels outside 0..{len(self.classes) - 1}")
        arrays["labels"][:] = data.labels
        ids = data.clip_ids if data.clip_ids is not None else [f"{split}-{i}" for i in range(len(data))]
        self._ids[split] = [str(i) for i in ids]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._tmp is not None
        try:
            if exc_type is not None:
                return
            sizes = {}
            for split, arrays in self._arrays.items():
                missing = int((np.asarray(arrays["labels"]) < 0).sum())
                if missing:
                    raise CacheError(f"split {split!r}: {missing} samples were never written")
                for array in arrays.values():
                    array.flush()
                np.save(self._tmp / split / "clip_ids.npy", np.asarray(self._ids[split], dtype=str))
                sizes[split] = len(arrays["labels"])
            manifest = {
                "version": CACHE_VERSION,
                "dataset": self.dataset,
                "classes": self.classes,
                "modalities": {m: {"kind": k, "shape": list(s)} for m, (k, s) in self.modalities.items()},
                "splits": sizes,
                "preprocessing": self.preprocessing,
            }
            (self._tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            self._arrays.clear()
            if self.root.exists():
                shutil.rmtree(self.root)
            os.replace(self._tmp, self.root)
        finally:
            self._arrays.clear()
            if self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)


def write_cache(
    root: str | os.PathLike,
    dataset: str,
    classes: list[str],
    modalities: Mapping[str, str],
    splits: dict[str, Split],
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Write in-memory splits as a cache (atomic)."""
    first = next(iter(splits.values()))
    specs = {m: (kind, first.inputs[m].shape[1:]) for m, kind in modalities.items()}
    with CacheWriter(root, dataset, classes, specs, preprocessing) as writer:
        for name, split in splits.items():
            writer.write_split(name, split)
    return Path(root)


def _load_array(path: Path, mode: Literal["r"] | None, size: int) -> np.ndarray:
    """One array of a cache, with its length checked against the manifest."""
    try:
        array = np.load(path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: missing or damaged ({err}); prepare the dataset again") from None
    if len(array) != size:
        raise CacheError(f"{path}: {len(array)} rows, the manifest says {size}; prepare the dataset again")
    return array


def load_cache(root: str | os.PathLike, in_memory: bool = False) -> MultimodalData:
    """Open a cache read-only (memory-mapped unless ``in_memory``)."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise CacheError(
            f"no prepared dataset at {root} (missing manifest.json); "
            "create it with: python -m drl_tune.data.prepare DATASET --src RAW_DIR --out " + str(root)
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise CacheError(f"{manifest_path}: unreadable manifest ({err}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        manifest = manifest if isinstance(manifest, dict) else {}
        dataset = manifest.get("dataset") or "DATASET"
        raise CacheError(
            f"{root} is a cache of version {manifest.get('version')}, this drl_tune reads version "
            f"{CACHE_VERSION}; prepare it again with: python -m drl_tune.data.prepare {dataset} --src RAW_DIR "
            f"--out {root} --force"
        )
    mode: Literal["r"] | None = None if in_memory else "r"
    try:
        modalities = {m: ModalityKind.parse(spec["kind"]) for m, spec in manifest["modalities"].items()}
    except ValueError as err:
        raise CacheError(f"{manifest_path}: {err}; prepare the dataset again with this drl_tune") from None
    splits = {}
    for split, size in manifest["splits"].items():
        folder = root / split
        inputs = {m: _load_array(folder / f"{m}.npy", mode, size) for m in modalities}
        labels = _load_array(folder / "labels.npy", None, size)
        ids = _load_array(folder / "clip_ids.npy", None, size)
        splits[split] = Split(inputs, labels, ids)
    return MultimodalData(
        manifest["dataset"], list(manifest["classes"]), modalities, splits, manifest.get("preprocessing", {})
    )
