"""A study folder written before the package layout (``drl_tune/study.py``, ``drl_tune/spaces.py``, … as top-level
modules) still resumes: Tune pickled its search space, searcher and callbacks under the old module names.

The fixture is a real study made by the code of commit fa6a17b (the last one before the move): 3 search trials of
joint / DRL on the tiny synthetic set, 2 epochs each, Ctrl-C after the first trial ended (exit 130), the second
one checkpointed mid-run. Its plan and MLflow database hold absolute paths under ``/tmp/drl_tune_old_layout``, so
it is unpacked there (and removed afterwards)."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "old_layout_study.tar.gz"
WHERE = Path("/tmp/drl_tune_old_layout")


def test_old_module_names_are_found_once_a_study_folder_is_read(tmp_path):
    import io

    from drl_tune import compat
    from drl_tune.study import params, tables, tune

    compat.install()
    for old, targets in compat.MOVED.items():
        module = importlib.import_module(old)
        for target in targets:  # every public name of where it lives now is found under the old name
            new = importlib.import_module(target)
            for name in [n for n in vars(new) if not n.startswith("_")][:20]:
                assert getattr(module, name) is getattr(new, name), (old, name)
    find = pickle.Unpickler(io.BytesIO(b"")).find_class
    assert find("drl_tune.study", "DefineByRun") is tune.DefineByRun  # drl_tune.study was one module
    assert find("drl_tune.study", "ProgressTable") is tables.ProgressTable
    assert find("drl_tune.tracking", "MLflowTrialCallback").__module__ == "drl_tune.study.tracking"
    for name in compat.OLD_STUDY_NAMES:  # every name the old drl_tune/study.py module had
        assert find("drl_tune.study", name) is not None, name
    for name in ("Choice", "Uniform", "LogUniform", "IntRange", "Param"):  # the searcher pickles its space's params
        assert find("drl_tune.spaces", name) is getattr(params, name), name
        assert find("drl_tune.study.spaces", name) is getattr(params, name), name
    assert find("drl_tune.core.config", "ConfigError").__module__ == "drl_tune.ground.errors"
    assert find("drl_tune.core.config", "DataConfig").__module__ == "drl_tune.data.config"
    with pytest.raises(AttributeError):
        find("drl_tune.study", "Nothing")


def test_the_package_itself_knows_only_its_current_names():
    """Without compat (nothing of the package imports it), an old name is not importable."""
    code = ("import importlib, sys, drl_tune.study.plan, drl_tune.run\n"
            "assert 'drl_tune.compat' not in sys.modules, 'compat loaded'\n"
            "for old in ('drl_tune.spaces', 'drl_tune.core.config'):\n"
            "    try:\n        importlib.import_module(old)\n    except ModuleNotFoundError:\n        continue\n"
            "    raise SystemExit(old + ' imported')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _names_in_pickles(study: Path) -> set[str]:
    text = b"".join(p.read_bytes() for p in study.glob("*.pkl"))
    return {name for name in ("drl_tune.study", "drl_tune.spaces", "drl_tune.tables", "drl_tune.tracking")
            if name.encode() in text}


@pytest.mark.slow
def test_a_study_folder_of_the_old_layout_resumes_to_its_answer():
    if WHERE.exists():
        pytest.skip(f"{WHERE} exists (another run of this test?); remove it to run this test")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        with tarfile.open(FIXTURE) as tar:
            tar.extractall(WHERE, filter="data")
        study = WHERE / "studies" / "old"
        assert _names_in_pickles(study) == {"drl_tune.study", "drl_tune.spaces", "drl_tune.tables",
                                            "drl_tune.tracking"}  # the fixture really names the old modules
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "DRL_TUNE_DATA": str(WHERE / "data")}
        proc = subprocess.run([sys.executable, "-m", "drl_tune.run", "--resume", "--name", "old", "--storage",
                               str(WHERE / "studies"), "--progress-interval", "0"], capture_output=True, text=True,
                              env=env, cwd=WHERE, timeout=900, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "resuming study 'old'" in out
        trials = sorted(d for d in study.iterdir() if d.is_dir() and d.name.startswith(("joint_", "drl_")))
        assert len(trials) == 3, trials  # exactly the planned trials, none started twice
        for trial in trials:
            epochs = [json.loads(line)["epoch"] for line in (trial / "result.json").read_text().splitlines()]
            assert epochs == [0, 1], (trial.name, epochs)  # the interrupted one continued from its checkpoint
        answer = json.loads((study / "answer.json").read_text())
        assert {row["method"] for row in answer["configs"]} == {"joint", "drl"}
    finally:
        shutil.rmtree(WHERE, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
