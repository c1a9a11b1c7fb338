"""CREMA-D (6 emotions, 7442 clips of 91 actors) → the cache: ``audio`` spectrogram + ``visual`` frames.

Two source layouts are read:

* the raw corpus: ``AudioWAV/<clip>.wav`` and ``VideoFlash/<clip>.flv`` (clip = ``1001_DFA_ANG_XX``, the
  third field is the emotion);
* the layout the official DRL / OGM-GE code reads: ``visual/<clip>/frame_000NN.jpg`` and
  ``audio/<clip>.pt`` (a precomputed fbank tensor [T, 128]) or ``audio/<clip>.wav``.

Splits: ``--splits DIR`` with the official CSVs (``my_train.csv`` or ``train.csv``, ``val.csv``, ``test.csv``,
optionally ``stat.csv`` with the class names; ``name,label`` rows, BOM / CRLF / header tolerated; the
official ``train.csv`` is ``my_train.csv`` + ``val.csv``, so validation clips are taken out of it; without
``val.csv`` validation is carved from train, stratified, in the official proportion 744 / 6698).
Without ``--splits``: a deterministic stratified train / val / test split in the official proportions
(5954 / 744 / 744 of 7442), seeded by ``--seed``.

Class order: sorted names (ANG, DIS, FEA, HAP, NEU, SAD), as the DRL code's ``sorted(stat.csv)``.
Audio: Kaldi fbank, 128 mel bins, 25 ms window, 10 ms shift, 16 kHz, per-clip mean removed per mel bin
(``log_fbank``), cropped / zero-padded to ``--audio-frames`` (300 = 3 s, the window OGM-GE trains on; CREMA-D
clips last 1–5 s, 2.5 s on average). Official ``.pt`` tensors are stored as they are (their unpublished
script's normalisation), only cropped / padded. Visual: ``--frames`` (2) frames resized to ``--size`` (224)²
like the official evaluation transform (``Resize((224, 224))``, ``code/dataset/av_dataset.py`` lines 92-97); from
a frame folder the very frames the official DRL loader opens for every split its training script reads
(``my_train``, ``val``, ``test``: ``av_dataset.py`` lines 99-109, frame number i·⌊F/2⌋ + ⌊F/4⌋ of F, by file
name — ``sources.FRAME_RULES["drl"]``), from a video the centres of equal segments (the official frames were
extracted by a script that is not published).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from drl_tune.data.sources import (
    VIDEO_EXTS,
    Item,
    PrepareError,
    PreparePlan,
    audio_visual_plan,
    audio_visual_source,
    find_file,
    keep_complete,
    require_items,
)
from drl_tune.data.splits import check_disjoint, read_classes, read_labelled, stratified_split

NAME = "cremad"
CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
OFFICIAL = {"train": 5954, "val": 744, "test": 744}  # of 7442 clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", type=Path, help="folder with the official split CSVs (my_train, val, test, stat)")
    parser.add_argument("--frames", type=int, default=2, help="frames per clip (default 2, as DRL)")
    parser.add_argument("--audio-frames", type=int, default=300, help="spectrogram length in 10 ms frames (300)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio resampled to this rate (default 16000)")


def _layout(src: Path) -> str:
    if (src / "AudioWAV").is_dir() and (src / "VideoFlash").is_dir():
        return "raw"
    if (src / "audio").is_dir() and (src / "visual").is_dir():
        return "official"
    raise PrepareError(
        f"{src}: not a CREMA-D folder; expected AudioWAV/ and VideoFlash/ (the raw corpus) or audio/ and "
        "visual/ (the layout the official code reads)"
    )


def _sources(src: Path, layout: str, clip: str) -> tuple[dict[str, str], list[str]]:
    """Where a clip's inputs are, and what is missing (as expected paths)."""
    sources: dict[str, str] = {}
    missing: list[str] = []
    if layout == "raw":
        audio = find_file([src / "AudioWAV"], clip, (".wav",))
        video = find_file([src / "VideoFlash"], clip, VIDEO_EXTS)
        if video is not None:
            sources["video"] = str(video)
        else:
            missing.append(str(src / "VideoFlash" / f"{clip}.flv"))
    else:
        audio = find_file([src / "audio"], clip, (".pt", ".wav", ".npy"))
        frames = src / "visual" / clip
        if frames.is_dir():
            sources["frames"] = str(frames)
        else:
            missing.append(f"{frames}/")
    if audio is not None:
        sources["audio"] = str(audio)
    else:
        missing.insert(0, str(src / ("AudioWAV" if layout == "raw" else "audio") / f"{clip}.wav"))
    return sources, missing


def _inventory(src: Path, layout: str) -> list[str]:
    """Clip ids present in either modality's folder (sorted)."""
    if layout == "raw":
        names = {p.stem for p in (src / "AudioWAV").glob("*.wav")}
        names |= {p.stem for p in (src / "VideoFlash").iterdir() if p.suffix.lower() in VIDEO_EXTS}
    else:
        names = {p.stem for p in (src / "audio").iterdir() if p.suffix in (".pt", ".wav", ".npy")}
        names |= {p.name for p in (src / "visual").iterdir() if p.is_dir()}
    return sorted(names)


def _official_splits(folder: Path, classes: list[str]) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Rows per split from the official CSVs, and which file each split came from."""
    if not folder.is_dir():
        raise PrepareError(f"{folder}: split folder does not exist")
    train_file = next((folder / n for n in ("my_train.csv", "train.csv") if (folder / n).is_file()), None)
    test_file = folder / "test.csv"
    if train_file is None or not test_file.is_file():
        raise PrepareError(f"{folder}: expected my_train.csv (or train.csv) and test.csv (and optionally val.csv)")
    rows = {"train": read_labelled(train_file, classes), "test": read_labelled(test_file, classes)}
    files = {"train": str(train_file), "test": str(test_file)}
    if (folder / "val.csv").is_file():
        rows["val"] = read_labelled(folder / "val.csv", classes)
        files["val"] = str(folder / "val.csv")
        if train_file.name == "train.csv":  # the official train.csv = my_train.csv + val.csv
            val_clips = {name for name, _ in rows["val"]}
            rows["train"] = [row for row in rows["train"] if row[0] not in val_clips]
        if not rows["train"]:
            raise PrepareError(f"{train_file}: no training clip left once the validation clips are taken out")
    else:
        labels = np.array([classes.index(label) for _, label in rows["train"]])
        n_val = max(1, round(len(labels) * OFFICIAL["val"] / (OFFICIAL["train"] + OFFICIAL["val"])))
        parts = stratified_split(labels, {"train": 0, "val": n_val}, seed=0)
        train_rows = rows["train"]
        rows["train"] = [train_rows[i] for i in parts["train"]]
        rows["val"] = [train_rows[i] for i in parts["val"]]
        files["val"] = f"{train_file} (stratified {n_val} clips)"
    check_disjoint({s: [n for n, _ in r] for s, r in rows.items()}, str(folder))
    return {s: rows[s] for s in ("train", "val", "test")}, {s: files[s] for s in ("train", "val", "test")}


def make_plan(args: argparse.Namespace) -> PreparePlan:
    """Find the clips, their labels and splits; check every listed clip has both modalities."""
    src = audio_visual_source(args, "CREMA-D")
    layout = _layout(src)
    classes = list(CLASSES)
    if args.splits is not None and (Path(args.splits) / "stat.csv").is_file():
        classes = sorted(read_classes(Path(args.splits) / "stat.csv"))  # as the DRL code: sorted(stat.csv)

    skipped: dict[str, list[str]] = {}
    split_source: dict[str, Any]
    if args.splits is not None:
        rows, files = _official_splits(Path(args.splits), classes)
        split_source = {"kind": "official CSVs", "files": files}
    else:
        clips = _inventory(src, layout)
        if not clips:
            raise PrepareError(f"{src}: no clips found")
        labels = []
        for clip in clips:
            fields = clip.split("_")
            if len(fields) < 3 or fields[2] not in classes:
                raise PrepareError(f"{src}: clip {clip} does not name its emotion (expected e.g. 1001_DFA_ANG_XX "
                                   f"with one of {', '.join(classes)}); rename it or give --splits")
            labels.append(fields[2])
        present = [i for i, clip in enumerate(clips) if not _sources(src, layout, clip)[1]]
        # with --skip-missing, split what is complete, so the proportions hold on what is kept
        keep = present if args.skip_missing else list(range(len(clips)))
        if len(keep) < len(clips):
            kept = set(keep)
            skipped["before splitting"] = [clip for i, clip in enumerate(clips) if i not in kept]
        y = np.array([classes.index(labels[i]) for i in keep])
        n = len(keep)
        sizes = {s: round(n * OFFICIAL[s] / sum(OFFICIAL.values())) for s in ("val", "test")}
        parts = stratified_split(y, {"train": 0, **sizes}, args.seed)
        rows = {s: [(clips[keep[i]], labels[keep[i]]) for i in parts[s]] for s in ("train", "val", "test")}
        split_source = {"kind": "stratified", "seed": args.seed, "proportions": OFFICIAL}

    splits: dict[str, list[Item]] = {}
    for split, split_rows in rows.items():
        items = []
        for clip, label in split_rows:
            sources, missing = _sources(src, layout, clip)
            listed_in = split_source["files"][split] if args.splits is not None else None
            if keep_complete(clip, missing, listed_in, split, args.skip_missing, skipped):
                items.append(Item(clip, classes.index(label), sources))
        splits[split] = require_items(items, split, src)

    return audio_visual_plan(NAME, classes, splits, args, {"source_layout": layout, "splits": split_source},
                             skipped, precomputed="precomputed official .pt fbank", frame_rule="drl")
