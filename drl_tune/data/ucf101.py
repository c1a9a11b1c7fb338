"""UCF-101 (101 actions, split 1) → the cache: ``rgb`` frames + ``flow`` (optical flow u/v).

Source layout (the usual two-stream one, as the balanced-multimodal-learning code reads it):

* lists: ``classInd.txt`` (``1 ApplyEyeMakeup``),
  ``trainlist01.txt`` (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``), ``testlist01.txt`` in ``--splits``
  (default: ``SRC/ucfTrainTestlist`` if present, else ``SRC``); ``--split`` picks 1, 2 or 3;
* RGB frames: ``rgb/<clip>/*.jpg`` (or ``jpegs_256/<clip>/``), or the video ``UCF-101/<Class>/<clip>.avi``
  (or ``videos/<clip>.avi``) when a clip has no frame folder;
* optical flow: ``flow/u/<clip>/*.jpg`` and ``flow/v/<clip>/*.jpg`` (or ``tvl1_flow/u|v``), grayscale,
  128 = no motion. Flow cannot be computed here: it must be given.

Class order: ``classInd.txt`` order (label = index − 1). Validation: ``--val-fraction`` (10%) of the training
list, stratified by class and disjoint by UCF group (the clips of one group come from one long video).
Both modalities: ``--frames`` (3) frames, the centres of equal segments, resized to 224²; flow frames picked
the same way from the flow sequence. Training augmentation: horizontal flip only (the official UCF-101
training transform is ``Resize`` + ``RandomHorizontalFlip``), recorded in the manifest.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drl_tune.data.sources import (
    Item,
    PrepareError,
    PreparePlan,
    find_dir,
    find_file,
    frames_preprocessing,
    keep_complete,
    list_frames,
    pick_evenly,
    read_image,
    require_items,
    source_aspect,
    visual_frames,
)
from drl_tune.data.splits import carve_validation, check_disjoint, read_classes, read_rows

NAME = "ucf101"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", type=Path, help="folder with classInd.txt, trainlist0N.txt, testlist0N.txt")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="official split number (1)")
    parser.add_argument("--rgb-dir", type=Path, action="append", help="RGB frame folders' parent (repeatable)")
    parser.add_argument("--flow-dir", type=Path, action="append", help="folder holding u/ and v/ (repeatable)")
    parser.add_argument("--video-dir", type=Path, action="append", help="video folder (repeatable)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train (0.1)")
    parser.add_argument("--frames", type=int, default=3, help="frames per clip for each modality (default 3)")


@dataclass(frozen=True)
class UCFDecoder:
    """Decodes one clip into ``rgb`` uint8 [T, 3, S, S] and ``flow`` uint8 [T, 2, S, S]."""

    frames: int
    size: int

    def __call__(self, item: Item) -> dict[str, np.ndarray]:
        rgb = visual_frames(item.sources, self.frames, self.size)
        u, v = list_frames(item.sources["flow_u"]), list_frames(item.sources["flow_v"])
        if len(u) != len(v):
            raise PrepareError(f"{item.sources['flow_u']} holds {len(u)} flow frames but {item.sources['flow_v']} "
                               f"holds {len(v)}; re-extract the flow of {item.clip_id}")
        flow = np.stack([
            np.stack([read_image(u[i], self.size, mode="L"), read_image(v[i], self.size, mode="L")])
            for i in pick_evenly(len(u), self.frames)
        ])
        return {"rgb": rgb, "flow": flow}


def _lists_folder(src: Path, given: Path | None) -> Path:
    if given is not None:
        return Path(given)
    return src / "ucfTrainTestlist" if (src / "ucfTrainTestlist").is_dir() else src


def _group(clip: str) -> str:
    match = re.fullmatch(r"v_(.+)_g(\d+)_c\d+", clip)
    return f"{match.group(1)}_g{match.group(2)}" if match else clip


def _read_list(path: Path, classes: list[str]) -> list[tuple[str, int, str]]:
    """(clip id, label, class folder) rows of a train/test list."""
    lower = {c.lower(): i for i, c in enumerate(classes)}
    out: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    for number, fields in read_rows(path):
        entry = fields[0].replace("\\", "/")
        if "/" not in entry:
            raise PrepareError(f"{path}, line {number}: expected 'Class/v_Class_gNN_cNN.avi', found {entry!r}")
        folder, clip = entry.split("/")[-2], Path(entry).stem
        if folder not in classes and folder.lower() not in lower:
            raise PrepareError(f"{path}, line {number}: class {folder!r} of {clip} is not in classInd.txt")
        label = classes.index(folder) if folder in classes else lower[folder.lower()]
        if clip in seen:
            raise PrepareError(f"{path}, line {number}: clip {clip} is listed twice")
        seen.add(clip)
        out.append((clip, label, folder))
    if not out:
        raise PrepareError(f"{path}: the split file lists no clips")
    return out


def make_plan(args: argparse.Namespace) -> PreparePlan:
    """Read split ``--split``'s lists, resolve RGB and flow of each clip, carve validation from train."""
    src = Path(args.src)
    if not src.is_dir():
        raise PrepareError(f"source directory {src} does not exist (pass --src with the UCF-101 folder)")
    if args.frames < 1:
        raise PrepareError("--frames must be >= 1")
    lists = _lists_folder(src, args.splits)
    files = {"classes": lists / "classInd.txt", "train": lists / f"trainlist0{args.split}.txt",
             "test": lists / f"testlist0{args.split}.txt"}
    for path in files.values():
        if not path.is_file():
            raise PrepareError(f"{path}: split file does not exist (pass --splits with the ucfTrainTestlist folder)")
    classes = read_classes(files["classes"])
    rows = {"train": _read_list(files["train"], classes), "test": _read_list(files["test"], classes)}
    labels = np.array([y for _, y, _ in rows["train"]])
    train_idx, val_idx = carve_validation(labels, [_group(c) for c, _, _ in rows["train"]], args.val_fraction,
                                          args.seed)
    rows["val"] = [rows["train"][i] for i in val_idx]
    rows["train"] = [rows["train"][i] for i in train_idx]
    check_disjoint({s: [c for c, _, _ in r] for s, r in rows.items()}, str(lists))

    rgb_dirs = args.rgb_dir or [src / "rgb", src / "jpegs_256"]
    flow_dirs = args.flow_dir or [src / "flow", src / "tvl1_flow"]
    video_dirs = args.video_dir or [src / "UCF-101", src / "UCF101", src / "videos"]
    splits: dict[str, list[Item]] = {}
    skipped: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        items = []
        for clip, label, folder in rows[split]:
            sources: dict[str, str] = {}
            missing: list[str] = []
            frames = find_dir(rgb_dirs, clip)
            if frames is not None:
                sources["frames"] = str(frames)
            else:
                video = find_file(video_dirs, clip, (".avi", ".mp4")) or find_file(
                    [d / folder for d in video_dirs], clip, (".avi", ".mp4"))
                if video is None:
                    missing.append(f"{rgb_dirs[0] / clip}/ (or {video_dirs[0] / folder / clip}.avi)")
                else:
                    sources["video"] = str(video)
            for axis in ("u", "v"):
                flow = find_dir([d / axis for d in flow_dirs], clip)
                if flow is None:
                    missing.append(f"{flow_dirs[0] / axis / clip}/")
                else:
                    sources[f"flow_{axis}"] = str(flow)
            listed_in = files["test" if split == "test" else "train"]
            if keep_complete(clip, missing, listed_in, split, args.skip_missing, skipped):
                items.append(Item(clip, label, sources))
        splits[split] = require_items(items, split, lists)

    first = splits["train"][0]
    return PreparePlan(
        dataset=NAME,
        classes=classes,
        modalities={
            "rgb": ("frames", (args.frames, 3, args.size, args.size)),
            "flow": ("flow", (args.frames, 2, args.size, args.size)),
        },
        splits=splits,
        decode=UCFDecoder(args.frames, args.size),
        preprocessing={
            "source_layout": "two-stream (rgb frames + tvl1 flow u/v)",
            "splits": {
                "kind": f"official split {args.split}",
                "files": {k: str(v) for k, v in files.items()},
                "val": f"{args.val_fraction:.0%} of train, stratified, group-disjoint (seed {args.seed})",
            },
            "visual": frames_preprocessing(args.frames, args.size,
                                           "centre of each of N equal segments (rgb frames and flow frames separately)")
            | {"flow": "u, v grayscale images as given (128 = no motion)"},
            "source_aspect": source_aspect(first.sources),
            "augment": {"rgb": "flip", "flow": "flip"},
        },
        skipped=skipped,
    )
