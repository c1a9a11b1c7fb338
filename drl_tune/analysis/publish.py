"""The end of a study in MLflow: the search's per-method summary on the parent run, the report as artifacts,
and the saved review view — read from the study folder through :mod:`drl_tune.analysis.load`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from drl_tune.analysis.budget import budget_curves
from drl_tune.analysis.front_plot import searched_front
from drl_tune.analysis.load import StudyError, load_tune
from drl_tune.study.tracking import install_review_view, metric_key


def publish_study(tracking_uri: str, experiment_id: str, parent_run_id: str, study_dir: Path,
                  report: Path | None = None) -> str:
    """Put the study's results where a reviewer looks first: per-method search summary metrics on the parent run
    (``<method>/search_best_<metric>`` of the best trial by validation), the report and its figures as artifacts,
    and the review view; the budget curves as per-n metrics (``budget/<method>/expected_best_val_acc``, step n) and
    ``budget/curves.csv``. Returns the review view's share key."""
    client = MlflowClient(tracking_uri)
    try:
        study = load_tune(study_dir)
    except StudyError:
        return install_review_view(client, experiment_id, parent_run_id, [], [])
    existing = client.get_run(parent_run_id).data.metrics
    now = int(time.time() * 1000)
    metrics: dict[str, float] = {}
    finished = study.finished()
    search = finished[finished["stage"] == "search"]
    for method, mine in search.groupby("method"):
        best = mine.sort_values("val/acc_best", ascending=False).iloc[0]
        metrics[f"{method}/search_trials"] = float(len(study.trials[(study.trials["method"] == method)
                                                                    & (study.trials["stage"] == "search")]))
        for key in ("val/acc_best", "test/acc_at_best_val", "balance/gap",
                    *[f"val/acc_{m}" for m in study.modalities]):
            if key in best and not math.isnan(best[key]):
                metrics[f"{method}/search_best_{metric_key(key)}"] = float(best[key])
    # (the confirmation logs the answer's <method>/<metric>_mean and _ci95 and answer.json/csv itself)
    new = [Metric(k, v, now, 0) for k, v in metrics.items() if k not in existing]
    # the budget curves: one metric per method with n as its step, so MLflow's chart of it *is* the curve
    curves = budget_curves(study)
    for row in curves.itertuples():
        for name, value in ((f"budget/{row.method}/expected_best_val_acc", row.expected),
                            (f"budget/{row.method}/expected_best_val_acc_sd", row.std)):
            if name not in existing:
                new.append(Metric(name, float(value), now, int(row.n)))
    if not curves.empty and "budget/curves.csv" not in {a.path for a in client.list_artifacts(parent_run_id,
                                                                                            "budget")}:
        client.log_text(parent_run_id, curves.to_csv(index=False), "budget/curves.csv")
    for start in range(0, len(new), 500):
        client.log_batch(parent_run_id, metrics=new[start : start + 500])
    front = searched_front(study)  # a multi-objective study: the searched front as a table (the answer has the
    if len(front) and "front/searched_front.csv" not in {a.path for a in client.list_artifacts(parent_run_id,
                                                                                              "front")}:
        client.log_text(parent_run_id, front.to_csv(index=False), "front/searched_front.csv")  # confirmed one)
    if study.answer and study.answer.get("front") and "front/confirmed_front.csv" not in {
            a.path for a in client.list_artifacts(parent_run_id, "front")}:
        rows = [{"point": p["label"], "method": p["method"], **{f"{m}_{k}": s[k] for m, s in p["objectives"].items()
                                                                for k in ("mean", "ci_low", "ci_high")},
                 "non_dominated_with_ci": p["non_dominated"]} for p in study.answer["front"]]
        client.log_text(parent_run_id, pd.DataFrame(rows).to_csv(index=False), "front/confirmed_front.csv")
    if report is not None and report.is_file():
        client.log_artifact(parent_run_id, str(report), artifact_path="report")
        figures = report.parent / "figures"
        for png in sorted(figures.glob("*.png")) if figures.is_dir() else []:
            client.log_artifact(parent_run_id, str(png), artifact_path="report/figures")
    return install_review_view(client, experiment_id, parent_run_id, study.methods, study.modalities)
