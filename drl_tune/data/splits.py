"""Split lists and deterministic splits.

Split files come in the formats the official code reads: CREMA-D ``name,label`` CSVs (the published ones
mix a UTF-8 BOM, CRLF line ends and an optional ``name,label`` header), Kinetics-Sounds lists
``name,10,label`` (or ``name label``), UCF-101 ``Class/v_Class_gNN_cNN.avi [index]`` lists. Every parse
error names the file and line. Where a dataset has no validation list, validation is carved from the
training list deterministically, stratified by class, and by *group* (YouTube video, UCF-101 group) where
clips of one group are near-duplicates, so none leaks across the split.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from drl_tune.data.sources import PrepareError

HEADER_WORDS = {"name", "label", "labels", "class", "clip", "file", "filename", "video", "id"}


def read_text(path: str | Path) -> str:
    """A text file's content, tolerating a UTF-8 BOM and CRLF line ends."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PrepareError(f"{path}: cannot read the split file ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_rows(path: str | Path) -> list[tuple[int, list[str]]]:
    """Non-empty rows as (1-based line number, stripped fields); fields split on commas, else whitespace.

    A first row whose fields are all header words (``name,label``) is dropped.
    """
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        fields = next(csv.reader(io.StringIO(line))) if "," in line else line.split()
        fields = [f.strip() for f in fields]
        rows.append((number, fields))
    if rows and all(f.lower() in HEADER_WORDS for f in rows[0][1] if f):
        rows = rows[1:]
    return rows


def read_labelled(path: str | Path, classes: list[str] | None = None, label_field: int = -1,
                  min_fields: int = 2) -> list[tuple[str, str]]:
    """(clip, label) rows of a split file, checked against ``classes`` when given, no duplicates."""
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, fields in read_rows(path):
        if len(fields) < min_fields or not fields[0]:
            raise PrepareError(f"{path}, line {number}: expected 'name,label', found {','.join(fields)!r}")
        name, label = fields[0], fields[label_field]
        if classes is not None and label not in classes:
            raise PrepareError(f"{path}, line {number}: label {label!r} of {name} is not a class of this "
                               f"dataset ({', '.join(classes)})")
        if name in seen:
            raise PrepareError(f"{path}, line {number}: clip {name} is listed twice (first on line {seen[name]})")
        seen[name] = number
        out.append((name, label))
    if not out:
        raise PrepareError(f"{path}: the split file lists no clips")
    return out


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line: the first CSV field (CREMA-D ``stat.csv``; names may hold spaces), or the
    name after an index (UCF-101 ``classInd.txt``: ``1 ApplyEyeMakeup``)."""
    names: list[str] = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        indexed = re.fullmatch(r"(\d+)[\s,]+(.+)", line)
        name = indexed.group(2).strip() if indexed else next(csv.reader(io.StringIO(line)))[0].strip()
        if name in names:
            raise PrepareError(f"{path}, line {number}: class {name!r} is listed twice")
        names.append(name)
    if not names:
        raise PrepareError(f"{path}: the class list is empty")
    return names


def check_disjoint(splits: dict[str, list[str]], where: str) -> None:
    """A clip in two splits is a leak; say which and where."""
    owner: dict[str, str] = {}
    for split, clips in splits.items():
        for clip in clips:
            if clip in owner:
                raise PrepareError(f"{where}: clip {clip} is in both the {owner[clip]} and the {split} split")
            owner[clip] = split


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Indices per split with the given sizes, stratified by label (scikit-learn's ``train_test_split``).

    The first split named in ``sizes`` takes what is left; the others are drawn from it in order.
    """
    from sklearn.model_selection import train_test_split

    names = list(sizes)
    rest = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    for name in names[1:]:
        try:
            rest, taken = train_test_split(rest, test_size=sizes[name], stratify=labels[rest], random_state=seed)
        except ValueError as err:
            counts = np.bincount(labels, minlength=int(labels.max()) + 1)
            raise PrepareError(
                f"too few clips for a stratified {'/'.join(names)} split ({len(labels)} clips, per class "
                f"{counts.tolist()}): {err}. Give every split as a list (--splits)"
            ) from None
        out[name] = np.sort(taken)
    out[names[0]] = np.sort(rest)
    return {name: out[name] for name in names}


def carve_validation(
    labels: np.ndarray, groups: list[str] | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: about ``fraction`` of each class's clips for validation.

    Without ``groups``: scikit-learn's stratified ``train_test_split``. With ``groups`` (clips cut from one
    video): whole groups move to validation, drawn per class (a group counts for its most frequent label) in a
    seeded order until the class has its share (at least one group); a class keeps one group in train.
    """
    if not 0.0 < fraction < 0.5:
        raise PrepareError(f"--val-fraction must be in (0, 0.5), got {fraction}")
    n = len(labels)
    if groups is None:
        parts = stratified_split(labels, {"train": 0, "val": max(1, round(n * fraction))}, seed)
        return parts["train"], parts["val"]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_class: dict[int, list[str]] = {}
    for g, idx in sorted(members.items()):
        by_class.setdefault(int(np.bincount(labels[idx]).argmax()), []).append(g)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(by_class):
        class_groups = by_class[label]
        target = fraction * sum(len(members[g]) for g in class_groups)
        taken = 0
        for k in rng.permutation(len(class_groups))[: len(class_groups) - 1]:
            if taken and taken + 0.5 * len(members[class_groups[k]]) > target:
                break  # one more group would overshoot the share more than it falls short
            val.extend(members[class_groups[k]])
            taken += len(members[class_groups[k]])
    if not val:
        raise PrepareError(f"too few clip groups ({len(members)}) to carve a {fraction:.0%} validation split; "
                           "give a validation list with --splits")
    val_set = set(val)
    return np.array([i for i in range(n) if i not in val_set]), np.array(sorted(val_set))


def youtube_group(name: str) -> str:
    """The YouTube video of a Kinetics clip name ``<11-char id>_<start>_<end>``."""
    match = re.fullmatch(r"(.{11})_\d+_\d+", name)
    return match.group(1) if match else name
