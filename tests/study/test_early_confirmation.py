"""A method's confirmation starts while the search's last trials of other methods run (study.confirmation's
``EarlyConfirmation``): what it starts must be exactly what the confirmation planned at the search's end would
contain, its plan grows while it runs, and a stop signal reaches the Tune run in the driver's other thread.
The end-to-end run (a real study, stopped during the overlap and resumed) is in
``tests/e2e/test_early_confirmation_e2e.py``."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray.tune.search import Searcher

from drl_tune.ground.guard import Stopped
from drl_tune.study.confirmation import (
    PlannedConfigs,
    config_key,
    early_entries,
    plan_confirmation,
    record_of,
)
from drl_tune.study.stop import fit_in_thread, stop_signals


@dataclass(eq=False)
class FakeTrial:
    """What :func:`early_entries` reads of a Tune ``Trial``."""

    trial_id: str
    config: dict
    status: str
    path: str = ""
    rows: list = field(default_factory=list)


def make_trial(folder: Path, trial_id: str, method: str, seed: int, lr: float, status: str,
               vals: list[float]) -> FakeTrial:
    path = folder / f"{method}_{trial_id}"
    path.mkdir(parents=True)
    best = 0.0
    lines = []
    for epoch, val in enumerate(vals):
        best = max(best, val)
        lines.append(json.dumps({"epoch": epoch, "val/acc": val, "val/acc_best": best}))
    (path / "result.json").write_text("\n".join(lines) + "\n")
    config = {"method": method, "seed": seed, "lr": lr, "epochs": 3}
    return FakeTrial(trial_id, config, status, str(path))


def search(tmp_path: Path) -> list[FakeTrial]:
    """Five search trials: joint's three have ended (one completed, one stopped early by ASHA, one errored), drl's
    first completed and its second still runs."""
    return [make_trial(tmp_path, "j1", "joint", 0, 0.01, "TERMINATED", [0.5, 0.6, 0.7]),
            make_trial(tmp_path, "j2", "joint", 3, 0.05, "TERMINATED", [0.8]),  # stopped early: not a candidate
            make_trial(tmp_path, "j3", "joint", 4, 0.02, "ERROR", [0.9]),
            make_trial(tmp_path, "d1", "drl", 1, 0.01, "TERMINATED", [0.4, 0.5, 0.6]),
            make_trial(tmp_path, "d2", "drl", 6, 0.03, "RUNNING", [0.3])]


def test_only_methods_whose_search_has_ended_start_and_their_entries_are_the_final_plans(tmp_path):
    trials = search(tmp_path)
    ended = trials[0]
    got = early_entries(trials, ended, "TERMINATED", num_samples=5, top_k=1, n_seeds=3)
    assert got is not None
    entries, live, bound = got
    assert live == ["drl"] and bound == 1 * 3 * 2
    # joint's best completed trial (j1; j2 scored higher but was stopped early, j3 errored), with the 3 smallest
    # seeds no search trial used (0, 1, 3, 4, 6 are taken): 2, 5, 7
    assert [(e.method, e.source_trial, e.seed) for e in entries] == [("joint", "j1", 2), ("joint", "j1", 5),
                                                                      ("joint", "j1", 7)]
    assert entries[0].config == {"method": "joint", "seed": 2, "lr": 0.01, "epochs": 3}
    # drl's last trial ends (better than d1): the confirmation planned from every record contains joint's entries
    # unchanged, and drl's from its new best
    last = trials[-1]
    (Path(last.path) / "result.json").write_text("".join(
        json.dumps({"epoch": e, "val/acc": v, "val/acc_best": v}) + "\n" for e, v in enumerate([0.3, 0.6, 0.9])))
    records = [record_of(t.trial_id, t.config, "TERMINATED" if t is last else t.status, Path(t.path))
               for t in trials]
    final = plan_confirmation(records, top_k=1, n_seeds=3, strict=False)
    assert {config_key(e.config) for e in entries} <= {config_key(e.config) for e in final}
    assert sorted({(e.method, e.source_trial) for e in final}) == [("drl", "d2"), ("joint", "j1")]


def test_nothing_starts_before_the_last_trial_is_made_or_when_the_search_ends_now(tmp_path):
    trials = search(tmp_path)
    assert early_entries(trials, trials[0], "TERMINATED", num_samples=6, top_k=1, n_seeds=2) is None
    trials[-1].status = "TERMINATED"  # no trial live: the search ends now, its confirmation starts as always
    assert early_entries(trials, trials[0], "TERMINATED", num_samples=5, top_k=1, n_seeds=2) is None
    trials[-1].status = "RUNNING"
    # the trial that just ended counts as ended whatever Tune still says of it (it marks it after the callbacks)
    trials[3].status = "RUNNING"
    got = early_entries(trials, trials[3], "TERMINATED", num_samples=5, top_k=1, n_seeds=2)
    assert got is not None and got[1] == ["drl"]  # d2 still runs: drl is not ready, joint is


def test_a_ready_method_whose_every_trial_errored_is_left_to_the_end(tmp_path):
    trials = [make_trial(tmp_path, "j1", "joint", 0, 0.01, "ERROR", [0.5]),
              make_trial(tmp_path, "d1", "drl", 1, 0.01, "RUNNING", [0.4])]
    assert early_entries(trials, trials[0], "ERROR", num_samples=2, top_k=1, n_seeds=2) is None


def test_an_open_plan_waits_grows_and_ends_once_closed():
    searcher = PlannedConfigs([{"a": 1}], open=True)
    assert searcher.suggest("t1") == {"a": 1}
    started = time.monotonic()
    assert searcher.suggest("t2") is None  # nothing yet: Tune asks again at its next step
    assert time.monotonic() - started >= PlannedConfigs.WAIT_S * 0.9  # and is held back meanwhile
    searcher.add([{"a": 2}], close=False)
    assert searcher.suggest("t2") == {"a": 2} and searcher.suggest("t3") is None
    searcher.add([{"a": 3}])
    assert searcher.suggest("t3") == {"a": 3} and searcher.suggest("t4") == Searcher.FINISHED
    closed = PlannedConfigs([{"a": 1}])
    assert closed.suggest("t1") == {"a": 1} and closed.suggest("t2") == Searcher.FINISHED


def test_a_restored_open_plan_takes_the_whole_plan_and_keeps_its_place(tmp_path):
    running = PlannedConfigs([{"a": 1}, {"a": 2}], open=True)
    running.suggest("t1")
    saved = tmp_path / "searcher.json"
    running.save(str(saved))  # Tune saved the experiment before the rest of the plan was added
    restored = pickle.loads(pickle.dumps(PlannedConfigs([{"a": 1}, {"a": 2}], open=True)))  # as Tuner.restore has it
    restored.final = [{"a": 1}, {"a": 2}, {"a": 3}]
    restored.restore(str(saved))
    assert [restored.suggest(t) for t in ("t2", "t3", "t4")] == [{"a": 2}, {"a": 3}, Searcher.FINISHED]
    old = PlannedConfigs([])
    old.set_state({"configs": [{"a": 1}], "next_index": 0})  # saved before plans could be open
    assert old.suggest("t1") == {"a": 1} and old.suggest("t2") == Searcher.FINISHED


def test_tune_still_takes_a_runs_stop_event_from_setup_signal_catching():
    """``fit_in_thread`` relies on this Ray 2.60 detail: if Ray changes it, this fails, not a stopped study."""
    import ray.tune.tune as tune_module

    source = inspect.getsource(tune_module.run)
    assert "experiment_interrupted_event = _setup_signal_catching()" in source
    assert "not experiment_interrupted_event.is_set()" in source


def test_fit_in_thread_hands_its_event_to_tune_in_that_thread_only():
    import ray.tune.tune as tune_module

    event, got = threading.Event(), {}

    def registered() -> None:
        with fit_in_thread(event):
            got["in"] = tune_module._setup_signal_catching()
        got["after"] = tune_module._setup_signal_catching()

    def other() -> None:
        got["other"] = tune_module._setup_signal_catching()

    for target in (registered, other):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert got["in"] is event
    assert got["after"] is not event and got["other"] is not event and isinstance(got["other"], threading.Event)


def test_a_stop_signal_sets_a_linked_run_event_instead_of_raising():
    event = threading.Event()
    with stop_signals() as watch:
        watch.link(event)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # no Stopped: the driver waits for the other thread's run, which stops at its next step
        assert event.is_set() and watch.is_set() and watch.exit_code == 143
        watch.unlink(event)
        later = threading.Event()
        watch.link(later)  # linked after the signal: set at once
        assert later.is_set()
    with stop_signals(), pytest.raises(Stopped):  # nothing linked: the signal raises where the driver is
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

