"""A trial's per-epoch history as the project reads it back: each epoch exactly once.

Tune appends one line per reported result to ``result.json`` / ``progress.csv``. A trial that was restored
from a checkpoint older than its last reported epoch (the driver was SIGKILLed after writing a result but
before saving the experiment state; or a worker died between its checkpoint and the driver's bookkeeping)
reports those epochs again, and a driver killed mid-write can leave a torn last line. Runs restore exactly,
so a repeated epoch carries the same values; readers keep the latest line per epoch and skip torn lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def dedupe_epochs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``epoch`` (the last one reported), in epoch order; rows without an epoch are dropped."""
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
            latest[int(row["epoch"])] = row
    return [latest[e] for e in sorted(latest)]


def read_result_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A Tune ``result.json`` (JSON lines) as one row per epoch; a missing file is an empty history."""
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
    return dedupe_epochs(rows)


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
