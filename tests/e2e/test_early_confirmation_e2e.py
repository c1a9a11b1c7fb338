"""The confirmation of a method whose search trials have all ended starts while the search's last trials of another
method run (study.confirmation's ``EarlyConfirmation``), end to end on a real local Ray, MLflow sqlite store and
Optuna: the study's answer is the one a confirmation planned after the search gives, every planned trial runs once,
and a Ctrl-C during the overlap stops both Tune runs and leaves a study that ``--resume`` finishes, with each
confirmation trial once in MLflow.

Tiny settings: joint and ``slow_joint`` (a method file of this test: joint training whose search trial sleeps 4 s
after each epoch, so that it is still running when joint's has ended and joint's first confirmation trial starts),
one search trial each, 3 epochs, 2 at a time, the best of each confirmed on 2 fresh seeds."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import textwrap

import pytest
import ray
from mlflow import MlflowClient

from drl_tune.methods import REGISTRY
from drl_tune.methods import user as user_methods
from drl_tune.run import main
from drl_tune.study.confirmation import CONFIRM_DIR, CONFIRM_FILE, config_key, load_entries, read_trials
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.study.tables import ProgressTable
from tests.conftest import init_local_ray
from tests.e2e.test_study_e2e import tiny_sets

pytestmark = pytest.mark.slow

SLOW = '''
import time

from drl_tune.methods.base import Method


class SlowJoint(Method):
    """Joint training; a search trial (seed 0: the confirmation's seeds are fresh) is 4 s slower per epoch."""

    name = "slow_joint"

    def on_epoch_end(self, model, ctx):
        if ctx.seed == 0:
            time.sleep(4.0)
        return {}
'''
SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1}
defaults: {method: joint, lr: 0.05}
search:
  method: {type: choice, values: [joint, slow_joint]}
  lr: {type: choice, values: [0.05, 0.02]}
scheduler: {type: none}
study:
  num_samples: 2
  max_concurrent: 2
  seed: 3
  max_failures: 0
  overrides: {epochs: 3}
  confirm: {seeds: 2, top_k: 1}
resources: {cpus_per_trial: 1}
"""
SEEDS = 2


def run_main(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """``whole``: a study run through; ``stopped``: one stopped by Ctrl-C as its first confirmation trial starts
    while the search still runs, then resumed."""
    root = tmp_path_factory.mktemp("early_confirmation")
    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(SPACE))
    methods = root / "slow.py"
    methods.write_text(SLOW)
    storage = root / "studies"
    args = ["--space", str(space), "--storage", str(storage), "--methods-from", str(methods), "--progress-interval",
            "600", "--no-report", *tiny_sets()]
    started_ray = not ray.is_initialized()
    if started_ray:
        init_local_ray(attempts=3)
    start = ProgressTable.on_trial_start
    seen = {}

    def ctrl_c_at_early_confirmation(self, iteration, trials, trial, **info):
        start(self, iteration, trials, trial, **info)
        if self.stage == "confirmation" and not seen:
            seen["at"] = trial.trial_id
            os.kill(os.getpid(), signal.SIGINT)  # the driver's Ctrl-C handling, from the confirmation's thread

    def ctrl_c_at_later_confirmation(self, iteration, trials, trial, **info):
        start(self, iteration, trials, trial, **info)
        if self.stage == "confirmation" and trial.config.get("method") == "slow_joint" and not seen:
            seen["at"] = trial.trial_id  # after the search: the rest of the plan was handed to the running Tuner
            os.kill(os.getpid(), signal.SIGINT)

    # the studies register slow_joint in this process: the registry is restored after them for the other tests
    registry, registered = dict(REGISTRY), dict(user_methods._REGISTERED)
    try:
        whole = run_main([*args, "--name", "whole"])
        ProgressTable.on_trial_start = ctrl_c_at_early_confirmation
        try:
            stopped = run_main([*args, "--name", "stopped"])
        finally:
            ProgressTable.on_trial_start = start
        stopped_dir = storage / "stopped"
        after_stop = {"confirm": sorted(p.name for p in (stopped_dir / CONFIRM_DIR).glob("*_*") if p.is_dir()),
                      "started": seen.get("at"),
                      "answer": (stopped_dir / "answer.json").exists(),
                      "planned": (stopped_dir / CONFIRM_DIR / CONFIRM_FILE).exists(),
                      "search": {r.trial_id: r.status for r in read_trials(stopped_dir)}}
        resumed = run_main(["--resume", "--name", "stopped", "--storage", str(storage), "--progress-interval", "600",
                            "--no-report"])
        seen.clear()
        ProgressTable.on_trial_start = ctrl_c_at_later_confirmation
        try:
            late = run_main([*args, "--name", "late"])
        finally:
            ProgressTable.on_trial_start = start
        late_planned = (storage / "late" / CONFIRM_DIR / CONFIRM_FILE).exists()
        late_resumed = run_main(["--resume", "--name", "late", "--storage", str(storage), "--progress-interval", "600",
                                 "--no-report"])
    finally:
        REGISTRY.clear()
        REGISTRY.update(registry)
        user_methods._REGISTERED.clear()
        user_methods._REGISTERED.update(registered)
        if started_ray:
            ray.shutdown()
    return {"storage": storage, "whole": whole, "stopped": stopped, "resumed": resumed,
            "after_stop": after_stop, "late": late, "late_planned": late_planned, "late_resumed": late_resumed}


def confirm_runs(folder) -> list:
    plan = Plan.from_json((folder / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    return client.search_runs([plan.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                              f"'{plan.parent_run_id}' and tags.`drl_tune.stage` = 'confirm'")


def check_answer(folder) -> None:
    """Every planned confirmation trial ran once and completed; the answer holds both methods; MLflow has each
    confirmation trial once, finished, with its planned tags."""
    entries, top_k, seeds = load_entries(folder / CONFIRM_DIR / CONFIRM_FILE)
    assert len(entries) == 2 * top_k * SEEDS and len(seeds) == SEEDS
    trials = read_trials(folder / CONFIRM_DIR)
    assert sorted(config_key(t.config) for t in trials) == sorted(config_key(e.config) for e in entries)
    assert {t.status for t in trials} == {"completed"}
    answer = json.loads((folder / "answer.json").read_text())
    assert sorted(c["method"] for c in answer["configs"]) == ["joint", "slow_joint"]
    assert all(len(c["seeds"]) == SEEDS for c in answer["configs"])
    runs = confirm_runs(folder)
    assert sorted(r.data.tags["drl_tune.trial_id"] for r in runs) == sorted(t.trial_id for t in trials)
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_trial = {t.trial_id: t for t in trials}
    planned = {config_key(e.config): e for e in entries}
    for run in runs:
        entry = planned[config_key(by_trial[run.data.tags["drl_tune.trial_id"]].config)]
        assert run.data.tags["drl_tune.confirm_seed"] == str(entry.seed)
        assert run.data.tags["drl_tune.source_trial"] == entry.source_trial


def test_the_studies_leave_the_method_registry_as_it_was(studies):
    assert "slow_joint" not in REGISTRY


def test_joints_confirmation_starts_before_the_search_ends_and_the_answer_is_the_planned_one(studies):
    code, out = studies["whole"]
    assert code == 0, out
    early = out.index("confirmation of joint started while the search's last trials of slow_joint run")
    assert early < out.index("search of study 'whole'") < out.index("\nconfirmation: the top 1 configuration(s)")
    folder = studies["storage"] / "whole"
    entries, _, _ = load_entries(folder / CONFIRM_DIR / CONFIRM_FILE)
    # the plan made from every search trial at the end: joint's entries (handed out first) are the ones started early
    assert [e.method for e in entries] == ["joint"] * SEEDS + ["slow_joint"] * SEEDS
    search = read_trials(folder)
    best_joint = max((r for r in search if r.method == "joint"), key=lambda r: r.final["val/acc_best"])
    assert {e.source_trial for e in entries if e.method == "joint"} == {best_joint.trial_id}
    assert not {e.seed for e in entries} & {int(r.config["seed"]) for r in search}
    check_answer(folder)


def test_ctrl_c_during_the_overlap_stops_both_runs_and_resume_finishes_the_study(studies):
    code, out = studies["stopped"]
    assert code == 130, out
    assert "--resume --name stopped" in out and "Traceback" not in out
    folder = studies["storage"] / "stopped"
    stop = studies["after_stop"]
    assert not stop["answer"] and not stop["planned"]  # stopped before the search's end: no plan saved yet
    assert stop["confirm"], "the confirmation started early left no trial folder"
    assert "running" in stop["search"].values()  # the search's last trial was stopped with it
    code, out = studies["resumed"]
    assert code == 0, out
    check_answer(folder)  # the early trials were run again: each confirmation trial once, on disk and in MLflow
    plan = Plan.from_json((folder / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    from mlflow.entities import ViewType

    deleted = client.search_runs([plan.experiment_id], filter_string="tags.`drl_tune.stage` = 'confirm'",
                                 run_view_type=ViewType.DELETED_ONLY)
    stopped_ids = {name.rsplit("_", 1)[-1] for name in stop["confirm"]}
    deleted_ids = {r.data.tags["drl_tune.trial_id"] for r in deleted}
    # the trial whose start sent the Ctrl-C had its MLflow run (a trial Tune had only created had none)
    assert stop["started"] in deleted_ids and deleted_ids <= stopped_ids


def test_ctrl_c_after_the_search_resumes_the_confirmation_with_its_whole_plan(studies):
    """Stopped once the rest of the plan had joined the early-started run: ``--resume`` restores that run, whose saved
    searcher may predate the rest of the plan (``PlannedConfigs.final``), and finishes it."""
    code, out = studies["late"]
    assert code == 130, out
    assert studies["late_planned"]
    code, out = studies["late_resumed"]
    assert code == 0, out
    assert "resuming the confirmation" in out
    check_answer(studies["storage"] / "late")
