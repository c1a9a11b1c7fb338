"""A study folder can be copied, moved or renamed (drl_tune/study/folder.py), end to end on a real local Ray, MLflow
sqlite store and Optuna: a half-finished study (Ctrl-C after its first search trial) is copied beside its original
under another name and the copy resumed to its answer — the original stays byte-identical; the finished copy is
moved elsewhere and read there through the project's loaders and MLflow's own client; a damaged ``answer.json`` or
``optuna.db`` is rebuilt from the trials with one line.

Tiny settings: joint training only, 3 search trials of 2 epochs (one at a time), the best configuration confirmed on
2 fresh seeds."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from drl_tune import confirm
from drl_tune.run import main
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.study.tables import ProgressTable
from tests.conftest import init_local_ray
from tests.e2e.test_study_e2e import tiny_sets

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1}
defaults: {method: joint, lr: 0.05}
search:
  lr: {type: choice, values: [0.05, 0.02, 0.1]}
scheduler: {type: none}
study:
  num_samples: 3
  max_concurrent: 1
  seed: 3
  max_failures: 0
  overrides: {epochs: 2}
  confirm: {seeds: 2, top_k: 1}
resources: {cpus_per_trial: 1}
"""
SEARCH, SEEDS = 3, 2


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The original (interrupted after its first search trial), and its copy ``copy1`` beside it, resumed."""
    root = tmp_path_factory.mktemp("folder_e2e")
    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage = root / "studies"
    started_ray = not ray.is_initialized()
    if started_ray:
        init_local_ray(attempts=3)
    finish = ProgressTable.on_trial_complete

    def ctrl_c_after_first(self, *args, **kwargs):  # the class, not the instance Tune pickles: the resume is plain
        finish(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the driver's own Ctrl-C handling stops the search gracefully

    try:
        ProgressTable.on_trial_complete = ctrl_c_after_first
        try:
            code, out, err = run_main(["--space", str(space), "--storage", str(storage), "--name", "orig",
                                       "--progress-interval", "600", "--no-report", *tiny_sets()])
        finally:
            ProgressTable.on_trial_complete = finish
        original = storage / "orig"
        assert code == 130, out + err
        assert "--resume --name orig" in out and not (original / "confirm").exists()
        before = tree_hashes(original)
        copy = storage / "copy1"
        shutil.copytree(original, copy)
        code, resumed, resumed_err = run_main(["--resume", "--name", "copy1", "--storage", str(storage),
                                               "--progress-interval", "600", "--no-report"])
    finally:
        if started_ray:
            ray.shutdown()
    return {"storage": storage, "original": original, "copy": copy, "before": before, "code": code,
            "out": resumed, "err": resumed_err, "root": root}


def test_a_copy_beside_its_original_resumes_as_itself_and_leaves_the_original_untouched(studies):
    original, copy, out = studies["original"], studies["copy"], studies["out"]
    assert studies["code"] == 0, out + studies["err"]
    assert tree_hashes(original) == studies["before"]  # every byte of every file of the original, none added
    assert f"resuming study 'orig' in {copy.resolve()}" in out, out
    assert f"study folder {copy.resolve()} was made in {original.resolve()}: re-rooted its plan and MLflow " \
           f"artifact locations here" in out, out
    lines = [line for line in out.splitlines() if line.startswith(("results:", "MLflow:", "optuna:"))]
    assert len(lines) == 3 and all(str(copy.resolve()) in line for line in lines), lines
    assert not any(str(original.resolve()) + "/" in line for line in lines), lines
    answer = json.loads((copy / "answer.json").read_text())
    assert [len(c["seeds"]) for c in answer["configs"]] == [SEEDS]
    assert not (original / "answer.json").exists()
    trials = [d for d in copy.glob("joint_*") if d.is_dir()]
    assert len(trials) == SEARCH and all(len((d / "result.json").read_text().splitlines()) == 2 for d in trials)
    plan = Plan.read(copy)
    assert plan.moved_from is None and plan.name == "orig"  # re-rooted and saved; the name stays a label
    client = MlflowClient(plan.mlflow_uri)
    runs = client.search_runs([plan.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == plan.parent_run_id]
    assert len(children) == SEARCH + SEEDS and all(r.info.status == "FINISHED" for r in children)
    assert all(r.info.artifact_uri.startswith(copy.resolve().as_uri() + "/") for r in runs)
    artifacts = {a.path for a in client.list_artifacts(plan.parent_run_id)}
    assert {"answer.json", PLAN_FILE} <= artifacts
    assert (copy / "mlartifacts" / plan.parent_run_id / "artifacts" / "answer.json").is_file()


def test_a_finished_study_moved_elsewhere_opens_with_its_mlflow_runs_and_artifacts(studies, tmp_path, capsys):
    from drl_tune.analysis.load import load_mlflow, load_study

    stage = tmp_path / "stage"
    shutil.copytree(studies["copy"], stage)  # a finished study of its own, then moved: its old folder is gone
    moved = tmp_path / "elsewhere" / "kept-v1"
    moved.parent.mkdir()
    shutil.move(stage, moved)
    study = load_study(moved)
    assert study.study_dir == moved and study.plan["storage"] == str(moved.parent.resolve())
    assert (study.trials["stage"] == "search").sum() == SEARCH and (study.trials["stage"] == "confirm").sum() == SEEDS
    assert study.answer == json.loads((moved / "answer.json").read_text())
    uri = f"sqlite:///{moved.resolve() / 'mlflow.db'}"
    from_mlflow = load_mlflow(uri, "orig")
    assert from_mlflow.study_dir == moved.resolve() and len(from_mlflow.trials) == SEARCH + SEEDS
    assert from_mlflow.answer == study.answer  # the answer artifact, read through MLflow at the new place
    plan = Plan.read(moved)
    client = MlflowClient(uri)
    parent = client.get_run(plan.parent_run_id)
    assert parent.info.artifact_uri.startswith(moved.resolve().as_uri() + "/")
    assert parent.data.tags["drl_tune.storage"] == str(moved.resolve())
    local = client.download_artifacts(plan.parent_run_id, "answer.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == study.answer
    for given in (["--path", str(moved)], ["--name", "kept-v1", "--storage", str(moved.parent)]):
        assert confirm.main(["--answer", *given]) == 0
        assert "mean [95% CI]" in capsys.readouterr().out


def test_damaged_derived_files_are_rebuilt_from_the_trials_and_said_so(studies, tmp_path, capsys):
    import optuna

    from drl_tune.driver import sync_optuna_db
    from drl_tune.study.folder import open_study
    from drl_tune.study.optuna_db import storage_url

    study = tmp_path / "damaged"
    shutil.copytree(studies["copy"], study)
    good = json.loads((study / "answer.json").read_text())
    (study / "answer.json").write_text('{"configs": [')  # torn mid-write
    assert confirm.main(["--answer", "--path", str(study)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "answer.json was unreadable" in captured.err, captured.err
    assert "rebuilt from the confirmation trials" in captured.err and "mean [95% CI]" in captured.out
    assert json.loads((study / "answer.json").read_text()) == good

    (study / "optuna.db").write_bytes(b"\0" * 100)
    assert sync_optuna_db(open_study(study, write=False)) is not None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optuna.db was unreadable" in err, err
    assert len(optuna.load_study(study_name="orig", storage=storage_url(study)).trials) == SEARCH

    shutil.rmtree(study / "confirm")  # nothing left to rebuild the answer from: say what to do, exit 2
    (study / "answer.json").write_text("not json")
    assert confirm.main(["--answer", "--path", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreadable" in err and "could not be rebuilt" in err, err
