"""Each epoch exactly once after a restore, without Ray: the MLflow callback resumed from a *stale* saved state
(what a SIGKILLed driver leaves: Tune's experiment snapshot lags behind what was already logged) must not log
the re-reported epochs again; readers of result.json keep one row per epoch, skip a torn last line, and fill a row
Tune lost from the history every checkpoint carries."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from drl_tune.study.history import (
    CHECKPOINT_HISTORY,
    RESTORED_KEY,
    dedupe_frame,
    load_checkpoint_history,
    metric_items,
    read_result_json,
    write_checkpoint_history,
)
from drl_tune.study.tracking import MLflowTrialCallback, StudyTracker


def result(epoch: int) -> dict:
    return {"epoch": float(epoch), "val/acc": 0.1 * epoch, "training_iteration": epoch + 1}


def test_mlflow_callback_restored_from_stale_state_logs_each_epoch_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "study")
    parent = tracker.start_parent("study", {}, {}, {})
    trial = SimpleNamespace(trial_id="t1", config={"method": "joint", "epochs": 4})
    first = MLflowTrialCallback(uri, tracker.experiment_id, parent, "study")
    first.on_trial_start(0, [], trial)
    first.on_trial_result(0, [], trial, result(0))
    stale = pickle.dumps(first)  # Tune snapshots the experiment here ...
    stale_state = first.get_state()
    first.on_trial_result(0, [], trial, result(1))
    first.on_trial_result(0, [], trial, result(2))  # ... and the driver is SIGKILLed after logging epoch 2

    resumed = pickle.loads(stale)  # --resume: the callback as of the snapshot (last_step says epoch 0)
    resumed.set_state(stale_state)
    resumed.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):  # restored from the epoch-0 checkpoint, the trial reports 1 and 2 again, then 3
        resumed.on_trial_result(0, [], trial, result(epoch))
    resumed.on_trial_complete(0, [], trial)

    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/acc")]
    assert sorted(steps) == [0, 1, 2, 3], steps


def test_result_json_reader_keeps_one_row_per_epoch(tmp_path):
    lines = [json.dumps({"epoch": e, "val/acc": v}) for e, v in ((0, 0.1), (1, 0.2), (2, 0.3), (1, 0.2), (2, 0.3))]
    (tmp_path / "result.json").write_text("\n".join(lines) + '\n{"epoch": 3, "val/a')  # torn by a kill
    rows = read_result_json(tmp_path)
    assert [(r["epoch"], r["val/acc"]) for r in rows] == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert read_result_json(tmp_path / "missing") == []


def test_metrics_frame_is_deduplicated():
    import pandas as pd

    frame = pd.DataFrame({"epoch": [0, 1, 2, 1, 2, 3], "val/acc": [0.1, 0.2, 0.3, 0.2, 0.3, 0.4]})
    out = dedupe_frame(frame)
    assert out["epoch"].tolist() == [0, 1, 2, 3] and out["val/acc"].tolist() == [0.1, 0.2, 0.3, 0.4]


def write_trial(folder, tune_epochs, checkpoints):
    """A trial folder as Tune leaves it: result.json rows for ``tune_epochs`` (with Tune's identity keys) and one
    ``checkpoint_NNNNNN/history.json`` per entry of ``checkpoints`` (epoch -> the epochs its history holds)."""
    folder.mkdir()
    rows = [{**result(e), "trial_id": "t1", "config": {"lr": 0.1}, "time_this_iter_s": 1.0} for e in tune_epochs]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for index, epochs in checkpoints.items():
        ckpt = folder / f"checkpoint_{index:06d}"
        ckpt.mkdir()
        write_checkpoint_history(ckpt, [{"epoch": float(e), "val/acc": 0.1 * e} for e in epochs])


def test_a_row_lost_from_result_json_is_filled_from_the_newest_checkpoint(tmp_path):
    # the worker-SIGKILL case: epoch 2 reported (checkpoint_000002 persisted) but the restart's copy of
    # result.json lacks its row; the restart continued from checkpoint_000002 with epoch 3
    write_trial(tmp_path / "t", [0, 1, 3], {1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3]})
    rows = read_result_json(tmp_path / "t")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    filled = rows[2]
    assert filled[RESTORED_KEY] == "checkpoint" and filled["val/acc"] == pytest.approx(0.2)
    assert filled["trial_id"] == "t1" and filled["config"] == {"lr": 0.1} and "time_this_iter_s" not in filled
    assert RESTORED_KEY not in rows[3] and rows[3]["time_this_iter_s"] == 1.0  # Tune's own rows stay Tune's
    assert metric_items(filled) == {"epoch": 2.0, "val/acc": pytest.approx(0.2)}  # the marker is no metric
    # the same through the file path the analysis passes
    assert [int(r["epoch"]) for r in read_result_json(tmp_path / "t" / "result.json")] == [0, 1, 2, 3]


def test_a_lost_last_row_is_filled_and_a_torn_newest_checkpoint_is_skipped(tmp_path):
    write_trial(tmp_path / "t", [0, 1], {1: [0, 1], 2: [0, 1, 2], 3: []})
    (tmp_path / "t" / "checkpoint_000003" / CHECKPOINT_HISTORY).write_text('[{"epoch": 0.0, "val/a')  # torn
    assert [int(r["epoch"]) for r in read_result_json(tmp_path / "t")] == [0, 1, 2]


def test_complete_or_checkpointless_histories_are_unchanged(tmp_path):
    write_trial(tmp_path / "full", [0, 1, 2], {2: [0, 1, 2]})
    assert all(RESTORED_KEY not in r for r in read_result_json(tmp_path / "full"))
    write_trial(tmp_path / "old", [0, 2], {2: []})  # a checkpoint from before checkpoints carried the history
    (tmp_path / "old" / "checkpoint_000002" / CHECKPOINT_HISTORY).unlink()
    assert [int(r["epoch"]) for r in read_result_json(tmp_path / "old")] == [0, 2]
    assert load_checkpoint_history(tmp_path / "old" / "checkpoint_000002") == []
    write_trial(tmp_path / "none", [], {1: [0, 1]})  # Tune recorded nothing yet: nothing to attach rows to
    assert read_result_json(tmp_path / "none") == []


def test_a_finished_study_closes_the_child_run_of_a_trial_tune_never_saved(tmp_path):
    """The driver SIGKILLed just as a trial started: its child run stays RUNNING and the resume re-runs the
    configuration as a new trial. Finishing the study marks that orphan KILLED; finished children are untouched."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(uri, "study")
    parent = tracker.start_parent("study", {}, {}, {})
    callback = MLflowTrialCallback(uri, tracker.experiment_id, parent, "study")
    done, orphan = (SimpleNamespace(trial_id=t, config={"method": "joint", "epochs": 1}) for t in ("t1", "t2"))
    callback.on_trial_start(0, [], done)
    callback.on_trial_result(0, [], done, result(0))
    callback.on_trial_complete(0, [], done)
    callback.on_trial_start(0, [], orphan)  # ... and nothing more: the driver died
    tracker.finish_parent(parent, "FINISHED", {}, None)
    runs = {r.data.tags["drl_tune.trial_id"]: r for r in tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")}
    assert runs["t1"].info.status == "FINISHED" and "drl_tune.orphan" not in runs["t1"].data.tags
    assert runs["t2"].info.status == "KILLED" and "drl_tune.orphan" in runs["t2"].data.tags
    assert tracker.client.get_run(parent).info.status == "FINISHED"
