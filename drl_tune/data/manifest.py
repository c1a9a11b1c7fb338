"""Your own dataset from a manifest: one row per sample, one column per modality, no code to write.

    python -m drl_tune.data.prepare manifest --manifest data.csv --out /data/cache/mine
    python -m drl_tune.run --space demo --set data.name=manifest --set data.root=/data/cache/mine

The manifest is CSV (a header row) or JSON Lines (one object per line), paths relative to the manifest's folder:

* ``id``: unique per sample; ``label``: a string (the class list is the sorted distinct labels);
* ``split`` (optional): ``train``, ``val`` or ``test``. Without it the samples are split here, seeded and
  stratified by label with ``--split-ratios`` (default 0.7,0.15,0.15); with a ``group`` column (speaker, subject,
  video) no group lands in two splits;
* one column per modality, headed ``NAME:KIND`` — the modality's name and what its files are:

  ``wav``     an audio file: the Kaldi fbank spectrogram every audio set here gets (``--n-mels``, ``--audio-frames``)
  ``frames``  a folder of images: ``--frames`` of them, evenly spaced, resized to ``--size``
  ``video``   a video file: ``--frames`` frames, evenly spaced (PyAV)
  ``image``   one image, stored as a clip of ``--frames`` copies (so image and video encoders are the same)
  ``features`` a ``.npy`` array of precomputed features: a vector [D] (an MLP encodes it) or a sequence [T, D]
              (padded/truncated to ``--sequence-length`` steps with a mask; a 1-D conv or Transformer encodes it).
              Every sample of the column has the same shape kind and the same D.

Any number of modalities (two or more). The cache is the format every dataset here uses (memory-mapped, written
atomically), the manifest's hash in its ``preprocessing`` entry; the readers are those of CREMA-D and
Kinetics-Sounds (:mod:`drl_tune.data.sources`), not copies. Bad input stops before anything is written, with one
line naming the row and the column.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drl_tune.data.sources import (
    IMAGE_EXTS,
    AVDecoder,
    Item,
    PrepareError,
    PreparePlan,
    audio_features,
    audio_preprocessing,
    folder_frames,
    frames_preprocessing,
    read_image,
    video_frames,
)
from drl_tune.ground.modality import ModalityKind

NAME = "manifest"
NEEDS_SRC = False  # the manifest file names everything (prepare's --src is for folder-shaped datasets)
KINDS = {"wav": ModalityKind.SPECTROGRAM, "frames": ModalityKind.FRAMES, "video": ModalityKind.FRAMES,
         "image": ModalityKind.FRAMES, "features": ModalityKind.VECTOR}  # features: VECTOR or SEQUENCE by its arrays
SPLITS = ("train", "val", "test")
RESERVED = ("id", "label", "split", "group")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="the CSV or JSON Lines file (one row per sample)")
    parser.add_argument("--split-ratios", default="0.7,0.15,0.15",
                        help="train,val,test shares when the manifest has no split column (0.7,0.15,0.15)")
    parser.add_argument("--frames", type=int, default=2, help="frames per visual sample (default 2, as DRL)")
    parser.add_argument("--audio-frames", type=int, default=300, help="spectrogram length in 10 ms frames (300)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio resampled to this rate (16000)")
    parser.add_argument("--sequence-length", type=int, default=0,
                        help="steps a feature sequence is padded/truncated to (default 0: the longest in the manifest)")


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (header) or JSON Lines manifest."""
    if not path.is_file():
        raise PrepareError(f"--manifest {path} does not exist; pass the CSV or JSON Lines file of your dataset")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise PrepareError(f"{path}, line {number}: not JSON ({err})") from None
                if not isinstance(row, dict):
                    raise PrepareError(f"{path}, line {number}: expected an object with id, label and the modality "
                                       f"columns, got {type(row).__name__}")
                rows.append((number, {str(k): v for k, v in row.items()}))
        return rows
    reader = csv.DictReader(text.splitlines())
    return [(number, {k: v for k, v in row.items() if k is not None}) for number, row in enumerate(reader, start=2)]


@dataclass(frozen=True)
class Column:
    header: str  # as written: audio:wav
    name: str  # the modality's name: audio
    source: str  # wav, frames, video, image


def _columns(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[Column]:
    if not rows:
        raise PrepareError(f"{path}: no samples (an empty manifest)")
    headers = list(rows[0][1])
    for required in ("id", "label"):
        if required not in headers:
            raise PrepareError(f"{path}: missing the column {required!r}; the columns are id, label, optional split "
                               f"and group, and one NAME:KIND per modality (e.g. audio:wav, visual:frames)")
    columns = []
    for header in headers:
        if header in RESERVED:
            continue
        name, sep, source = header.partition(":")
        if not sep or not name:
            raise PrepareError(f"{path}: column {header!r} is not NAME:KIND (e.g. audio:wav); kinds: "
                               f"{', '.join(KINDS)}")
        if source not in KINDS:
            raise PrepareError(f"{path}: column {header!r}: unknown kind {source!r}; known: {', '.join(KINDS)}")
        columns.append(Column(header, name, source))
    if len({c.name for c in columns}) != len(columns):
        raise PrepareError(f"{path}: a modality name appears twice among {', '.join(c.header for c in columns)}")
    if len(columns) < 2:
        raise PrepareError(f"{path}: {len(columns)} modality column(s); a multimodal dataset needs at least two "
                           f"(NAME:KIND headers, e.g. audio:wav and visual:frames)")
    return columns


def _resolve(path: Path, number: int, column: Column, value: Any) -> str:
    """The sample's file or folder for ``column``, checked to exist (relative paths: from the manifest's folder)."""
    if value is None or str(value).strip() == "":
        raise PrepareError(f"{path}, line {number}, column {column.header!r}: empty; every sample needs every "
                           f"modality")
    target = Path(str(value).strip())
    target = target if target.is_absolute() else path.parent / target
    if column.source == "features" and target.suffix.lower() != ".npy":
        raise PrepareError(f"{path}, line {number}, column {column.header!r}: {target.name} is not a .npy file "
                           f"(features are one NumPy array per sample, np.save)")
    want_dir = column.source == "frames"
    if not (target.is_dir() if want_dir else target.is_file()):
        what = "folder of images" if want_dir else "file"
        raise PrepareError(f"{path}, line {number}, column {column.header!r}: {target} does not exist (expected a "
                           f"{what})")
    if column.source == "image" and target.suffix.lower() not in IMAGE_EXTS:
        raise PrepareError(f"{path}, line {number}, column {column.header!r}: {target.name} is not an image "
                           f"({', '.join(IMAGE_EXTS)})")
    return str(target)


def _split(args: argparse.Namespace, path: Path, ids: list[str], labels: np.ndarray,
           groups: list[str] | None) -> dict[str, np.ndarray]:
    """Seeded, stratified by label; with groups, no group in two splits (scikit-learn's GroupShuffleSplit)."""
    try:
        ratios = [float(x) for x in str(args.split_ratios).split(",")]
    except ValueError:
        ratios = []
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise PrepareError(f"--split-ratios {args.split_ratios!r}: give three positive shares of train,val,test "
                           f"that sum to 1, e.g. 0.7,0.15,0.15")
    n = len(ids)
    if groups is None:
        from drl_tune.data.splits import stratified_split

        sizes = {"val": round(n * ratios[1]), "test": round(n * ratios[2])}
        if min(sizes.values()) < 1:
            raise PrepareError(f"{path}: {n} samples are too few for the split {args.split_ratios}")
        return stratified_split(labels, {"train": 0, **sizes}, args.seed)
    from sklearn.model_selection import GroupShuffleSplit

    everything = np.arange(n)
    g = np.array(groups)
    if len(set(groups)) < 3:
        raise PrepareError(f"{path}: {len(set(groups))} group(s) cannot fill three splits without sharing one")
    test_part = GroupShuffleSplit(n_splits=1, test_size=ratios[2], random_state=args.seed)
    rest, test = next(test_part.split(everything, groups=g))
    val_part = GroupShuffleSplit(n_splits=1, test_size=ratios[1] / (ratios[0] + ratios[1]), random_state=args.seed)
    train, val = next(val_part.split(rest, groups=g[rest]))
    return {"train": np.sort(rest[train]), "val": np.sort(rest[val]), "test": np.sort(test)}


@dataclass(frozen=True)
class ManifestDecoder(AVDecoder):
    """The audio-visual decoder's settings (frames, size, mel bins, audio frames, sample rate) for any columns: each
    sample's modalities through the shared readers (a frozen dataclass: it pickles into prepare's workers)."""

    columns: tuple[Column, ...] = ()
    sequence_lengths: dict[str, int] = field(default_factory=dict)  # per feature-sequence column; 0 = a vector

    def __call__(self, item: Item) -> dict[str, np.ndarray]:
        out = {}
        for c in self.columns:
            source = item.sources[c.name]
            if c.source == "wav":
                out[c.name] = audio_features(source, self.sample_rate, self.n_mels, self.audio_frames)
            elif c.source == "frames":
                out[c.name] = folder_frames(source, self.frames, self.size)
            elif c.source == "video":
                out[c.name] = video_frames(source, self.frames, self.size)
            elif c.source == "features":
                out[c.name] = fit_features(read_features(source), self.sequence_lengths.get(c.name, 0))
            else:  # one image, repeated as a clip of `frames` frames
                image = read_image(source, self.size)
                out[c.name] = np.repeat(image[None], self.frames, axis=0)
        return out


def read_features(source: str) -> np.ndarray:
    """One sample's features as float32, refusing what a model cannot train on (pickles, non-finite values)."""
    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise PrepareError(f"{source}: not a readable .npy array of numbers ({err})") from None
    if array.dtype.kind not in "biuf" or array.ndim not in (1, 2):
        raise PrepareError(f"{source}: features must be numbers shaped [D] or [T, D], got {array.dtype} "
                           f"{list(array.shape)}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise PrepareError(f"{source}: holds NaN or infinite values; a model cannot train on them")
    return array


def fit_features(array: np.ndarray, length: int) -> np.ndarray:
    """A vector as it is; a sequence [T, D] as [length, D + 1]: its first ``length`` steps, zero-padded, and a
    last column marking the real steps (1) from the padding (0) — what the sequence encoder pools over."""
    if array.ndim == 1:
        return array
    out = np.zeros((length, array.shape[1] + 1), np.float32)
    steps = min(length, len(array))
    out[:steps, :-1] = array[:steps]
    out[:steps, -1] = 1.0
    return out


def _feature_shapes(path: Path, rows: list[tuple[int, dict[str, Any]]], column: Column,
                    files: list[str], declared: int) -> tuple[ModalityKind, tuple[int, ...], int]:
    """The column's kind (vector or sequence), its cached per-sample shape and sequence length, read off every
    file's header (memory-mapped: no data is read); a sample of another shape is named by its row."""
    first: tuple[int, tuple[int, ...]] | None = None
    longest = 0
    for (number, _), file in zip(rows, files, strict=True):
        try:
            shape = np.load(file, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError) as err:
            raise PrepareError(f"{path}, line {number}, column {column.header!r}: {file} is not a readable .npy "
                               f"array ({err})") from None
        if len(shape) not in (1, 2) or 0 in shape:
            raise PrepareError(f"{path}, line {number}, column {column.header!r}: features of shape {list(shape)}; "
                               f"give a vector [D] or a sequence [T, D] with T, D >= 1")
        if first is None:
            first = (number, shape)
        elif len(shape) != len(first[1]) or shape[-1] != first[1][-1]:
            what = "[D]" if len(first[1]) == 1 else "[T, D]"
            raise PrepareError(f"{path}, line {number}, column {column.header!r}: features of shape {list(shape)}, "
                               f"but line {first[0]} has {list(first[1])}; every sample of a column is {what} "
                               f"with D = {first[1][-1]}")
        longest = max(longest, shape[0])
    assert first is not None
    if len(first[1]) == 1:
        return ModalityKind.VECTOR, first[1], 0
    length = declared or longest
    return ModalityKind.SEQUENCE, (length, first[1][-1] + 1), length


def make_plan(args: argparse.Namespace) -> PreparePlan:
    """Read and check the whole manifest (every row, every file), then the plan the shared writer follows."""
    path = Path(args.manifest).resolve()
    rows = _rows(path)
    columns = _columns(path, rows)
    if args.frames < 1 or args.audio_frames < 1 or args.sequence_length < 0:
        raise PrepareError("--frames and --audio-frames must be >= 1, --sequence-length >= 0")
    seen: dict[str, int] = {}
    ids, labels, splits_given, groups, sources = [], [], [], [], []
    for number, row in rows:
        sample = str(row.get("id", "")).strip()
        if not sample:
            raise PrepareError(f"{path}, line {number}, column 'id': empty; every sample needs an id")
        if sample in seen:
            raise PrepareError(f"{path}, line {number}, column 'id': {sample!r} is also the id on line "
                               f"{seen[sample]}; ids must be unique")
        seen[sample] = number
        label = str(row.get("label", "")).strip()
        if not label:
            raise PrepareError(f"{path}, line {number}, column 'label': empty")
        split = str(row.get("split", "") or "").strip()
        if "split" in row and split not in SPLITS:
            raise PrepareError(f"{path}, line {number}, column 'split': {split!r}; one of {', '.join(SPLITS)}")
        ids.append(sample)
        labels.append(label)
        splits_given.append(split)
        groups.append(str(row.get("group", "") or "").strip())
        sources.append({c.name: _resolve(path, number, c, row.get(c.header)) for c in columns})
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise PrepareError(f"{path}: one label ({classes[0]!r}); a classification needs at least two")
    y = np.array([classes.index(label) for label in labels])
    if "split" in rows[0][1]:
        parts = {s: np.array([i for i, given in enumerate(splits_given) if given == s], dtype=int) for s in SPLITS}
        how = {"kind": "the manifest's split column"}
    else:
        grouped = "group" in rows[0][1]
        parts = _split(args, path, ids, y, groups if grouped else None)
        how = {"kind": "stratified" if not grouped else "by group", "seed": args.seed, "ratios": args.split_ratios}
    for s in SPLITS:
        if len(parts[s]) == 0:
            raise PrepareError(f"{path}: the {s} split is empty; give it samples (split column) or change "
                               f"--split-ratios")
    train_labels = {labels[i] for i in parts["train"]}
    for s in ("val", "test"):
        for i in parts[s]:
            if labels[i] not in train_labels:
                raise PrepareError(f"{path}, line {rows[i][0]}, column 'label': {labels[i]!r} appears in {s} but "
                                   f"never in train; the model cannot learn a class it never sees")
    if "group" in rows[0][1]:
        owner: dict[str, str] = {}
        for s in SPLITS:
            for i in parts[s]:
                if groups[i] and owner.setdefault(groups[i], s) != s:
                    raise PrepareError(f"{path}, line {rows[i][0]}, column 'group': {groups[i]!r} is in "
                                       f"{owner[groups[i]]} and {s}; a group must stay in one split")
    splits = {s: [Item(ids[i], int(y[i]), sources[i]) for i in parts[s]] for s in SPLITS}
    shapes: dict[str, tuple[ModalityKind, tuple[int, ...]]] = {
        c.name: (KINDS[c.source], (args.audio_frames, args.n_mels) if c.source == "wav"
                 else (args.frames, 3, args.size, args.size)) for c in columns}
    lengths: dict[str, int] = {}
    for c in columns:
        if c.source == "features":
            kind, shape, length = _feature_shapes(path, rows, c, [src[c.name] for src in sources],
                                                  args.sequence_length)
            shapes[c.name] = (kind, shape)
            if length:
                lengths[c.name] = length
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PreparePlan(
        dataset=NAME,
        classes=classes,
        modalities=shapes,
        splits=splits,
        decode=ManifestDecoder(args.frames, args.size, args.n_mels, args.audio_frames, args.sample_rate,
                               columns=tuple(columns), sequence_lengths=lengths),
        preprocessing={
            "manifest": {"file": str(path), "sha256": digest, "columns": [c.header for c in columns]},
            "splits": how,
            **{c.name: _preprocessing(args, c, shapes[c.name], lengths.get(c.name, 0)) for c in columns},
            "augment": {c.name: "crop_flip" for c in columns if c.source not in ("wav", "features")},
        },
    )


def _preprocessing(args: argparse.Namespace, column: Column, kind_shape: tuple[ModalityKind, tuple[int, ...]],
                   length: int) -> dict[str, Any]:
    """What was done to a column's files, recorded in the cache (and so in every run's parameters)."""
    if column.source == "wav":
        return audio_preprocessing("wav", args.n_mels, args.sample_rate, args.audio_frames, "")
    if column.source == "features":
        kind, shape = kind_shape
        if kind is ModalityKind.VECTOR:
            return {"source": "features", "kind": "vector", "dim": shape[0]}
        return {"source": "features", "kind": "sequence", "dim": shape[1] - 1, "steps": length,
                "fit": "first steps kept, zero-padded; last column = mask"}
    sampling = "evenly spaced" if column.source != "image" else "one image, repeated"
    return {**frames_preprocessing(args.frames, args.size, sampling), "source": column.source}
