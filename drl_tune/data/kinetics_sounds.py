"""Kinetics-Sounds (31 classes, 10 s YouTube clips) → the cache: ``audio`` spectrogram + ``visual`` frames.

Source layout (OGM-GE's):

* split lists ``my_train.txt`` / ``my_test.txt`` (or ``train.txt`` / ``test.txt``; optional ``my_val.txt`` /
  ``val.txt``) with rows ``<clip>,10,<label>`` — or ``<clip> <label>`` — in ``--splits`` (default: ``--src``).
  The label is the class index (0–30) or a class name from the class list;
* class names (optional): ``classes.txt`` / ``stat.txt`` / ``stat.csv`` in the split folder, one per line in
  index order; without one the classes are named ``"0"`` … ``"30"`` (``--num-classes``);
* audio: ``audio/<clip>.wav`` (10 s) or ``audio/<clip>.npy`` (OGM-GE's precomputed fbank [1024, 128]);
* frames: ``visual/<clip>/*.jpg`` (1 fps, 10 frames per clip), or a video ``video/<clip>.mp4`` (any of
  mp4/mkv/webm/avi/flv) when a clip has no frame folder.
  ``--audio-dir`` / ``--visual-dir`` / ``--video-dir`` (repeatable) point elsewhere, e.g. at OGM-GE's separate
  ``train_spec`` and ``test_spec`` folders.

Validation: ``my_val.txt`` if given, else ``--val-fraction`` (10%) of the training list, stratified by class
and disjoint by YouTube video (clips cut from one video never straddle train and val).
Audio: Kaldi fbank, 128 mel bins, 10 ms shift, 16 kHz, per-clip mean removed, ``--audio-frames`` 1024 (the
official 10 s length). Visual: ``--frames`` (3) frames resized to 224² (the evaluation ``Resize``); from a frame
folder the frames OGM-GE's loader opens in every split (``dataset/dataset.py`` lines 95-105: frame number
seg·i + 1, seg = ⌊F/3⌋, by file name — ``sources.FRAME_RULES["ogm_ge"]``; the DRL README points to OGM-GE's
preprocessing, DRL's own Kinetics-Sounds code is not published), from a video the centres of equal segments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from drl_tune.data.sources import (
    VIDEO_EXTS,
    Item,
    PrepareError,
    PreparePlan,
    audio_visual_plan,
    audio_visual_source,
    find_dir,
    find_file,
    keep_complete,
    require_items,
)
from drl_tune.data.splits import carve_validation, check_disjoint, read_classes, read_labelled, youtube_group

NAME = "kinetics_sounds"
N_CLASSES = 31
LIST_NAMES = {
    "train": ("my_train.txt", "train.txt", "my_train.csv", "train.csv"),
    "val": ("my_val.txt", "val.txt", "my_val.csv", "val.csv"),
    "test": ("my_test.txt", "test.txt", "my_test.csv", "test.csv"),
}
CLASS_FILES = ("classes.txt", "stat.txt", "stat.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", type=Path, help="folder with the split lists (default: --src)")
    parser.add_argument("--num-classes", type=int, default=N_CLASSES, help="classes when no class list is given (31)")
    parser.add_argument("--audio-dir", type=Path, action="append", help="audio folder (repeatable; default SRC/audio)")
    parser.add_argument("--visual-dir", type=Path, action="append", help="frames' parent (repeatable; SRC/visual)")
    parser.add_argument("--video-dir", type=Path, action="append", help="video folder (repeatable; default SRC/video)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train (0.1)")
    parser.add_argument("--frames", type=int, default=3, help="frames per clip (default 3)")
    parser.add_argument("--audio-frames", type=int, default=1024, help="spectrogram length in 10 ms frames (1024)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio resampled to this rate (16000)")


def _list_file(folder: Path, split: str) -> Path | None:
    return next((folder / n for n in LIST_NAMES[split] if (folder / n).is_file()), None)


def _classes(folder: Path, n_classes: int) -> tuple[list[str], str | None]:
    for name in CLASS_FILES:
        if (folder / name).is_file():
            return read_classes(folder / name), str(folder / name)
    return [str(i) for i in range(n_classes)], None


def _label_index(label: str, classes: list[str], path: Path, clip: str, named: bool) -> int:
    if named and label in classes:
        return classes.index(label)
    if label.isdigit() and int(label) < len(classes):
        return int(label)
    raise PrepareError(f"{path}: label {label!r} of {clip} is not a class of this dataset "
                       f"(indices 0..{len(classes) - 1}{' or the names in the class list' if named else ''})")


def make_plan(args: argparse.Namespace) -> PreparePlan:
    """Read the split lists, resolve each clip's audio and frames, carve validation if needed."""
    src = audio_visual_source(args, "Kinetics-Sounds")
    lists = Path(args.splits) if args.splits is not None else src
    if not lists.is_dir():
        raise PrepareError(f"{lists}: split folder does not exist")
    classes, class_file = _classes(lists, args.num_classes)
    files = {s: _list_file(lists, s) for s in ("train", "val", "test")}
    for split in ("train", "test"):
        if files[split] is None:
            raise PrepareError(f"{lists}: no {split} list (expected one of {', '.join(LIST_NAMES[split])})")
    rows: dict[str, list[tuple[str, int]]] = {}
    for split, path in files.items():
        if path is not None:
            rows[split] = [(clip, _label_index(label, classes, path, clip, class_file is not None))
                           for clip, label in read_labelled(path)]
    if "val" not in rows:
        labels = np.array([y for _, y in rows["train"]])
        groups = [youtube_group(clip) for clip, _ in rows["train"]]
        train_idx, val_idx = carve_validation(labels, groups, args.val_fraction, args.seed)
        rows["val"] = [rows["train"][i] for i in val_idx]
        rows["train"] = [rows["train"][i] for i in train_idx]
    check_disjoint({s: [c for c, _ in r] for s, r in rows.items()}, str(lists))

    audio_dirs = args.audio_dir or [src / "audio"]
    visual_dirs = args.visual_dir or [src / "visual"]
    video_dirs = args.video_dir or [src / "video"]
    splits: dict[str, list[Item]] = {}
    skipped: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        items = []
        for clip, label in rows[split]:
            sources: dict[str, str] = {}
            missing: list[str] = []
            audio = find_file(audio_dirs, clip, (".wav", ".npy"))
            if audio is None:
                missing.append(str(audio_dirs[0] / f"{clip}.wav"))
            else:
                sources["audio"] = str(audio)
            frames = find_dir(visual_dirs, clip)
            video = None if frames is not None else find_file(video_dirs, clip, VIDEO_EXTS)
            if frames is not None:
                sources["frames"] = str(frames)
            elif video is not None:
                sources["video"] = str(video)
            else:
                missing.append(f"{visual_dirs[0] / clip}/ (or {video_dirs[0] / clip}.mp4)")
            if keep_complete(clip, missing, files[split] or files["train"], split, args.skip_missing, skipped):
                items.append(Item(clip, label, sources))
        splits[split] = require_items(items, split, lists)

    split_source = {
        "kind": "lists",
        "files": {s: str(p) if p else None for s, p in files.items()},
        "val": "list" if files["val"] else f"{args.val_fraction:.0%} of train, stratified, YouTube-video "
        f"disjoint (seed {args.seed})",
    }
    return audio_visual_plan(NAME, classes, splits, args,
                             {"source_layout": "ogm-ge", "class_list": class_file, "splits": split_source}, skipped,
                             precomputed="precomputed .npy fbank", frame_rule="ogm_ge")
