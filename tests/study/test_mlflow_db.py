"""A new study's MLflow database, created by a separate process while Ray starts (drl_tune/study/mlflow_db.py):
the database the driver then opens is the one MLflow would have made itself, and anything unexpected leaves the
database to the driver and nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlflow import MlflowClient

from drl_tune.study import mlflow_db
from drl_tune.study.mlflow_db import NewDatabase, sqlite_path


def leftovers(storage):
    return [p.name for p in storage.iterdir() if p.name.startswith(".mlflow-new-")]


def test_the_database_made_ahead_is_the_one_mlflow_makes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment keeps ./mlruns of the working folder
    storage = tmp_path / "studies"
    target = storage / "s1" / "mlflow.db"
    database = NewDatabase(f"sqlite:///{target}", storage)
    assert database.start()
    assert database.adopt() and target.is_file()
    assert not leftovers(storage)
    made = MlflowClient(f"sqlite:///{target}")
    direct = MlflowClient(f"sqlite:///{tmp_path / 'direct.db'}")  # MLflow creating one itself, in this process
    assert made.get_experiment("0").artifact_location == direct.get_experiment("0").artifact_location
    assert made.get_experiment("0").artifact_location == str(tmp_path.resolve() / "mlruns" / "0")
    # the tables are all there: a study's first calls work
    experiment = made.create_experiment("s1", artifact_location=(storage / "s1" / "mlartifacts").as_uri())
    run = made.create_run(experiment)
    made.log_metric(run.info.run_id, "val/acc", 0.5, step=0)
    assert made.get_metric_history(run.info.run_id, "val/acc")[0].value == 0.5


def test_only_a_new_local_sqlite_database_is_made_ahead(tmp_path):
    storage = tmp_path / "studies"
    existing = tmp_path / "old.db"
    existing.write_bytes(b"someone's database")
    for uri in ("http://127.0.0.1:5000", "sqlite:///relative.db", f"sqlite:///{existing}",
                f"sqlite:///{tmp_path / 'x.db'}?timeout=5"):
        database = NewDatabase(uri, storage)
        assert not database.start(), uri
        assert not database.adopt()
    assert existing.read_bytes() == b"someone's database"
    assert not storage.exists()  # nothing was written for them
    assert sqlite_path(f"sqlite:///{existing}") == existing and sqlite_path("postgresql://h/db") is None


def test_a_failed_or_raced_process_leaves_the_database_to_the_driver(tmp_path, monkeypatch):
    storage = tmp_path / "studies"
    target = storage / "s1" / "mlflow.db"
    monkeypatch.setattr(mlflow_db.sys, "executable", "/bin/false")  # the process exits 1
    database = NewDatabase(f"sqlite:///{target}", storage)
    assert database.start()
    assert not database.adopt() and not target.exists() and not storage.exists()
    monkeypatch.setattr(mlflow_db.sys, "executable", sys.executable)

    database = NewDatabase(f"sqlite:///{target}", storage)  # a file appeared at the target meanwhile: kept
    assert database.start()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not ours")
    assert not database.adopt()
    assert target.read_bytes() == b"not ours" and not leftovers(storage)


def test_discard_stops_a_running_process_and_removes_its_folder(tmp_path, monkeypatch):
    """A study stopped during Ray's start (Ctrl-C) or failing before MLflow: the process is stopped, nothing is
    left in the storage folder."""
    sleeper = tmp_path / "sleeper"
    sleeper.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 60\n")
    sleeper.chmod(0o755)
    monkeypatch.setattr(mlflow_db.sys, "executable", str(sleeper))
    storage = tmp_path / "studies"
    database = NewDatabase(f"sqlite:///{storage / 's1' / 'mlflow.db'}", storage)
    assert database.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").is_file():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int((tmp_path / "pid").read_text())
    database.discard()
    database.discard()  # twice is fine
    assert not storage.exists()  # it made the storage folder, and nothing else went in: removed
    try:
        os.kill(pid, 0)
        alive = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
        assert alive.strip().startswith("Z") or not alive.strip(), alive
    except ProcessLookupError:
        pass
