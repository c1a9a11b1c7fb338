"""What a study prints: the table renderer, the live progress table (a Tune callback) and the search summary.

One reason to change: how results look on the console. The rows come from Tune (callbacks, a ``ResultGrid``);
nothing here decides what a study runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from drl_tune.ground.readable import sig4
from drl_tune.study.faults import reason_of, recorded_error
from drl_tune.study.history import dedupe_frame, read_result_json
from drl_tune.study.plan import Plan


def knob_columns(plan: Plan) -> list[str]:
    """Searched keys shown in the tables: the few that matter, short names."""
    return [p.key for p in plan.search if p.key != "method"][:4]


def format_cell(value: Any) -> str:
    """A table cell as people read it: a float to 4 significant digits (``sig4``), a missing value ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return sig4(value)


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[format_cell(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


class ProgressTable(Callback):
    """Tune callback printing a compact live table (method, key knobs, epoch, val acc, best, balance gap) at
    most every ``interval`` seconds, and one line whenever a trial ends. Picklable (Tune saves callbacks)."""

    def __init__(self, plan: Plan, interval: float = 15.0) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.interval = interval
        self.last_print = 0.0
        self.dirty = False
        self.knobs = knob_columns(plan)

    def _row(self, trial: Any) -> dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"status": "RUNNING", "config": dict(trial.config)})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "RUNNING"
        self.dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._row(trial)["result"] = result
        self.dirty = True

    def _end(self, trial: Any, status: str) -> None:
        row = self._row(trial)
        res = row.get("result", {})
        epochs_run = int(res.get("epoch", -1)) + 1
        if status == "TERMINATED" and epochs_run < int(trial.config.get("epochs", 0)):
            status = "STOPPED"
        row["status"] = status
        print(f"[{time.strftime('%H:%M:%S')}] trial {trial.trial_id} {status.lower()} "
              f"({trial.config.get('method')}) after {epochs_run} epochs, "
              f"best val acc {format_cell(res.get('val/acc_best'))}", flush=True)
        self.dirty = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "ERROR")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.dirty and time.monotonic() - self.last_print >= self.interval:
            self.print_table()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.dirty:
            self.print_table()

    def print_table(self) -> None:
        headers = ["trial", "status", "method", *self.knobs, "epoch", "val acc", "best", "gap"]
        rows = []
        for trial_id, row in self.rows.items():
            res, cfg = row.get("result", {}), row["config"]
            epoch = f"{int(res['epoch']) + 1}/{cfg.get('epochs', '?')}" if "epoch" in res else "-"
            rows.append([trial_id, row["status"], cfg.get("method"), *[cfg.get(k) for k in self.knobs],
                         epoch, res.get("val/acc"), res.get("val/acc_best"), res.get("balance/gap")])
        print(f"[{time.strftime('%H:%M:%S')}] progress", flush=True)
        print(render_table(headers, rows), flush=True)
        self.last_print = time.monotonic()
        self.dirty = False


@dataclass
class TrialOutcome:
    trial_id: str
    method: str
    status: str  # completed, stopped, error
    config: dict[str, Any]
    val_acc_best: float = float("nan")
    test_at_best_val: float = float("nan")
    gap_at_best_val: float = float("nan")
    epochs_run: int = 0
    path: str = ""
    error: str = ""  # one line: why an errored trial failed


def _history_frame(result: Any) -> Any:
    """The trial's per-epoch history, each epoch once: read from its folder (which also refills a row Tune lost
    when a worker died, ``drl_tune/study/history.py``), else Tune's in-memory frame de-duplicated."""
    import pandas as pd

    rows = read_result_json(result.path) if result.path and Path(result.path).is_dir() else []
    return pd.DataFrame(rows) if rows else dedupe_frame(result.metrics_dataframe)


def outcomes(results: Any) -> list[TrialOutcome]:
    """One :class:`TrialOutcome` per trial of a Tune ``ResultGrid`` (read from the per-epoch history)."""
    out = []
    for result in results:
        config = dict(result.config or {})
        frame = _history_frame(result)
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        item = TrialOutcome(trial_id=str(trial_id), method=str(config.get("method", "?")), status="completed",
                            config=config, path=str(result.path))
        if frame is not None and len(frame) and "epoch" in frame:
            last = frame.iloc[-1]
            item.epochs_run = int(last["epoch"]) + 1
            item.val_acc_best = float(last.get("val/acc_best", float("nan")))
            item.test_at_best_val = float(last.get("test/acc_at_best_val", float("nan")))
            best = frame[frame["epoch"] == last.get("best_epoch", -1)]
            if len(best) and "balance/gap" in best:
                item.gap_at_best_val = float(best.iloc[-1]["balance/gap"])
        if result.error is not None:
            item.status = "error"
            recorded = recorded_error(result.path)
            item.error = str(recorded["reason"]) if recorded else reason_of(result.error)
        elif item.epochs_run < int(config.get("epochs", 0)):
            item.status = "stopped"
        out.append(item)
    return out


def summary_table(items: list[TrialOutcome], plan: Plan) -> str:
    """Per method: the best trial's val acc, test acc at its best-val epoch, balance gap; trial counts."""
    headers = ["method", "best trial", *knob_columns(plan), "val acc", "test@best-val", "gap", "trials",
               "stopped early", "errored"]
    rows = []
    for method in sorted({i.method for i in items}):
        mine = [i for i in items if i.method == method]
        scored = [i for i in mine if not math.isnan(i.val_acc_best) and i.status != "error"]
        best = max(scored, key=lambda i: i.val_acc_best) if scored else None
        owner = {p.key: p.method for p in plan.search}
        knobs = [best.config.get(k) if best and owner.get(k) in (None, method) else None for k in knob_columns(plan)]
        rows.append([method, best.trial_id if best else "-", *knobs,
                     best.val_acc_best if best else None, best.test_at_best_val if best else None,
                     best.gap_at_best_val if best else None, len(mine),
                     sum(i.status == "stopped" for i in mine), sum(i.status == "error" for i in mine)])
    table = render_table(headers, rows)
    errored = [i for i in items if i.status == "error"]
    if errored:  # why each errored trial failed (they never count as a method's best)
        table += "\n\nerrored trials:\n" + render_table(
            ["trial", "method", "epochs", "error"], [[i.trial_id, i.method, i.epochs_run, i.error] for i in errored])
    return table
