"""Multi-objective studies end to end (slow): a real Ray study with two objectives (val/acc_best up, balance/gap
down, each at the best-validation epoch) and its front confirmed over fresh seeds —

* interrupted by Ctrl-C in the search and finished with ``--resume``, it ends with the same searched front, the same
  confirmed front and the same Optuna database as the uninterrupted study of the same seed;
* Optuna Dashboard, on the study's ``optuna.db`` in a real headless Chromium, lists the study and draws its Pareto
  front (screenshots in the test's tmp folder).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from drl_tune.analysis.front_plot import searched_front
from drl_tune.analysis.load import load_tune
from tests.study.test_faults_kill import env_for, epochs_in, start_study, study_cli, wait_for

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, drl.diagnosis_interval: 1, drl.max_reinits: 1}
defaults: {method: drl, lr: 0.05}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: loguniform, low: 0.005, high: 0.1}
  drl.lam: {type: uniform, low: 1, high: 5}
scheduler: {type: none}
study:
  num_samples: 6
  max_concurrent: 1
  seed: 4
  max_failures: 1
  objectives: [{metric: val/acc_best, mode: max}, {metric: balance/gap, mode: min}]
  confirm: {top_k: 2, seeds: 2}
  overrides: {epochs: 3}
resources: {cpus_per_trial: 1}
"""
EPOCHS = 3


def outcome(folder: Path) -> dict:
    """What must not depend on the interruption: the searched front (configurations and values), the confirmed
    front and the Optuna trials."""
    study = load_tune(folder)
    front = searched_front(study)
    searched = sorted((r["method"], round(float(r["lr"]), 12), round(float(r["val/acc_best"]), 9),
                       round(float(r["balance/gap"]), 9)) for _, r in front.iterrows())
    answer = json.loads((folder / "answer.json").read_text())
    confirmed = sorted((p["label"], round(p["objectives"]["val/acc_best"]["mean"], 9),
                        round(p["objectives"]["balance/gap"]["mean"], 9), p["non_dominated"])
                       for p in answer["front"])
    db = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    trials = sorted((t.params.get("method"), round(t.params.get("lr", 0), 12), tuple(round(v, 9) for v in t.values))
                    for t in db.trials)
    return {"searched": searched, "confirmed": confirmed, "optuna": trials,
            "optuna_front": len(db.best_trials)}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The same study twice: once straight through, once Ctrl-C'd after its second trial started, then resumed."""
    import tempfile

    root = tmp_path_factory.mktemp("pareto")
    ray_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    space = root / "pareto.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = root / "studies"
    try:
        straight = subprocess.run(study_cli("--space", str(space), "--storage", str(storage), "--name", "straight"),
                                  capture_output=True, text=True, env=env_for(ray_dir), cwd=root, timeout=900)
        assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
        folder = storage / "cut"
        log = root / "cut.log"
        proc = start_study(study_cli("--space", str(space), "--storage", str(storage), "--name", "cut"), log, ray_dir,
                           root)
        try:
            def second_running() -> bool:
                done = [d for d in folder.glob("*_*") if d.is_dir() and len(epochs_in(d / "result.json")) == EPOCHS]
                running = [d for d in folder.glob("*_*") if d.is_dir()
                           and 0 < len(epochs_in(d / "result.json")) < EPOCHS]
                return len(done) >= 1 and len(running) == 1
            wait_for(second_running, "one trial done and the next running", proc, log)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=180) == 130, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not (folder / "answer.json").exists()
        resumed = subprocess.run([sys.executable, "-m", "drl_tune.run", "--resume", "--storage", str(storage),
                                  "--name", "cut", "--progress-interval", "0"],
                                 capture_output=True, text=True, env=env_for(ray_dir), cwd=root, timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    return {"straight": storage / "straight", "cut": storage / "cut", "out": straight.stdout,
            "resumed_out": resumed.stdout}


def test_a_resumed_multi_objective_study_ends_with_the_same_front(studies):
    straight, cut = outcome(studies["straight"]), outcome(studies["cut"])
    assert straight == cut
    assert len(straight["optuna"]) == 6 and straight["optuna_front"] == len(straight["searched"]) >= 1
    # two front points confirmed (fewer if the front is shorter), two fresh seeds each
    answer = json.loads((studies["straight"] / "answer.json").read_text())
    assert len(answer["front"]) == min(2, len(straight["searched"]))
    assert all(len(c["seeds"]) == 2 for c in answer["configs"])
    out = studies["out"]
    assert "objectives: max val/acc_best, min balance/gap" in out and "confirmed Pareto front" in out
    assert "optuna:  optuna-dashboard 'sqlite:///" in out
    assert (studies["straight"] / "report" / "figures" / "pareto.png").stat().st_size > 10_000
    from mlflow import MlflowClient

    from drl_tune.study.plan import PLAN_FILE, Plan

    plan = Plan.from_json((studies["straight"] / PLAN_FILE).read_text())
    front_files = {a.path for a in MlflowClient(plan.mlflow_uri).list_artifacts(plan.parent_run_id, "front")}
    assert front_files == {"front/searched_front.csv", "front/confirmed_front.csv"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_optuna_dashboard_in_browser(studies, tmp_path):
    """The printed ``optuna-dashboard`` command, in a real headless Chromium: the study list names the study, its
    page draws the Pareto front of the two objectives. Screenshots in tmp_path."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed (the dev extra has it)"
    line = next(ln for ln in studies["out"].splitlines() if ln.startswith("optuna:  "))
    url = line.split("'")[1]
    assert url == f"sqlite:///{studies['straight'].resolve() / 'optuna.db'}"
    port = _free_port()
    server = subprocess.Popen([dashboard, url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                listing = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=3).read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("optuna-dashboard did not come up")
                time.sleep(1)
        (summary,) = listing["study_summaries"]
        assert summary["study_name"] == "straight" and summary["directions"] == ["maximize", "minimize"]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/dashboard")
                page.get_by_text("straight").first.wait_for()
                page.get_by_text("MAXIMIZE, MINIMIZE").first.wait_for()
                page.screenshot(path=str(tmp_path / "dashboard_studies.png"))
                page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}")
                page.get_by_text("Pareto Front").first.wait_for()
                page.get_by_text("balance/gap").first.wait_for()  # the objective names, not "Objective 1"
                page.locator(".js-plotly-plot").first.wait_for()  # the plot itself
                time.sleep(2)
                page.screenshot(path=str(tmp_path / "dashboard_study.png"), full_page=True)
            finally:
                browser.close()
        assert (tmp_path / "dashboard_study.png").stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)
