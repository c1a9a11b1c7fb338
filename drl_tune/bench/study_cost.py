"""Where a study's wall time goes: the whole ``python -m drl_tune.run`` command against what its trials compute.

A study's trials compute Σ ``time/epoch_s`` (the engine's own clock around each epoch: training, evaluation, the
probe, DRL's diagnosis). With ``c`` trials at a time, ``Σ / c`` is the wall time a perfect harness would take;
``overhead_ratio`` = the command's wall time / that. The difference is broken down from two clocks, not guesses:

* the arrival time of each line the study prints (this process reads its output as it comes: the plan, one line
  per trial event, the end of each stage) gives the stages — Ray's start, the study's set-up (plan, MLflow, Tuner,
  and the first trial's worker: Tune calls a trial started once its actor is up), the search, what lies between
  search and confirmation (Optuna's database, planning the confirmation, a new Tuner, its first worker), the
  confirmation, and the end (answer, MLflow, report, Ray's shutdown);
* each trial's ``result.json`` (Tune's ``time_this_iter_s`` per reported epoch) and its lifetime (its "started"
  line to its last line) split a stage's trial-slot time into **compute** (Σ ``time/epoch_s``), **in-trial
  overhead** (``time_this_iter_s`` − ``time/epoch_s``: building the engine and mapping the data before the first
  epoch, the checkpoint and ``tune.report`` after each), **trial start-up** (lifetime − Σ ``time_this_iter_s``:
  the worker process, its imports, the actor's set-up and teardown) and **idle slots** (the stage's wall × c − Σ
  lifetimes: Tune's loop, the searcher, scheduling, and a trial's start before Tune calls it started). Each is
  given in wall seconds (÷ c), so a stage's parts sum to its wall time. A confirmation trial that started while
  the search's last trials ran (``study.confirmation.EarlyConfirmation``) counts in each stage for the part of its
  life inside it, its compute and in-trial overhead in proportion; the study's compute is every trial's, once.

The event lines come from the study's progress callback (``study/tables.py``); the stage lines from the driver.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

EVENT = re.compile(r"^\[\d\d:\d\d:\d\d\] trial (\w+) (started|finished|stopped early|errored)\b")
RAY_INIT = re.compile(r" in (\d+(?:\.\d+)?) s$")  # the end of the driver's "ray: ..." line (study/cluster.py)
GOAL_RATIO = 1.2
STAGE_LINES = {"ray": "ray: ", "search_end": "search of study ", "confirm_plan": "confirmation: the top",
               "answer": "answer of study ", "results": "results: "}


def timed_run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> tuple[list[tuple[float, str]], float, int]:
    """Run ``cmd``; every line of its output (stdout and stderr together) with the seconds since the start at which
    it arrived; the wall time; the exit code. The command runs with ``PYTHONUNBUFFERED=1``: into a pipe, Python
    buffers what it prints, and lines printed without a flush (the final ``results:`` block) would arrive when the
    process exits, making the report's time look like shutdown time."""
    start = time.perf_counter()
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            bufsize=1)
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    code = proc.wait()
    return lines, time.perf_counter() - start, code


def _first(lines: list[tuple[float, str]], prefix: str, after: float = -1.0) -> float | None:
    return next((t for t, text in lines if t > after and text.startswith(prefix)), None)


def _trial_rows(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Trial id -> its reported epochs (``METHOD_ID/result.json`` under ``folder``)."""
    out = {}
    for path in sorted(folder.glob("*_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[path.parent.name.rsplit("_", 1)[-1]] = rows
    return out


def _lives(lines: list[tuple[float, str]], folders: list[Path]) -> dict[str, tuple[float, float, list[dict]]]:
    """Trial id -> (its first event, its last event, its reported epochs) for the trials of ``folders`` that printed
    an event. A trial with one event (its "started" line lost) is taken to have lived its iterations before it."""
    events: dict[str, list[float]] = {}
    for t, text in lines:
        found = EVENT.match(text)
        if found:
            events.setdefault(found.group(1), []).append(t)
    out = {}
    for folder in folders:
        for trial_id, rows in _trial_rows(folder).items():
            seen = events.get(trial_id)
            if seen:
                iter_s = sum(float(r.get("time_this_iter_s", 0.0)) for r in rows)
                out[trial_id] = (min(seen) if len(seen) > 1 else max(seen) - iter_s, max(seen), rows)
    return out


def stage_cost(lines: list[tuple[float, str]], folders: list[Path], start: float, end: float, slots: int,
               own: Path | None = None) -> dict[str, Any]:
    """One stage (the search, or the confirmation) between ``start`` and ``end``: its wall time split into compute,
    in-trial overhead, trial start-up and idle slots (each ÷ ``slots``), from the trials' folders and event lines.
    Every trial of ``folders`` counts for the part of its life inside the window (its compute and in-trial overhead
    in proportion): a confirmation trial started while the search's last trials ran counts in both stages.
    ``trial_epochs``: the epochs of the trials of ``own`` (default: the first folder) that ran in the window."""
    compute = in_trial = lifetime = 0.0
    counted = epochs = 0
    own_ids = set(_trial_rows(own or folders[0]))
    for trial_id, (first, last, rows) in _lives(lines, folders).items():
        inside = min(end, last) - max(start, first)
        if inside < 0 or (inside == 0 and not start - 1e-9 <= first <= end + 1e-9):
            continue  # not run in this window (the other stage's, or a resumed study's earlier trials)
        life = last - first
        share = inside / life if life > 0 else 1.0
        counted += 1
        epochs += len(rows) if trial_id in own_ids else 0
        epoch_s = sum(float(r.get("time/epoch_s", 0.0)) for r in rows)
        iter_s = sum(float(r.get("time_this_iter_s", 0.0)) for r in rows)
        compute += epoch_s * share
        in_trial += max(0.0, iter_s - epoch_s) * share
        lifetime += inside if life > 0 else iter_s
    wall = end - start
    startup = max(0.0, lifetime - compute - in_trial)
    idle = wall * slots - lifetime
    return {"wall_s": wall, "trials": counted, "slots": slots, "compute_s": compute / slots,
            "in_trial_overhead_s": in_trial / slots, "trial_startup_s": startup / slots, "idle_slots_s": idle / slots,
            "trial_epochs": epochs}


def study_cost(lines: list[tuple[float, str]], wall: float, study: Path, slots: int) -> dict[str, Any]:
    """The whole command's breakdown and ``overhead_ratio`` (see the module docstring)."""
    ray = _first(lines, STAGE_LINES["ray"]) or 0.0
    first_search = next((t for t, text in lines if (m := EVENT.match(text)) and m.group(2) == "started"), None)
    search_end = _first(lines, STAGE_LINES["search_end"])
    if first_search is None or search_end is None:
        raise RuntimeError("the study's output has no trial event or no end of search: it did not run its search")
    confirm_plan = _first(lines, STAGE_LINES["confirm_plan"], search_end)
    answer = _first(lines, STAGE_LINES["answer"], search_end)
    stages: dict[str, Any] = {"ray_start_s": ray, "setup_s": first_search - ray}
    own = next((float(m.group(1)) for _, text in lines if text.startswith(STAGE_LINES["ray"])
                and (m := RAY_INIT.search(text))), None)
    if own is not None:
        stages["ray_init_s"] = own  # ray.init alone; ray_start_s also holds the driver's imports before it
    folders = [study, study / "confirm"]
    stages["search"] = stage_cost(lines, folders, first_search, search_end, slots)
    end_of_trials = search_end
    if confirm_plan is not None and answer is not None:
        confirm_starts = [first for first, _, _ in _lives(lines, [study / "confirm"]).values()]
        early = search_end - min(confirm_starts) if confirm_starts else 0.0
        if early > 0:  # confirmation trials started while the search's last trials ran (study.confirmation)
            stages["confirmation_started_early_s"] = early
            first_confirm = search_end
        else:
            first_confirm = next((t for t, text in lines if t > confirm_plan and (m := EVENT.match(text))
                                  and m.group(2) == "started"), answer)
        stages["between_s"] = first_confirm - search_end
        stages["confirmation"] = stage_cost(lines, folders, first_confirm, answer, slots, own=study / "confirm")
        end_of_trials = answer
    results = _first(lines, STAGE_LINES["results"], end_of_trials) or wall
    stages["answer_report_s"] = results - end_of_trials  # the answer, MLflow's parent run, the HTML report
    stages["shutdown_s"] = wall - results  # the review lines, Ray's shutdown, the interpreter's exit
    every = _lives(lines, folders if "confirmation" in stages else [study]).values()
    compute = sum(float(r.get("time/epoch_s", 0.0)) for _, _, rows in every for r in rows) / slots
    epochs = sum(len(rows) for _, _, rows in every)
    # the goal: wall <= 1.2 x compute + Ray's own start (ray.init; or, read generously, the whole start)
    goal_s = GOAL_RATIO * compute + stages.get("ray_init_s", ray)
    return {"wall_s": wall, "compute_wall_s": compute, "trial_epochs": epochs, "slots": slots,
            "overhead_ratio": wall / compute if compute else float("nan"),
            "overhead_ratio_after_ray_start": (wall - ray) / compute if compute else float("nan"),
            "goal_s": goal_s, "meets_goal": wall <= goal_s,
            "stages": stages}


def describe(cost: dict[str, Any]) -> list[str]:
    """The breakdown as lines for the console."""
    s = cost["stages"]
    out = [f"whole command {cost['wall_s']:.0f} s vs its trials' compute {cost['compute_wall_s']:.0f} s "
           f"(Σ time/epoch_s over {cost['trial_epochs']} trial-epochs ÷ {cost['slots']} at a time): "
           f"overhead_ratio {cost['overhead_ratio']:.2f}x ({cost['overhead_ratio_after_ray_start']:.2f}x after "
           f"Ray's start)",
           f"  goal: wall <= {GOAL_RATIO} x compute + Ray's own start = {cost['goal_s']:.0f} s: "
           + ("met" if cost["meets_goal"] else f"missed by {cost['wall_s'] - cost['goal_s']:.0f} s"),
           f"  Ray start {s['ray_start_s']:.1f} s"
           + (f" (ray.init {s['ray_init_s']:.1f} s, the rest the driver's imports)" if "ray_init_s" in s else "")
           + f", set-up {s['setup_s']:.1f} s"]
    for name in ("search", "confirmation"):
        if name in s:
            st = s[name]
            out.append(f"  {name} {st['wall_s']:.1f} s: compute {st['compute_s']:.1f}, in-trial overhead "
                       f"{st['in_trial_overhead_s']:.1f}, trial start-up {st['trial_startup_s']:.1f}, idle slots "
                       f"{st['idle_slots_s']:.1f} ({st['trials']} trials)")
        if name == "search" and "confirmation_started_early_s" in s:
            out.append(f"  search -> confirmation: the confirmation started {s['confirmation_started_early_s']:.1f} s "
                       f"before the search's end (in the slots its last trials left)")
        elif name == "search" and "between_s" in s:
            out.append(f"  search -> confirmation {s['between_s']:.1f} s")
    out.append(f"  answer + report {s['answer_report_s']:.1f} s, shutdown {s['shutdown_s']:.1f} s")
    return out
