"""What a study prints: the table renderer, the live progress table (a Tune callback) and the search summary.

One reason to change: how results look on the console. The rows come from Tune (callbacks, a ``ResultGrid``);
nothing here decides what a study runs.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
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


PROGRESS_MODES = ("line", "table")


@dataclass(frozen=True)
class ProgressSpec:
    """How a study shows its progress: ``line`` (default) — one status line, redrawn in place on a terminal and
    appended every ``interval`` seconds otherwise (Slurm, ``ray job submit``, CI), plus one line per trial event;
    ``table`` — the same, plus the whole trial table every ``interval`` seconds (``--progress table``)."""

    mode: str = "line"
    interval: float = 15.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressTable(Callback):
    """Tune callback: what a person watching a study sees while it runs (:class:`ProgressSpec`).

    The status line counts the stage's trials from Tune's own trial states (so a resumed study counts what it
    finished before) and estimates the time left from the epoch times seen so far: the epochs still to run
    (running trials' remaining epochs; pending trials' full epochs, or the mean epochs a finished trial ran when
    early stopping cut some) × the mean seconds per epoch ÷ the trials running at once. On a terminal the line is a
    ``tqdm`` bar redrawn in place, and the event lines print above it (``tqdm.write``). Picklable (Tune saves its
    callbacks with the experiment): the bar is not kept in the pickle."""

    def __init__(self, plan: Plan, progress: ProgressSpec | float = ProgressSpec(), stage: str = "search",
                 total: int | None = None) -> None:
        spec = progress if isinstance(progress, ProgressSpec) else ProgressSpec(interval=float(progress))
        self.rows: dict[str, dict[str, Any]] = {}
        self.interval = spec.interval
        self.mode = spec.mode
        self.stage = stage
        self.total = plan.num_samples if total is None else total
        self.epochs = int(plan.constants.get("epochs") or 0)
        self.last_print = 0.0
        self.last_line = 0.0
        self.dirty = False
        self.knobs = knob_columns(plan)
        self._reset_clock()

    def _reset_clock(self) -> None:
        self.started = time.monotonic()
        self.epoch_times: list[float] = []
        self.concurrency = 0
        self.bar: Any = None
        self.terminal = sys.stdout.isatty()
        self.changed = True  # a trial started, reported or ended since the last appended status line

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["bar"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a study saved by an earlier version holds only rows/interval/last_print/dirty/knobs
        self.__dict__.update({"mode": "table", "stage": "search", "total": 0, "epochs": 0, "last_line": 0.0})
        self.__dict__.update(state)
        self._reset_clock()

    def use(self, progress: ProgressSpec) -> None:
        """Take this run's ``--progress`` settings (a restored callback carries the first run's)."""
        self.mode, self.interval = progress.mode, progress.interval
        self._reset_clock()

    # ----- what is printed

    def _say(self, text: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def _event(self, text: str) -> None:
        self._say(f"[{time.strftime('%H:%M:%S')}] {text}")

    def counts(self, trials: list) -> dict[str, int]:
        status = [t.status for t in trials]
        done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        stopped = sum(1 for t in done if t.status == "TERMINATED" and self._epochs_run(t) < self._epochs_of(t))
        running = sum(1 for s in status if s in ("RUNNING", "PAUSED"))
        total = max(self.total, len(trials))
        return {"total": total, "done": len(done), "running": running, "stopped": stopped,
                "errored": status.count("ERROR"), "pending": max(0, total - len(done) - running)}

    def _epochs_of(self, trial: Any) -> int:
        return int(trial.config.get("epochs") or self.epochs or 0)

    @staticmethod
    def _epochs_run(trial: Any) -> int:
        last = trial.last_result or {}
        return int(last["epoch"]) + 1 if "epoch" in last else 0

    def eta(self, trials: list, counts: dict[str, int]) -> float | None:
        """Seconds left, from the epoch times seen so far; None before the first epoch."""
        if not self.epoch_times:
            return None
        per_epoch = sum(self.epoch_times) / len(self.epoch_times)
        finished = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        full = self.epochs or max((self._epochs_of(t) for t in trials), default=0)
        # early stopping cuts trials short: a pending trial is expected to run as many epochs as finished ones did
        expected = (sum(self._epochs_run(t) for t in finished) / len(finished)) if finished else float(full)
        left: float = sum(max(0, self._epochs_of(t) - self._epochs_run(t)) for t in trials
                   if t.status in ("RUNNING", "PAUSED"))
        left += counts["pending"] * expected
        parallel = max(1, counts["running"], self.concurrency)
        return left * per_epoch / parallel

    def status_line(self, trials: list, c: dict[str, int] | None = None) -> str:
        c = c or self.counts(trials)
        eta = self.eta(trials, c) if c["done"] < c["total"] else 0.0
        left = "–" if eta is None else f"~{_duration(eta)}"
        # what matters most first: a narrow terminal cuts the line's end
        return (f"{self.stage}: {c['done']}/{c['total']} trials done, {c['running']} running, {c['pending']} pending"
                f" | {_duration(time.monotonic() - self.started)} elapsed, {left} left | {c['stopped']} stopped "
                f"early, {c['errored']} errored")

    def _show(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if self.terminal:
            if self.bar is None:
                from tqdm import tqdm

                try:  # a terminal that reports no size (a bare pseudo-terminal) would hide the line: tqdm fits
                    sized = min(os.get_terminal_size(sys.stdout.fileno())) > 0  # it to 0 columns and 0 rows
                except (OSError, ValueError):
                    sized = False
                fallback = shutil.get_terminal_size()  # $COLUMNS / $LINES, else 80 x 24
                self.bar = tqdm(total=max(1, self.total), file=sys.stdout, leave=False, bar_format="{bar:12} {desc}",
                                dynamic_ncols=sized, ncols=None if sized else fallback.columns,
                                nrows=None if sized else fallback.lines)
            if force or now - self.last_line >= 0.5:
                c = self.counts(trials)
                self.bar.n = c["done"]
                self.bar.total = max(1, c["total"])
                self.bar.set_description_str(self.status_line(trials, c), refresh=True)
                self.last_line = now
        elif force or (self.changed and now - self.last_line >= self.interval):  # nothing new: no line
            print(f"[{time.strftime('%H:%M:%S')}] {self.status_line(trials)}", flush=True)
            self.last_line = now
            self.changed = False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ----- Tune's hooks

    def _row(self, trial: Any) -> dict[str, Any]:
        return self.rows.setdefault(trial.trial_id, {"status": "RUNNING", "config": dict(trial.config)})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._row(trial)["status"] = "RUNNING"
        self.changed = True
        self.concurrency = max(self.concurrency, sum(1 for t in trials if t.status == "RUNNING"))
        self._event(f"trial {trial.trial_id} started ({trial.config.get('method')}"
                    + "".join(f", {k}={format_cell(trial.config[k])}" for k in self.knobs if k in trial.config)
                    + ")")
        self.dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._row(trial)["result"] = result
        self.changed = True
        if isinstance(result.get("time/epoch_s"), int | float):
            self.epoch_times.append(float(result["time/epoch_s"]))
        self.concurrency = max(self.concurrency, sum(1 for t in trials if t.status == "RUNNING"))
        self.dirty = True
        self._show(trials)

    def _end(self, trial: Any, status: str) -> None:
        row = self._row(trial)
        res = row.get("result", {})
        epochs_run = int(res.get("epoch", -1)) + 1
        if status == "TERMINATED" and epochs_run < int(trial.config.get("epochs", 0)):
            status = "STOPPED"
        row["status"] = status
        self.changed = True
        word = {"TERMINATED": "finished", "STOPPED": "stopped early", "ERROR": "errored"}[status]
        self._event(f"trial {trial.trial_id} {word} ({trial.config.get('method')}) after {epochs_run} epochs, "
                    f"best val acc {format_cell(res.get('val/acc_best'))}")
        self.dirty = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "TERMINATED")
        self._show(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "ERROR")
        self._show(trials, force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        res = self._row(trial).get("result", {})
        self._event(f"trial {trial.trial_id} errored ({trial.config.get('method')}) after "
                    f"{int(res.get('epoch', -1)) + 1} epochs: retried from its last checkpoint")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials)
        if self.mode == "table" and self.dirty and time.monotonic() - self.last_print >= self.interval:
            self.print_table()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        from drl_tune.study.stop import stopping

        self.close()  # the in-place line goes; its last state stays on screen as a plain line
        if stopping():  # Tune marks the trials a signal cut short as terminated: they are not "stopped early"
            return
        print(f"[{time.strftime('%H:%M:%S')}] {self.status_line(trials)}", flush=True)

    def print_table(self) -> None:
        headers = ["trial", "status", "method", *self.knobs, "epoch", "val acc", "best", "gap"]
        rows = []
        for trial_id, row in self.rows.items():
            res, cfg = row.get("result", {}), row["config"]
            epoch = f"{int(res['epoch']) + 1}/{cfg.get('epochs', '?')}" if "epoch" in res else "-"
            rows.append([trial_id, row["status"], cfg.get("method"), *[cfg.get(k) for k in self.knobs],
                         epoch, res.get("val/acc"), res.get("val/acc_best"), res.get("balance/gap")])
        self._say(f"[{time.strftime('%H:%M:%S')}] {self.stage} progress\n{render_table(headers, rows)}")
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
