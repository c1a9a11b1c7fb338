"""Each epoch exactly once after a restore, without Ray: the MLflow callback resumed from a *stale* saved state
(what a SIGKILLed driver leaves: Tune's experiment snapshot lags behind what was already logged) must not log
the re-reported epochs again; readers of result.json keep one row per epoch and skip a torn last line."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

from mlflow import MlflowClient

from drl_tune.history import dedupe_frame, read_result_json
from drl_tune.tracking import MLflowTrialCallback, StudyTracker


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
