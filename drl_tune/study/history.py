"""A trial's per-epoch history as the project reads it back: each epoch exactly once.

Tune appends one line per reported result to ``result.json`` / ``progress.csv``. A trial that was restored
from a checkpoint older than its last reported epoch (the driver was SIGKILLed after writing a result but
before saving the experiment state; or a worker died between its checkpoint and the driver's bookkeeping)
reports those epochs again, and a driver killed mid-write can leave a torn last line. Runs restore exactly,
so a repeated epoch carries the same values; readers keep the latest line per epoch and skip torn lines.

A row can also be *missing*: Tune's driver writes ``result.json`` to a staging folder and, when it restarts a
trial whose worker died, first copies the storage's (older) ``result.json`` back over it, so the last row the
dead worker reported can vanish while its checkpoint, and MLflow, have it; the restart then continues after
that epoch. So every checkpoint also carries the trial's whole history so far (``history.json``, written by the
trainable) and :func:`read_result_json` fills an epoch that ``result.json`` lacks from the newest readable one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from drl_tune.ground.io import atomic_write_text

CHECKPOINT_HISTORY = "history.json"  # in every checkpoint folder: the trial's metrics rows up to that epoch
RESTORED_KEY = "restored_from"  # marks a row filled from a checkpoint ("checkpoint"); not a metric


def dedupe_epochs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``epoch`` (the last one reported), in epoch order; rows without an epoch are dropped."""
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
            latest[int(row["epoch"])] = row
    return [latest[e] for e in sorted(latest)]


def read_result_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A Tune trial's ``result.json`` (JSON lines) as one row per epoch, with any epoch it lacks filled from the
    trial's newest checkpoint; a missing file is an empty history."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    rows = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a killed driver
    rows = dedupe_epochs(rows)
    return fill_from_checkpoint(rows, checkpoint_history(path.parent)) if rows else rows


def write_checkpoint_history(folder: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write the trial's rows so far into a checkpoint folder (before it is handed to Tune)."""
    atomic_write_text(Path(folder) / CHECKPOINT_HISTORY, json.dumps(rows))


def load_checkpoint_history(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows a checkpoint folder carries; [] for a checkpoint written before it carried them, or torn."""
    try:
        rows = json.loads((Path(folder) / CHECKPOINT_HISTORY).read_text())
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def checkpoint_history(trial_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The history in the trial folder's newest checkpoint that has a readable one (a checkpoint torn by a kill
    is skipped for the one before it)."""
    folders = sorted(Path(trial_dir).glob("checkpoint_*"), key=lambda p: p.name, reverse=True)
    for folder in folders:
        rows = load_checkpoint_history(folder)
        if rows:
            return dedupe_epochs(rows)
    return []


def fill_from_checkpoint(rows: list[dict[str, Any]], saved: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (Tune's, one per epoch) plus every epoch only ``saved`` (a checkpoint's history) has. A checkpoint
    exists only once the worker reported its epoch (Tune persists it inside ``tune.report``, and a function
    trainable trains its next epoch only when the driver asks), and runs restore exactly, so a saved row is what
    Tune would have recorded. A filled row takes the trial's identity (``trial_id``, ``config``, ...) from Tune's
    rows and says ``restored_from: checkpoint``."""
    if not rows or not saved:
        return rows
    have = {int(r["epoch"]) for r in rows}
    identity = {k: v for k, v in rows[-1].items() if k in ("trial_id", "config", "experiment_tag", "node_ip")}
    missing = [{**identity, **r, RESTORED_KEY: "checkpoint"} for r in saved
               if int(r["epoch"]) not in have]
    return dedupe_epochs(rows + missing) if missing else rows


def metric_items(result: dict[str, Any]) -> dict[str, float]:
    """The engine's metrics in a Tune result (``a/b`` names, ``epoch``, ``best_epoch``); Tune's own keys dropped.
    The MLflow callback logs exactly these, and the analysis reads exactly these back from ``result.json``."""
    return {
        k: float(v) for k, v in result.items()
        if ("/" in k or k in ("epoch", "best_epoch")) and isinstance(v, (int, float)) and not isinstance(v, bool)
        and not k.startswith(("config/", "time_", "timestamp"))
    }


def dedupe_frame(frame: Any) -> Any:
    """The same for a pandas frame (Tune's ``Result.metrics_dataframe``)."""
    if frame is None or not len(frame) or "epoch" not in frame:
        return frame
    return frame.drop_duplicates(subset="epoch", keep="last").sort_values("epoch").reset_index(drop=True)
