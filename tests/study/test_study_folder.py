"""A study folder is self-contained (drl_tune/study/folder.py), fast parts: the plan of a copied, moved or renamed
folder names that folder (never the one it was made in), the MLflow database's absolute artifact locations follow
the folder, a damaged optuna.db is rebuilt with one line, and an objective naming a modality the data do not have
is refused at the command line before Ray starts. The end-to-end copies and moves are in test_study_folder_e2e."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from drl_tune.study.folder import StudyFolderError, open_study, reroot_mlflow, study_folder
from drl_tune.study.plan import PLAN_FILE, Plan, build_plan
from drl_tune.study.spaces import load_space
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
SPACE = """\
dataset: {name: synthetic}
fixed: {epochs: 2, threads: 1}
defaults: {method: joint, lr: 0.05}
search:
  lr: {type: choice, values: [0.05, 0.02]}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 1, seed: 3}
"""


def saved_plan(tmp_path: Path, name: str = "orig", mlflow_uri: str | None = None) -> Plan:
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(textwrap.dedent(SPACE))
    plan = build_plan(load_space(str(space_file)), overrides={}, name=name, storage=tmp_path / "studies",
                      mlflow_uri=mlflow_uri)
    plan.save()
    return plan


def test_a_copied_or_renamed_folder_is_read_as_itself(tmp_path):
    original = saved_plan(tmp_path)
    orig = tmp_path / "studies" / "orig"
    copy = tmp_path / "studies" / "copy1"  # beside its original: the case that resumed the original
    shutil.copytree(orig, copy)
    plan = Plan.read(copy)
    assert plan.study_dir == copy.resolve() and plan.storage == str(copy.parent.resolve())
    assert plan.name == "orig"  # a label (MLflow experiment, Optuna study), never a path
    assert plan.mlflow_uri == f"sqlite:///{copy.resolve() / 'mlflow.db'}" != original.mlflow_uri
    assert plan.moved_from == orig.resolve()
    assert plan.resume_args() == f"--name copy1 --storage {copy.parent.resolve()}"
    assert Plan.read(orig).moved_from is None and Plan.read(orig).study_dir == orig.resolve()
    # a command that writes saves the re-rooted plan into the copy, never into the original
    before = (orig / PLAN_FILE).read_bytes()
    opened = open_study(copy, write=True)
    assert "re-rooted" in opened.rerooted and str(orig.resolve()) in opened.rerooted
    assert (orig / PLAN_FILE).read_bytes() == before
    again = Plan.read(copy)
    assert again.moved_from is None and again.folder == str(copy.resolve()) and again.name == "orig"
    # moved on: the saved folder is the one compared with, not storage/name
    shutil.move(copy, tmp_path / "elsewhere")
    moved = Plan.read(tmp_path / "elsewhere")
    assert moved.moved_from == copy.resolve() and moved.mlflow_uri.endswith("/elsewhere/mlflow.db")


def test_an_external_tracking_store_is_kept_and_a_copy_sharing_it_is_not_written(tmp_path):
    outside = tmp_path / "central" / "mlflow.db"
    saved_plan(tmp_path, mlflow_uri=f"sqlite:///{outside}")
    orig = tmp_path / "studies" / "orig"
    plan = json_plan = Plan.read(orig)
    plan.parent_run_id = "abc"
    plan.save()
    copy = tmp_path / "studies" / "copy1"
    shutil.copytree(orig, copy)
    json_plan = Plan.read(copy)
    assert json_plan.mlflow_uri == f"sqlite:///{outside}"  # not inside the study folder: not re-rooted
    open_study(copy, write=False)  # reading is fine
    with pytest.raises(StudyFolderError, match="copy of the study in .*same MLflow store"):
        open_study(copy, write=True)


def test_the_folder_is_given_once_and_clearly(tmp_path):
    saved_plan(tmp_path)
    assert study_folder("orig", tmp_path / "studies") == tmp_path / "studies" / "orig"
    assert study_folder(path=tmp_path / "studies" / "orig") == tmp_path / "studies" / "orig"
    for kwargs, message in (({"name": "orig", "path": tmp_path}, "not both"),
                            ({"name": "a/b", "storage": tmp_path}, "--path"),
                            ({"name": "gone", "storage": tmp_path / "studies"}, "no study 'gone'"),
                            ({"path": tmp_path}, "not a study folder"), ({}, "--name NAME")):
        with pytest.raises(StudyFolderError, match=message):
            study_folder(**kwargs)


def test_a_moved_mlflow_database_opens_with_its_artifacts(tmp_path):
    from mlflow import MlflowClient

    from drl_tune.study.tracking import StudyTracker

    first = tmp_path / "first"
    first.mkdir()
    tracker = StudyTracker(f"sqlite:///{first / 'mlflow.db'}", "orig", artifact_dir=first / "mlartifacts")
    run_id = tracker.start_parent("orig", {"drl_tune.storage": str(first)}, {"lr": 0.1}, {})
    tracker.client.log_text(run_id, "the answer", "answer.txt")
    del tracker
    shutil.move(first, tmp_path / "second")
    second = tmp_path / "second"
    client = MlflowClient(f"sqlite:///{second / 'mlflow.db'}")
    with pytest.raises(Exception):  # noqa: B017, PT011 — as MLflow stores it, the run's artifacts are gone
        client.download_artifacts(run_id, "answer.txt", str(tmp_path))
    assert reroot_mlflow(second) is True
    assert reroot_mlflow(second) is False  # idempotent: the database itself says where it is now
    client = MlflowClient(f"sqlite:///{second / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith(second.resolve().as_uri() + "/mlartifacts/")
    assert client.get_experiment(run.info.experiment_id).artifact_location == \
        (second.resolve() / "mlartifacts").as_uri()
    assert run.data.tags["drl_tune.storage"] == str(second.resolve())
    assert Path(client.download_artifacts(run_id, "answer.txt", str(tmp_path))).read_text() == "the answer"
    with sqlite3.connect(second / "mlflow.db") as con:  # no row names the old folder any more
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("tags", "value")):
            assert not con.execute(f"select count(*) from {table} where {column} like ?",  # noqa: S608
                                   (f"%{first}%",)).fetchone()[0], table


def test_a_damaged_optuna_db_is_rebuilt_and_said_so(tmp_path, capsys):
    import optuna

    from drl_tune.study.optuna_db import OPTUNA_DB, storage_url, write_optuna_db

    plan = saved_plan(tmp_path)
    write_optuna_db(plan, [])
    assert capsys.readouterr().err == ""  # a healthy (or absent) database: nothing to say
    (plan.study_dir / OPTUNA_DB).write_bytes(b"torn by a full disk")
    write_optuna_db(plan, [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optuna.db was unreadable" in err and "rebuilt from the study's trials" in err
    optuna.load_study(study_name=plan.name, storage=storage_url(plan.study_dir))  # readable again
    assert not list(plan.study_dir.glob(".optuna.db.*"))  # no temporary file left


def test_an_objective_naming_a_modality_the_data_lack_is_refused_before_ray(tmp_path):
    """Through the real command line: one line naming the allowed objectives, exit code 2, nothing started."""
    sets = [f"--set={k}={v}" for k, v in TINY.items() if k.startswith("data.")]
    storage = tmp_path / "studies"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DRL_TUNE_DATA": str(tmp_path / "data")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "drl_tune.run", "--space", "demo", "--storage", str(storage),
                           "--objectives", "val/acc_best:max,val/acc_nosuch:max", *sets],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for word in ("'val/acc_nosuch'", "modality 'nosuch'", "audio, visual", "val/acc_best", "balance/gap",
                 "val/acc_audio", "val/acc_visual"):
        assert word in proc.stderr, (word, proc.stderr)
    assert "Ray" not in proc.stdout + proc.stderr and not storage.exists()  # refused before anything started
    assert took < 60, took


def test_run_takes_path_only_to_resume(tmp_path, capsys):
    from drl_tune.run import main

    saved_plan(tmp_path)
    assert main(["--space", "demo", "--path", str(tmp_path / "studies" / "orig")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use it with --resume" in err
    assert main(["--resume", "--path", str(tmp_path / "nowhere")]) == 2
    assert "not a study folder" in capsys.readouterr().err
