"""The study's status line (study/tables.py ``ProgressTable``) with stand-in Tune trials: the counts, the time-left
estimate computed here by hand, when a line is appended (not a terminal), and what Tune's pickle keeps."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from drl_tune.study.tables import ProgressSpec, ProgressTable


def trial(tid: str, status: str, epochs_run: int, epochs: int = 10) -> NS:
    last = {"epoch": epochs_run - 1} if epochs_run else {}
    return NS(trial_id=tid, status=status, config={"method": "joint", "epochs": epochs, "lr": 0.01}, last_result=last)


@pytest.fixture
def progress(monkeypatch) -> ProgressTable:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    plan = NS(num_samples=8, constants={"epochs": 10}, search=[NS(key="lr", method=None)])
    return ProgressTable(plan, ProgressSpec("line", 15.0))


def test_counts_and_time_left(progress):
    trials = [trial("a", "TERMINATED", 10), trial("b", "TERMINATED", 3), trial("c", "ERROR", 2),
              trial("d", "RUNNING", 4), trial("e", "RUNNING", 1), trial("f", "PENDING", 0)]
    counts = progress.counts(trials)
    # 8 planned: 3 ended (b stopped early by the scheduler, c errored), 2 running, 3 not started (f + 2 to come)
    assert counts == {"total": 8, "done": 3, "running": 2, "stopped": 1, "errored": 1, "pending": 3}
    progress.epoch_times = [2.0, 4.0]  # 3 s per epoch
    # left: running d 6 + e 9 epochs; 3 pending at the mean epochs the ended trials ran, (10 + 3 + 2) / 3 = 5
    assert progress.eta(trials, counts) == pytest.approx((6 + 9 + 3 * 5) * 3.0 / 2)
    line = progress.status_line(trials)
    assert re.fullmatch(r"search: 3/8 trials done, 2 running, 3 pending \| 0m0\ds elapsed, ~0m45s left \| "
                        r"1 stopped early, 1 errored", line), line


def test_appended_lines_only_when_something_happened(progress, capsys):
    trials = [trial("a", "RUNNING", 1)]
    progress.interval = 0.0
    progress.on_trial_start(0, trials, trials[0])
    progress.on_step_end(0, trials)
    progress.on_step_end(0, trials)  # nothing new since: no second line
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"\[\d\d:\d\d:\d\d\] trial a started \(joint, lr=0\.01\)$", out[0]), out
    assert [bool(re.match(r"\[\d\d:\d\d:\d\d\] search: 0/8 trials done, 1 running, 7 pending", x)) for x in out[1:]] \
        == [True], out
    progress.on_trial_result(0, trials, trials[0], {"epoch": 0, "time/epoch_s": 2.0, "val/acc_best": 0.5})
    assert "search: 0/8 trials done" in capsys.readouterr().out  # a report is news


def test_the_pickle_keeps_no_bar_and_takes_this_runs_settings(progress):
    progress.bar = object()  # a terminal's tqdm bar cannot be pickled; Tune pickles its callbacks
    copy = pickle.loads(pickle.dumps(progress))
    assert copy.bar is None and copy.total == 8 and copy.mode == "line"
    copy.use(ProgressSpec("table", 3.0))  # a --resume's --progress, not the first run's
    assert (copy.mode, copy.interval) == ("table", 3.0)


def test_a_restored_study_takes_the_resuming_runs_progress_settings(progress):
    """``reroot_restored`` hands the resuming command's ``--progress`` to the progress callback Tune unpickled."""
    from drl_tune.study.tune import reroot_restored

    restored = pickle.loads(pickle.dumps(progress))
    tuner = NS(_local_tuner=NS(_tune_config=NS(search_alg=None),
                               get_run_config=lambda: NS(callbacks=[restored])))
    plan = NS(mlflow_uri="sqlite:///unused.db")
    reroot_restored(tuner, plan, Path("."), ProgressSpec("table", 2.0))
    assert (restored.mode, restored.interval) == ("table", 2.0)
