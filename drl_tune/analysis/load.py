"""A finished (or running) study -> two tidy pandas frames, from either place the study lives.

* ``epochs``: one row per trial-epoch — ``study, stage, method, trial_id, epoch`` and every metric the engine
  reported that epoch under its own name (``val/acc``, ``balance/gap``, ``diag/alpha_audio``, ...).
* ``trials``: one row per trial — ``study, stage, method, trial_id, status`` (completed | stopped | error),
  ``epochs_run``, ``rank``/``source_trial``/``seed`` for confirmation trials, the summary metrics
  (``val/acc_best``, ``test/acc_at_best_val``, ``best_epoch`` from the last epoch; ``balance/gap`` and the probes
  ``val/acc_<m>`` at the best-validation epoch) and the trial's configuration, one column per config key.

:func:`load_tune` reads the Tune results folder (``STORAGE/NAME``), :func:`load_mlflow` the MLflow experiment
(any tracking URI: the study's sqlite file or a remote ``mlflow server``). Both give the same frames
(``tests/analysis/test_analysis.py`` checks that), so notebooks work from whichever the reader has.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from drl_tune.ground.errors import ConfigError
from drl_tune.study.folder import open_study, read_answer, reroot_mlflow, study_folder
from drl_tune.study.history import metric_items, read_result_json
from drl_tune.study.plan import PLAN_FILE
from drl_tune.training.config import canonical_key

ANSWER_FILE = "answer.json"
CONFIRM_DIR = "confirm"
CONFIRM_FILE = "drl_tune_confirm.json"
SELECT_METRIC = "val/acc_best"
TEST_METRIC = "test/acc_at_best_val"
KEY_COLUMNS = ["study", "stage", "method", "trial_id"]
STATUS_FROM_OUTCOME = {"completed": "completed", "stopped_early": "stopped", "error": "error"}


class StudyError(ValueError):
    """A study that cannot be analysed (missing, empty, all errored, MLflow unreachable): one clear message."""


@dataclass
class Study:
    """A loaded study: the two frames plus what the plots need to read them (plan, answer, modalities)."""

    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    plan: dict[str, Any] = field(default_factory=dict)
    answer: dict[str, Any] | None = None
    source: str = ""
    study_dir: Path | None = None

    @property
    def modalities(self) -> list[str]:
        """Modalities with a uni-modal probe (``val/acc_<m>`` columns), in a stable order."""
        return sorted(c.split("val/acc_", 1)[1] for c in self.epochs.columns
                      if c.startswith("val/acc_") and c != SELECT_METRIC)

    @property
    def methods(self) -> list[str]:
        return sorted(self.trials["method"].dropna().unique())

    def searched_keys(self, method: str) -> list[str]:
        """The plan's searched keys that exist for ``method`` (shared keys and the method's own block)."""
        return [p["key"] for p in self.plan.get("search", [])
                if p["key"] != "method" and p.get("method") in (None, method)]

    def weak_modality(self) -> str | None:
        """The modality whose probe is weaker on average over the finished trials (the one DRL should help)."""
        finished = self.trials[self.trials["status"] != "error"]
        means = {m: finished[f"val/acc_{m}"].mean() for m in self.modalities if f"val/acc_{m}" in finished}
        means = {m: v for m, v in means.items() if not math.isnan(v)}
        return min(means, key=means.__getitem__) if means else None

    def finished(self) -> pd.DataFrame:
        """Trials that produced a best-validation result (completed or stopped early; not errored before)."""
        t = self.trials
        return t[t["status"].ne("error") & t[SELECT_METRIC].notna()] if SELECT_METRIC in t else t.iloc[0:0]


# ---------------------------------------------------------------------------------------------------------
# shared: turning per-epoch histories into the two frames


def _summary(history: pd.DataFrame, epochs_planned: int | None) -> dict[str, Any]:
    """Per-trial summary from its epoch rows (sorted by epoch)."""
    out: dict[str, Any] = {"epochs_run": 0}
    if history.empty:
        return out
    last = history.iloc[-1]
    out["epochs_run"] = int(last["epoch"]) + 1
    for key in (SELECT_METRIC, TEST_METRIC, "best_epoch"):
        if key in history and pd.notna(last.get(key)):
            out[key] = float(last[key])
    best_epoch = last.get("best_epoch")
    if best_epoch is not None and pd.notna(best_epoch):
        at_best = history[history["epoch"] == best_epoch]
        if len(at_best):
            row = at_best.iloc[-1]
            for key in history.columns:
                if key == "balance/gap" or (key.startswith("val/acc_") and key != SELECT_METRIC):
                    out[key] = float(row[key]) if pd.notna(row[key]) else math.nan
    if "diag/reinits" in history:
        out["diag/reinits"] = float(history["diag/reinits"].max()) if history["diag/reinits"].notna().any() else 0.0
    return out


def _frames(name: str, runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs``: one dict per trial with keys stage, method, trial_id, status, config, history (list of rows),
    rank, source_trial, seed. Returns (trials, epochs) with stable column order and dtypes."""
    epoch_rows: list[dict[str, Any]] = []
    trial_rows: list[dict[str, Any]] = []
    for run in runs:
        keys = {"study": name, "stage": run["stage"], "method": run["method"], "trial_id": run["trial_id"]}
        by_epoch: dict[int, dict[str, float]] = {}
        for row in run["history"]:
            if "epoch" in row:
                by_epoch[int(row["epoch"])] = row  # a resumed trial may repeat an epoch: keep the last
        rows = [{**keys, **{k: v for k, v in by_epoch[e].items()}, "epoch": e} for e in sorted(by_epoch)]
        epoch_rows += rows
        history = pd.DataFrame(rows)
        config = run["config"]
        status = run["status"]
        summary = _summary(history, config.get("epochs"))
        if status == "completed" and summary["epochs_run"] < int(config.get("epochs") or 0):
            status = "stopped"
        trial_rows.append({**keys, "status": status, "rank": run.get("rank"), "source_trial": run.get("source_trial"),
                           "seed": config.get("seed"), **summary,
                           # a study written before a key was renamed (drl.lam) shows it under its current name
                           **{canonical_key(k, notice=False): _cell(v) for k, v in config.items() if k != "method"}})
    trials = pd.DataFrame(trial_rows)
    epochs = pd.DataFrame(epoch_rows)
    if trials.empty:
        return trials, epochs
    trials = trials.sort_values(["stage", "method", "trial_id"], kind="stable").reset_index(drop=True)
    front = [c for c in [*KEY_COLUMNS, "status", "epochs_run", "rank", "source_trial", "seed"] if c in trials]
    metrics = sorted(c for c in trials.columns if "/" in c or c == "best_epoch")
    rest = sorted(c for c in trials.columns if c not in front and c not in metrics)
    trials = trials[front + metrics + rest]
    if not epochs.empty:
        epochs = epochs.sort_values([*KEY_COLUMNS, "epoch"], kind="stable").reset_index(drop=True)
        epochs["epoch"] = epochs["epoch"].astype(int)
        cols = [*KEY_COLUMNS, "epoch", *sorted(c for c in epochs.columns if c not in KEY_COLUMNS and c != "epoch")]
        epochs = epochs[cols]
    return trials, epochs


def _cell(value: Any) -> Any:
    """Config values as frame cells: lists/dicts as their JSON text (hashable, equal from both sources)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _check(study: Study, where: str) -> Study:
    if study.trials.empty:
        raise StudyError(f"study {study.name!r} at {where} has no trials yet; run it (python -m drl_tune.run) or "
                         f"wait until its first trial reports")
    if (study.trials["status"] == "error").all():
        raise StudyError(f"every trial of study {study.name!r} at {where} errored ({len(study.trials)} trials); "
                         f"read a trial's error.txt in the study folder, fix the cause and run the study again")
    return study


# ---------------------------------------------------------------------------------------------------------
# Tune results folder


def _tune_trial(folder: Path, stage: str, extra: dict[str, Any]) -> dict[str, Any] | None:
    params = folder / "params.json"
    results = read_result_json(folder / "result.json")
    if not params.is_file() and not results:
        return None
    config = json.loads(params.read_text()) if params.is_file() else dict(results[-1].get("config", {}))
    trial_id = str(results[-1]["trial_id"]) if results and "trial_id" in results[-1] else folder.name.rsplit("_", 1)[-1]
    status = "error" if (folder / "error.txt").exists() or (folder / "error.pkl").exists() else "completed"
    info = extra.get(trial_id, {})
    return {"stage": stage, "method": str(config.get("method", "?")), "trial_id": trial_id, "status": status,
            "config": config, "history": [metric_items(r) for r in results],
            "rank": info.get("rank"), "source_trial": info.get("source_trial")}


def _config_key(config: dict[str, Any]) -> str:
    """Same canonical text as ``drl_tune.study.confirmation.config_key`` (not imported: that module pulls in Ray)."""
    return json.dumps(config, sort_keys=True, default=str)


def resolve_study_dir(name: str | None = None, storage: Path | str | None = None,
                      path: Path | str | None = None) -> Path:
    """``--path DIR`` or ``--storage STORAGE --name NAME`` -> the study folder (checked to exist): the project's one
    resolver (drl_tune/study/folder.py), so a moved, copied or renamed folder is read as itself."""
    try:
        return study_folder(name, storage, path)
    except ConfigError as err:
        raise StudyError(str(err)) from None


def load_tune(study_dir: Path | str) -> Study:
    """Read a study from its Tune results folder (search trials + ``confirm/`` trials, plan, answer)."""
    study_dir = resolve_study_dir(path=study_dir)
    plan = json.loads((study_dir / PLAN_FILE).read_text())
    try:  # the plan's paths re-rooted to where the folder is now (and its MLflow database, see open_study)
        opened = open_study(study_dir, write=False)
        plan |= {"storage": opened.storage, "mlflow_uri": opened.mlflow_uri, "folder": opened.folder}
    except ConfigError:
        pass  # not a plan drl_tune.run could resume (a hand-made folder): read its trials as they are
    name = plan.get("name", study_dir.name)
    runs = []
    for folder in sorted(p for p in study_dir.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        trial = _tune_trial(folder, "search", {})
        if trial:
            runs.append(trial)
    confirm = study_dir / CONFIRM_DIR
    if confirm.is_dir():
        # the confirmation's plan lists (method, rank, source_trial, seed, config) per trial; a trial is matched
        # to its entry by its configuration, as drl_tune.study.confirmation does
        entries: dict[str, Any] = {}
        if (confirm / CONFIRM_FILE).is_file():
            data = json.loads((confirm / CONFIRM_FILE).read_text())
            entries = {_config_key(e["config"]): e for e in data.get("entries", []) if isinstance(e, dict)}
        for folder in sorted(p for p in confirm.iterdir() if p.is_dir() and (p / "params.json").is_file()):
            trial = _tune_trial(folder, "confirm", {})
            if trial:
                entry = entries.get(_config_key(trial["config"]), {})
                trial["rank"] = int(entry["rank"]) if "rank" in entry else None
                trial["source_trial"] = entry.get("source_trial")
                runs.append(trial)
    trials, epochs = _frames(name, runs)
    try:
        answer = read_answer(study_dir)  # an unreadable answer.json is rebuilt from the trials, and said so
    except ConfigError as err:
        raise StudyError(str(err)) from None
    return _check(Study(name, trials, epochs, plan, answer, source=str(study_dir), study_dir=study_dir), str(study_dir))


# ---------------------------------------------------------------------------------------------------------
# MLflow


def _parse_param(text: str) -> Any:
    """Invert tracking.log_params' rendering (None -> "null", lists as JSON, bools as True/False)."""
    if text in ("True", "False"):
        return text == "True"
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text
    return value if not isinstance(value, str) else text


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking server must answer within ``timeout`` s (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.is_file():
                raise StudyError(f"MLflow database {db} does not exist; pass the study's URI "
                                 f"(python -m drl_tune.run printed it as 'MLflow:')")
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise StudyError(f"MLflow tracking server {uri} does not answer ({getattr(err, 'reason', err)}); start it "
                         f"(mlflow server --host 127.0.0.1 --port PORT) or check the URI") from err


def load_mlflow(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> Study:
    """Read a study from MLflow: the experiment named ``experiment`` (the study name) and its parent run (the
    only run without a parent, or ``parent_run_id``); every child run is one trial, its metric history the epochs."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_tracking_uri(tracking_uri)
    folder = _study_folder_of(tracking_uri)
    if folder is not None:  # a study folder's own database: its artifact locations follow the folder if it moved
        reroot_mlflow(folder)
    client = MlflowClient(tracking_uri)
    try:
        if parent_run_id:
            parent = client.get_run(parent_run_id)
            exp = client.get_experiment(parent.info.experiment_id)
        else:
            found = client.get_experiment_by_name(experiment or "")
            if found is None:
                raise StudyError(f"no MLflow experiment {experiment!r} at {tracking_uri}; the experiment is named "
                                 f"after the study (python -m drl_tune.run --name)")
            exp = found
            tagged = client.search_runs([exp.experiment_id], filter_string="tags.`drl_tune.study` != ''",
                                        max_results=1000)
            parents = [r for r in tagged if "mlflow.parentRunId" not in r.data.tags]
            if not parents:
                raise StudyError(f"MLflow experiment {exp.name!r} at {tracking_uri} has no study run")
            parent = max(parents, key=lambda r: r.info.start_time)
        children = client.search_runs([exp.experiment_id], max_results=50000,
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    except MlflowException as err:
        raise StudyError(f"MLflow at {tracking_uri}: {str(err).splitlines()[0]}") from err
    runs = []
    for child in children:
        tags, params = child.data.tags, child.data.params
        config = {k: _parse_param(v) for k, v in params.items() if k != "stage"}
        by_step: dict[int, dict[str, float]] = {}
        for key in child.data.metrics:
            for m in client.get_metric_history(child.info.run_id, key):
                by_step.setdefault(int(m.step), {})[key] = float(m.value)
        history = [{**row, "epoch": float(step)} for step, row in sorted(by_step.items()) if "epoch" in row]
        outcome = tags.get("drl_tune.outcome")
        status = STATUS_FROM_OUTCOME.get(outcome or "", "error" if child.info.status == "FAILED" else "completed")
        rank = tags.get("drl_tune.confirm_rank")
        runs.append({"stage": tags.get("drl_tune.stage", "search"), "method": tags.get("method") or
                     str(config.get("method", "?")), "trial_id": tags.get("drl_tune.trial_id", child.info.run_id),
                     "status": status, "config": config, "history": history,
                     "rank": int(rank) if rank else None, "source_trial": tags.get("drl_tune.source_trial")})
    name = parent.data.tags.get("drl_tune.study", exp.name)
    plan = _json_artifact(client, parent.info.run_id, PLAN_FILE) or {}
    answer = _json_artifact(client, parent.info.run_id, ANSWER_FILE)
    trials, epochs = _frames(name, runs)
    where = f"{tracking_uri} (experiment {exp.name!r})"
    study = Study(name, trials, epochs, plan, answer, source=where)
    storage = parent.data.tags.get("drl_tune.storage")
    if folder is not None:
        study.study_dir = folder
    elif storage and Path(storage).is_dir():
        study.study_dir = Path(storage)
    return _check(study, where)


def _study_folder_of(tracking_uri: str) -> Path | None:
    """The study folder a ``sqlite:///…/mlflow.db`` URI lies in (the folder holds the study's plan), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    return folder if (folder / PLAN_FILE).is_file() else None


def _json_artifact(client: Any, run_id: str, name: str) -> dict[str, Any] | None:
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file: no progress bar
    try:
        if name not in {a.path for a in client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, name, tmp)
            return json.loads(Path(local).read_text())
    except Exception:  # an artifact store the reader cannot reach: the frames still stand
        return None


def load_study(path: Path | str | None = None, *, name: str | None = None, storage: Path | str | None = None,
               tracking_uri: str | None = None, experiment: str | None = None) -> Study:
    """One entry point for notebooks: a study folder (``path`` or ``storage``/``name``), or MLflow
    (``tracking_uri`` + ``experiment``/``name``)."""
    if tracking_uri:
        return load_mlflow(tracking_uri, experiment or name)
    return load_tune(resolve_study_dir(name, storage, path))
