"""End to end (slow): a tiny real study with its confirmation (local Ray, MLflow sqlite; 4 search trials, the best
configuration of each method re-run on 2 fresh seeds) -> frames from both sources, the report that
``drl_tune.run`` writes, the MLflow review (parent summary, artifacts, saved view), the three notebooks executed
headless against it, and the MLflow UI in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from mlflow import MlflowClient

from drl_tune.analysis import load_mlflow, load_tune, plots

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(confirmed_study):
    return confirmed_study


def test_both_sources_give_the_same_frames(study):
    a = load_tune(study["dir"])
    b = load_mlflow(study["plan"].mlflow_uri, "tiny")
    pd.testing.assert_frame_equal(a.trials, b.trials)
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    search, confirm = a.trials[a.trials["stage"] == "search"], a.trials[a.trials["stage"] == "confirm"]
    assert len(search) == 4 and set(a.methods) == {"joint", "drl"}, a.trials[["method", "trial_id"]]
    # the confirmation: each method's best search trial (by validation) re-run on the same 2 fresh seeds
    assert len(confirm) == 4 and (confirm["rank"] == 1).all()
    for method, mine in confirm.groupby("method"):
        (source,) = set(mine["source_trial"])  # one configuration; the best by validation (ties: either)
        scores = search[search["method"] == method].set_index("trial_id")["val/acc_best"]
        assert scores[source] == scores.max() and sorted(mine["seed"]) == sorted(a.answer["seeds"])
    # one row per trial-epoch, every trial ran its 3 epochs (no scheduler)
    assert a.epochs.groupby(["stage", "trial_id"]).size().tolist() == [3] * 8
    assert (a.trials["epochs_run"] == 3).all() and (a.trials["status"] == "completed").all()


def test_plots_hold_the_studys_series(study):
    s = load_tune(study["dir"])
    fig = plots.tradeoff(s)
    series = {c.get_gid(): c for c in fig.axes[0].collections if (c.get_gid() or "").startswith("trials-")}
    per_method = s.trials[s.trials["stage"] == "search"].groupby("method").size().to_dict()
    assert {k.split("-", 1)[1]: len(v.get_offsets()) for k, v in series.items()} == per_method
    assert len({to_hex(v.get_facecolors()[0], keep_alpha=False) for v in series.values()}) == len(per_method)
    for cfg in s.answer["configs"]:  # the confirmed configurations at their answer.json means
        line = next(ln for ln in fig.axes[0].lines if ln.get_gid() == f"confirmed-{cfg['method']}-1")
        assert line.get_xydata()[0] == pytest.approx([cfg["stats"]["balance/gap"]["mean"],
                                                      cfg["stats"]["test/acc_at_best_val"]["mean"]])
    # the dynamics plot marks exactly the epochs on which the trial's result.json counted a re-init; with a
    # confirmation it shows a confirmation trial beside joint's on the same fresh seed
    drl, joint = plots.pick_dynamics_trials(s)
    assert drl["stage"] == joint["stage"] == "confirm" and drl["seed"] == joint["seed"]
    rows = [json.loads(line) for line in
            (study["dir"] / "confirm" / f"drl_{drl['trial_id']}" / "result.json").read_text().splitlines()]
    logged, count = [], 0
    for r in rows:
        if r.get("diag/reinits", 0) > count:
            logged.append(int(r["epoch"]))
            count = r["diag/reinits"]
    assert logged  # diagnosis_interval 1, max_reinits 2: DRL re-initialised
    fig = plots.dynamics(s)
    ax = next(a for a in fig.axes if a.get_title().startswith(f"drl trial {drl['trial_id']}"))
    assert sorted(int(ln.get_xdata()[0]) for ln in ax.lines if (ln.get_gid() or "").startswith("reinit-")) == logged


def test_run_wrote_the_report_and_the_mlflow_review(study):
    folder, out, plan = study["dir"], study["out"], study["plan"]
    report = folder / "report" / "report.html"
    assert f"report:  {report}" in out
    html = report.read_text()
    assert html.count("data:image/png;base64,") == 6  # with the confirmation's answer: the comparison too
    assert "id='fig-budget'" in html and "TPE" in html
    assert "Paired difference against joint #1" in html
    assert all(f"<td>{t}</td>" in html for t in load_tune(folder).trials["trial_id"])
    url = f"http://127.0.0.1:5000/#/experiments/{plan.experiment_id}/runs?workflowType=machine_learning" \
          f"&viewStateShareKey=drl-tune-review"
    assert f"then open {url}" in out
    client = MlflowClient(plan.mlflow_uri)
    exp = client.get_experiment(plan.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.drl-tune-review"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "method"}]
    assert {c["metricKey"] for c in view["compareRunCharts"]} >= {"val/acc", "balance/gap", "test/acc_at_best_val"}
    parent = client.get_run(plan.parent_run_id)
    s = load_tune(folder)
    for method in s.methods:
        mine = s.trials[(s.trials["method"] == method) & (s.trials["stage"] == "search")]
        best = mine.sort_values("val/acc_best").iloc[-1]  # the search summary: search trials only
        assert parent.data.metrics[f"{method}/search_best_val_acc_best"] == pytest.approx(best["val/acc_best"])
    artifacts = {a.path for a in client.list_artifacts(plan.parent_run_id, "report")}
    assert "report/report.html" in artifacts
    children = client.search_runs([plan.experiment_id], f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    for run in children:
        method, tid = run.data.params["method"], run.data.tags["drl_tune.trial_id"]
        stage = run.data.tags["drl_tune.stage"]
        assert run.info.run_name == f"{method}-{stage}-{tid}" and run.data.tags["method"] == method
        assert run.data.params["stage"] == stage
    assert sorted(r.data.tags["drl_tune.stage"] for r in children) == ["confirm"] * 4 + ["search"] * 4
    for method in s.methods:  # the confirmation's summary, logged by the confirmation stage
        assert f"{method}/test_acc_at_best_val_mean" in parent.data.metrics
    # the budget curves, one metric per method with n as its step. Equal budgets: 2 trials each, the official
    # setting apart; DRL's second trial is one draw (its expected best is that trial's own val/acc_best); joint has
    # no searched key here (lr is fixed), so both its trials run its official setting and it has no curve
    from drl_tune.analysis.budget import official_mask

    assert "note: joint has no searched key, so its 2 trials all run its official setting" in out
    search = s.trials[s.trials["stage"] == "search"]
    assert search.groupby("method").size().to_dict() == {"drl": 2, "joint": 2}
    official = official_mask(s, search)
    assert search[official].groupby("method").size().to_dict() == {"drl": 1, "joint": 2}
    history = client.get_metric_history(plan.parent_run_id, "budget/drl/expected_best_val_acc")
    drawn = search[(search["method"] == "drl") & ~official]
    assert [m.step for m in history] == [1] and len(drawn) == 1
    assert history[0].value == pytest.approx(drawn["val/acc_best"].iloc[0])
    assert not client.get_metric_history(plan.parent_run_id, "budget/joint/expected_best_val_acc")
    assert "budget/curves.csv" in {a.path for a in client.list_artifacts(plan.parent_run_id, "budget")}
    assert "report/figures/budget.png" in {a.path for a in client.list_artifacts(plan.parent_run_id,
                                                                                 "report/figures")}


def test_report_cli_from_mlflow(study, tmp_path, capsys):
    from drl_tune.report import main as report_main

    assert report_main(["--name", "tiny", "--mlflow-uri", study["plan"].mlflow_uri, "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("name", ["tradeoffs", "drl_dynamics", "method_comparison"])
def test_notebooks_execute_headless(study, tmp_path, name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = study["dir"]
    nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    first.source = f"STUDY_PATH = {str(folder)!r}\nTRACKING_URI = None\nSTUDY_NAME = None\nOUT_DIR = {str(tmp_path)!r}"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    expected = {"tradeoffs": ["tradeoff", "importance", "knobs"], "drl_dynamics": ["dynamics"],
                "method_comparison": ["comparison", "budget"]}[name]
    assert len(images) == len(expected)
    for fig in expected:
        assert (tmp_path / f"{fig}.png").stat().st_size > 10_000 and (tmp_path / f"{fig}.svg").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_ui_in_browser(study, tmp_path):
    """The printed review URL in a real headless Chromium: the runs listed by method with key metrics, the chart
    view with the per-method curves, the parent run's summary metrics and artifacts. Screenshots in tmp_path."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    plan = study["plan"]
    port = _free_port()
    line = next(ln for ln in study["out"].splitlines() if "then open " in ln)
    url = line.split("then open ", 1)[1].replace(":5000/", f":{port}/")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", plan.mlflow_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not come up")
                time.sleep(2)
        runs = load_tune(study["dir"]).trials
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1700, "height": 1300})
                page.set_default_timeout(240_000)
                page.goto(url)
                for _, r in runs.iterrows():  # every trial listed by its method-stage-trial name
                    page.get_by_text(f"{r['method']}-{r['stage']}-{r['trial_id']}").first.wait_for()
                for header in ("Group: drl", "Group: joint", "val/acc_best", "balance/gap"):
                    page.get_by_text(header).first.wait_for()
                page.screenshot(path=str(tmp_path / "runs_table.png"))
                page.goto(url + "&compareRunsMode=CHART")
                page.get_by_text("drl-tune: accuracy and balance per method").first.wait_for()
                page.locator("text=drl (val/acc)").first.wait_for()  # per-method (group) curves in the legend
                time.sleep(3)
                page.screenshot(path=str(tmp_path / "chart_view.png"))
                base = url.split("/runs")[0]
                page.goto(f"{base}/runs/{plan.parent_run_id}?workflowType=machine_learning")
                page.get_by_text("drl/search_best_val_acc_best").first.wait_for()
                page.screenshot(path=str(tmp_path / "parent_run.png"))
                page.goto(f"{base}/runs/{plan.parent_run_id}/artifacts?workflowType=machine_learning")
                page.get_by_text("report", exact=True).first.wait_for()
                page.screenshot(path=str(tmp_path / "parent_artifacts.png"))
            finally:
                browser.close()
        print(f"screenshots: {tmp_path}")
    finally:  # the server and the uvicorn/job-runner processes it started: its own process group
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
