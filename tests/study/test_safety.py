"""Safe by default: nothing unsafe is deserialised, servers bind 127.0.0.1, credentials stay out of what the
project writes for people (console, MLflow params/tags, plan.txt), and ``--resume`` only continues a folder
this tool wrote. The package is read with ``ast`` so a new ``torch.load`` without ``weights_only=True`` fails
here the day it is written."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from mlflow import MlflowClient
from ray.tune.execution import class_cache

from drl_tune import driver
from drl_tune import run as run_cli
from drl_tune.study.plan import PLAN_FILE, PLAN_FORMAT, Plan
from drl_tune.study.safety import redact
from drl_tune.study.tracking import StudyTracker, log_params, ui_command

PACKAGE = Path(__file__).resolve().parents[2] / "drl_tune"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def calls(name: str, attr: str) -> list[tuple[Path, ast.Call]]:
    """Every ``name.attr(...)`` call in the package (``np``/``numpy`` are one name)."""
    aliases = {"np": {"np", "numpy"}, "torch": {"torch"}, "pickle": {"pickle", "cPickle"}, "yaml": {"yaml"}}[name]
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in aliases):
                out.append((path, node))
    return out


def keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_every_torch_load_is_weights_only():
    found = calls("torch", "load")
    assert found, "the scan found no torch.load at all: it is looking in the wrong place"
    bad = [f"{p.name}:{c.lineno}" for p, c in found if keyword(c, "weights_only") is not True]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_every_np_load_refuses_pickles():
    found = calls("np", "load")
    assert found
    bad = [f"{p.name}:{c.lineno}" for p, c in found if keyword(c, "allow_pickle") is not False]
    assert not bad, f"np.load without allow_pickle=False: {bad}"


def test_no_pickle_or_unsafe_yaml_loading():
    assert not calls("pickle", "load") and not calls("pickle", "loads")
    assert not calls("yaml", "load") and not calls("yaml", "unsafe_load")  # yaml.safe_load only


def test_servers_bind_localhost(monkeypatch):
    assert "--host 127.0.0.1" in ui_command("sqlite:////tmp/x/mlflow.db")
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", dict(class_cache.DEFAULT_ENV_VARS))  # start_ray edits it
    driver.start_ray(None, SimpleNamespace(cpus_per_trial=4.0, max_concurrent=1))
    # a local Ray: no dashboard at all (were one asked for, Ray's own default host is 127.0.0.1)
    assert seen.get("include_dashboard") is False and seen.get("dashboard_host", "127.0.0.1") == "127.0.0.1"
    for path in SOURCES:
        assert "0.0.0.0" not in path.read_text(), f"{path.name} mentions binding all interfaces"


def test_redact_hides_passwords_tokens_and_secret_env(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "rt-5ecret-t0ken-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-long")
    text = ("uri postgresql://alice:pa55word@db:5432/mlflow then http://h/x?token=abc123&x=1 and "
            "rt-5ecret-t0ken-value and hunter2-long")
    out = redact(text)
    for secret in ("pa55word", "abc123", "rt-5ecret-t0ken-value", "hunter2-long"):
        assert secret not in out
    assert "postgresql://alice:***@db:5432/mlflow" in out and "x=1" in out
    assert redact("sqlite:////abs/path/mlflow.db, lr=0.01") == "sqlite:////abs/path/mlflow.db, lr=0.01"


def test_mlflow_params_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "safety")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    log_params(tracker.client, run_id, {"data.root": "s3://key:SECRETKEY99@bucket/data", "note": "tok-1234567890",
                                        "lr": 0.01})
    params = MlflowClient(tracker.tracking_uri).get_run(run_id).data.params
    assert params == {"data.root": "s3://key:***@bucket/data", "note": "***", "lr": "0.01"}


def test_dry_run_prints_no_credentials(tmp_path, capsys, monkeypatch):
    space = tmp_path / "s.yaml"
    space.write_text("dataset: {name: synthetic, synthetic: {n_train: 16, n_val: 8, n_test: 8, image_size: 16}}\n"
                     "fixed: {epochs: 1, threads: 1}\nscheduler: {type: none}\n")
    code = run_cli.main(["--space", str(space), "--storage", str(tmp_path / "st"), "--dry-run",
                         "--mlflow-uri", "postgresql://bob:s3cr3t-pw@db/mlflow"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "s3cr3t-pw" not in out.out + out.err and "postgresql://bob:***@db/mlflow" in out.out


def test_resume_accepts_only_this_tools_plan(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("dataset: {name: synthetic}\nfixed: {epochs: 1}\nscheduler: {type: none}\n")
    args = run_cli.parse_args(["--space", str(space), "--storage", str(tmp_path), "--name", "ok"])
    path = run_cli.plan_from_args(args).save()
    assert path.name == PLAN_FILE
    plan = Plan.from_json(path.read_text())  # a plan this tool wrote round-trips, marker included
    assert plan.format == PLAN_FORMAT and plan.name == "ok"
    foreign = path.read_text().replace(PLAN_FORMAT, "someone-else/7")
    with pytest.raises(ValueError, match="not a drl_tune study plan"):
        Plan.from_json(foreign)
