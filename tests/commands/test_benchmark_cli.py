"""python -m drl_tune.benchmark refuses bad arguments in one line, before any study starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from drl_tune import benchmark, driver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setattr(driver, "start_ray", lambda address: pytest.fail("Ray must not start for a bad input"))


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give --spaces (one comparison space per dataset) and/or --from (finished studies)"),
    (["--spaces", "demo_compare", "--methods", "joint,nosuch"], "--methods: 'nosuch' is not a registered method"),
    (["--spaces", "demo_compare", "--methods", "joint"], "--methods needs two or more different methods"),
    (["--spaces", "{tmp}/one.yaml", "demo_compare", "--methods", "joint,drl"], "space 'one' searches no method"),
    (["--spaces", "demo_compare", "demo_compare"], "two datasets of the table have one name"),
    (["--spaces", "nosuch_space"], "no search space named 'nosuch_space'"),
    (["--spaces", "demo_compare", "--confirm-seeds", "0"], "the table needs confirmed answers"),
    (["--spaces", "cremad_compare", "--set", "data.root={tmp}/nowhere"],
     "space cremad_compare: dataset 'cremad' is not prepared at {tmp}/nowhere. Prepare it once with python -m "
     "drl_tune.data.prepare cremad"),
    (["--resume"], "--resume needs the --name of the benchmark to finish"),
    (["--resume", "--name", "never"], "is not a benchmark folder (no drl_tune_benchmark.json)"),
    (["--resume", "--name", "b", "--spaces", "demo_compare"], None),  # see below
    (["--from", "{tmp}"], "no answer.json there; finish the study first"),
    (["--spaces", "demo_compare", "--methods-from", "{tmp}/none.py"], "--methods-from {tmp}/none.py: no such file"),
])
def test_bad_arguments_are_one_line_before_anything_starts(no_ray, tmp_path, capsys, argv, message):
    if message is None:  # --resume with --spaces: the saved benchmark cannot be changed
        (tmp_path / "studies" / "b").mkdir(parents=True)
        message = "--resume finishes the saved benchmark; --spaces cannot change it"
    (tmp_path / "one.yaml").write_text("dataset: {name: synthetic}\nsearch: {lr: {type: uniform, low: 0.001, "
                                       "high: 0.1}}\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = benchmark.main([*argv, "--storage", str(tmp_path / "studies")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").rglob("*.json"))  # nothing written
