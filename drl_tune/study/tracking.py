"""MLflow: one parent run per study, one child run per trial (tag ``mlflow.parentRunId``).

Everything is written from the Tune driver (a single writer, so a sqlite store is safe): the trials never
talk to MLflow. A child run's metrics use ``step = epoch`` (0-based, as the engine reports it); its params
are the trial's full flattened configuration. On ``--resume`` a trial finds its existing child run again
(by the ``drl_tune.trial_id`` tag) and skips epochs it had already logged, so each trial keeps exactly
one child run with one value per epoch.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

from drl_tune.study.faults import error_reason
from drl_tune.study.history import metric_items
from drl_tune.study.safety import redact

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "drl_tune.trial_id"
STUDY_TAG = "drl_tune.study"
ORPHAN_TAG = "drl_tune.orphan"
ERROR_TAG = "drl_tune.error"  # one line: why the trial failed
STAGE_TAG = "drl_tune.stage"  # search | confirm
MAX_PARAM_LENGTH = 6000


def ui_command(tracking_uri: str) -> str:
    """The exact command that opens the study in the MLflow UI (local only)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri '{tracking_uri}' --host 127.0.0.1 --port 5000"


def git_commit(folder: Path) -> str | None:
    """The checkout's commit, if this is a git checkout (tagged on the study run for reproducibility)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class StudyTracker:
    """Creates (or re-opens) the study's experiment and parent run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location,
                                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    def start_parent(self, run_name: str, tags: dict[str, str], params: dict[str, Any],
                     artifacts: dict[str, Path]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        log_params(self.client, run_id, params)
        for folder, path in artifacts.items():
            self.client.log_artifact(run_id, str(path), artifact_path=folder or None)
        return run_id

    def reopen_parent(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def finish_parent(self, run_id: str, status: str, metrics: dict[str, float], summary: str | None) -> None:
        """End the study's run; a finished study first closes its orphaned children (:meth:`close_orphans`)."""
        if status == "FINISHED":
            self.close_orphans(run_id)
        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        if summary:
            self.client.log_text(run_id, summary, "summary.txt")
        self.client.set_terminated(run_id, status)


    def close_orphans(self, parent_run_id: str) -> list[str]:
        """Mark KILLED (tag ``drl_tune.orphan``) every child still RUNNING when the study has finished: a trial
        Tune had just started when its driver was killed, before Tune saved that trial in its experiment state, so
        the resumed study re-ran its configuration as a new trial and nothing will ever finish this run."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                                       f"and attributes.status = 'RUNNING'")
        for run in runs:
            self.client.set_tag(run.info.run_id, ORPHAN_TAG, "started as its driver was killed; re-run as a new trial")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return [run.info.run_id for run in runs]


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, redact("null" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                   [:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


class MLflowTrialCallback(Callback):
    """Driver-side Tune callback: a child run per trial with its config and per-epoch metric history."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study: str, stage: str = "search",
                 tags_by_config: dict[str, dict[str, str]] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.stage = stage
        self.tags_by_config = dict(tags_by_config or {})  # canonical config text -> extra tags
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self.last_step: dict[str, int] = {}  # trial id -> last epoch logged
        self._client: MlflowClient | None = None
        self._synced: set[str] = set()  # trials whose last logged epoch was read from MLflow by this process

    # Tune pickles callbacks with the experiment; the client is rebuilt where needed
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_synced")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"stage": "search", "tags_by_config": {}, **state})  # studies saved before stages
        self._client = None
        self._synced = set()

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self.runs), "last_step": dict(self.last_step)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs.update(state.get("runs", {}))
        self.last_step.update(state.get("last_step", {}))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _find_run(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        )
        return runs[0].info.run_id if runs else None

    def _run_for(self, trial: Any) -> str:
        trial_id = trial.trial_id
        if trial_id in self._synced:
            return self.runs[trial_id]
        run_id = self.runs.get(trial_id) or self._find_run(trial_id)
        if run_id is None:
            config = dict(trial.config)
            tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, STUDY_TAG: self.study,
                    STAGE_TAG: self.stage, "method": str(config.get("method", ""))}
            tags.update(self.tags_by_config.get(json.dumps(config, sort_keys=True, default=str), {}))
            # named method-stage-trial so the runs table reads without opening a run
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"{config.get('method', 'trial')}-{self.stage}-{trial_id}")
            run_id = run.info.run_id
            log_params(self.client, run_id, {**config, "stage": self.stage})
        else:  # a resumed study: continue the same child run after the last epoch MLflow really holds (the
            # callback state saved with the experiment lags behind when the driver was SIGKILLed)
            history = self.client.get_metric_history(run_id, "epoch")
            self.last_step[trial_id] = max((int(m.step) for m in history), default=-1)
            self.client.update_run(run_id, status="RUNNING")
        self.runs[trial_id] = run_id
        self._synced.add(trial_id)
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_for(trial)
        metrics = metric_items(result)
        step = int(metrics.get("epoch", result.get("training_iteration", 0)))
        if step <= self.last_step.get(trial.trial_id, -1):
            return  # already logged before an interruption
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        self.last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        epochs = int(trial.config.get("epochs", 0))
        stopped = self.last_step.get(trial.trial_id, -1) + 1 < epochs
        self.client.set_tag(run_id, "drl_tune.outcome", "stopped_early" if stopped else "completed")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        self.client.log_batch(run_id, tags=[RunTag("drl_tune.outcome", "error"),
                                            RunTag(ERROR_TAG, redact(error_reason(trial))[:MAX_PARAM_LENGTH])])
        self.client.set_terminated(run_id, "FAILED")


# ---------------------------------------------------------------------------------------------------------
# review at a glance: the runs table and chart view a reviewer lands on (MLflow 3.17 UI)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # a model-training experiment, not a GenAI one
# MLflow's UI restores a saved runs-page view (columns, grouping, charts) from the experiment tag
# `mlflow.sharedViewState.<key>` when the URL carries `?viewStateShareKey=<key>` — the same mechanism as its
# "Share" button. The study writes one such view, so the printed URL opens on it without any clicking.
VIEW_STATE_TAG = "mlflow.sharedViewState."
VIEW_KEY = "drl-tune-review"
REVIEW_METRICS = ["val/acc", "val/acc_best", "test/acc_at_best_val", "balance/gap", "train/loss"]


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def review_view_state(parent_run_id: str, methods: list[str], modalities: list[str]) -> dict[str, Any]:
    """The saved runs-page view: runs grouped by the ``method`` param (each group expanded, so every trial is
    listed), method/stage/key metrics as columns, and a chart section with per-method (group-averaged) curves
    of accuracy, balance and the uni-modal probes over epochs."""
    metrics = [*REVIEW_METRICS, *[f"val/acc_{m}" for m in modalities]]
    columns = ["params.`method`", "tags.`drl_tune.stage`", "tags.`drl_tune.outcome`",
               *[f"metrics.`{m}`" for m in ("val/acc_best", "test/acc_at_best_val", "balance/gap",
                                              *[f"val/acc_{m}" for m in modalities], "epoch")]]
    charts = [{"uuid": f"drl-tune-{i}", "type": "LINE", "metricSectionId": "drl-tune", "isGenerated": False,
               "deleted": False, "runsCountToCompare": 100, "metricKey": m, "selectedMetricKeys": [m],
               "displayName": m, "lineSmoothness": 0, "xAxisKey": "step", "xAxisScaleType": "linear",
               "scaleType": "linear", "selectedXAxisMetricKey": "", "yAxisKey": "METRIC", "yAxisExpressions": [],
               "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True,
               "range": {}} for i, m in enumerate(metrics)]
    return {
        # search facets (sort: newest first, as the UI's default)
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": columns, "columnOrder": [], "columnWidths": {},
        "runsExpanded": {parent_run_id: True}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {},
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "method"}]},
        "groupsExpanded": {f"param.method.{m}": True for m in methods},
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": "drl-tune", "name": "drl-tune: accuracy and balance per method (mean over "
                                "trials)", "display": True, "isReordered": True}],
        # "reordered": MLflow then keeps this section on top and appends its auto-generated ones below
        "isAccordionReordered": True, "viewMaximized": False, "runListHidden": False, "autoRefreshEnabled": False,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def install_review_view(client: MlflowClient, experiment_id: str, parent_run_id: str, methods: list[str],
                        modalities: list[str]) -> str:
    """Tag the experiment as model training and save the review view; returns the view's share key."""
    mark_training_experiment(client, experiment_id)
    state = review_view_state(parent_run_id, methods, modalities)
    client.set_experiment_tag(experiment_id, VIEW_STATE_TAG + VIEW_KEY, json.dumps(state))
    return VIEW_KEY


def review_url(tracking_uri: str, experiment_id: str, port: int = 5000, view: str | None = VIEW_KEY,
               charts: bool = False) -> str:
    """The URL of the study's runs page (not the experiment's GenAI overview), on the saved review view."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    # workflowType: the sidebar's "Model training" mode (a fresh browser starts in GenAI mode)
    query = ["workflowType=machine_learning", *([f"viewStateShareKey={view}"] if view else [])]
    if charts:
        query.append("compareRunsMode=CHART")
    return f"{base}/#/experiments/{experiment_id}/runs" + ("?" + "&".join(query) if query else "")


def metric_key(name: str) -> str:
    return name.replace("/", "_")
