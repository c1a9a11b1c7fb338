"""``python -m drl_tune.run`` without starting anything: --dry-run prints the plan; bad input gives one clear
message, exit code 2, and neither Ray nor a study folder is started."""

from __future__ import annotations

import os
import textwrap

import pytest
import ray

from drl_tune.methods import REGISTRY
from drl_tune.run import main
from tests.conftest import TINY

# tiny data: the dataset check in the driver generates the synthetic set
TINY_SETS = [f"--set={k}={v}" for k, v in TINY.items() if k.startswith("data.")]

GOOD = """\
dataset: {name: synthetic}
fixed: {epochs: 3}
defaults: {method: drl, lr: 0.01}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: loguniform, low: 0.001, high: 0.1}
  drl.lam: {type: uniform, low: 1, high: 5}
"""


def run_bad(args, tmp_path, capsys):
    storage = tmp_path / "studies"
    code = main([*args, "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ")
    assert not storage.exists(), "a study folder was created for bad input"
    assert not ray.is_initialized(), "Ray was started for bad input"
    return err


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys):
    storage = tmp_path / "studies"
    code = main(["--space", "demo", "--dry-run", "--storage", str(storage), "--name", "x", "--num-samples", "4",
                 "--cpus-per-trial", "2", "--gpus-per-trial", "0.5", "--seed", "7", "--set", "drl.max_reinits=1",
                 *TINY_SETS])
    out = capsys.readouterr().out
    assert code == 0
    assert "trials: 4, at most 2 at a time; 2 CPU + 0.5 GPU per trial" in out
    assert "Optuna TPE (adaptive), seed 7" in out and "ASHA on val/acc_best" in out
    assert "equal budgets: drl, joint in turn, 2 search trials each" in out
    assert "drl.lam" in out and "(only when method=drl)" in out
    assert "drl.max_reinits" not in out.split("searched:")[1].split("first drl trial")[0]  # --set fixed it
    assert "first drl trial (official setting): method=drl" in out
    assert "nothing started" in out
    assert not storage.exists() and not ray.is_initialized()


@pytest.mark.parametrize(("space", "message"), [
    ("dataset: [unclosed", "not valid YAML"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: normal, low: 0, high: 1}}",
     "'search.lr': unknown distribution type 'normal'; allowed: choice, uniform, loguniform, int"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: uniform, low: 0.5, high: 0.1}}",
     "'search.lr': low (0.5) must be <= high (0.1)"),
    ("dataset: {name: synthetic}\nsearch: {method: {type: choice, values: [joint, ogm]}}",
     "unknown method 'ogm'; registered: joint, drl"),
])
def test_bad_space_file(space, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(space)
    err = run_bad(["--space", str(path)], tmp_path, capsys)
    assert message in err and str(path) in err


@pytest.mark.parametrize(("args", "message"), [
    (["--space", str(os.sep) + "no/such.yaml"], "search space file /no/such.yaml does not exist"),
    (["--space", "nope"], "no search space named 'nope'; known:"),
    (["--space", "demo", "--set", "method=nope"],
     "unknown method 'nope'; registered methods: " + ", ".join(sorted(REGISTRY))),
    (["--space", "demo", "--set", "drl.alpah=2"], "unknown key 'drl.alpah'"),
    (["--space", "demo", "--set", "epochs=lots"], "epochs must be an integer"),
    (["--space", "demo", "--resume"], "--resume: no study found"),
    ([], "--space is required"),
])
def test_bad_command_line(args, message, tmp_path, capsys):
    assert message in run_bad(args, tmp_path, capsys)


@pytest.mark.parametrize("name", ["cremad", "kinetics_sounds", "ucf101"])
def test_dataset_absent_says_where_it_looked_and_how_to_prepare(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(f"DRL_TUNE_{name.upper()}_ROOT", raising=False)
    root = tmp_path / "not-prepared"
    err = run_bad(["--space", name, "--set", f"data.root={root}"], tmp_path, capsys)
    assert f"dataset {name!r} is not prepared at {root}" in err
    assert f"python -m drl_tune.data.prepare {name}" in err


def test_existing_study_name_is_refused(tmp_path, capsys):
    storage = tmp_path / "studies"
    (storage / "s1").mkdir(parents=True)
    (storage / "s1" / "drl_tune_study.json").write_text("{}")
    code = main(["--space", "demo", "--storage", str(storage), "--name", "s1"])
    assert code == 2
    assert "resume it with --resume --name s1" in capsys.readouterr().err


def test_space_file_from_path_and_set(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(GOOD))
    assert main(["--space", str(path), "--dry-run", "--set", "method=joint", *TINY_SETS]) == 0
    out = capsys.readouterr().out
    assert "drl.lam" not in out.split("searched:")[1].split("first drl trial")[0]
    assert "first trial (official setting): lr=0.01" in out


def fixed_block(out: str) -> tuple[dict[str, str], str]:
    """The ``fixed:`` block of a printed plan: its keys with their printed values, and its closing line (or "")."""
    lines = out.split("\n  fixed:\n")[1].split("\n\n")[0].splitlines()
    closing = lines[-1].strip() if lines[-1].strip().startswith("(") else ""
    rows = [line.split(maxsplit=1) for line in lines if line.strip() and not line.strip().startswith("(")]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}, closing


def demo_plan(tmp_path, *args):
    from drl_tune.run import parse_args, plan_from_args

    return plan_from_args(parse_args(["--space", "demo", "--storage", str(tmp_path / "studies"), "--name", "x",
                                      *args]))


def test_dry_run_lists_the_fixed_keys_that_matter(tmp_path, capsys):
    """The demo's fixed block: the core keys, DRL's own keys (drl is among its methods) and the keys away from their
    defaults — not the 13 synthetic-data knobs, the 5 perf.* switches or the feature encoders' sizes at their
    defaults; a closing line counts what was left out and says how to see it."""
    from drl_tune.study.plan import CORE_KEYS
    from drl_tune.training.config import make_config

    assert main(["--space", "demo", "--dry-run", "--storage", str(tmp_path / "studies"), "--name", "x"]) == 0
    shown, closing = fixed_block(capsys.readouterr().out)
    plan, defaults = demo_plan(tmp_path), make_config({}).to_flat()
    at_default = {k for k, v in plan.constants.items() if defaults.get(k) == v}
    quiet = ("data.synthetic.", "perf.", "model.feature_", "model.sequence_encoder")
    assert [k for k in shown if k.startswith(quiet) and k in at_default] == []
    assert "data.synthetic.n_train" in plan.constants and "perf.bf16" in plan.constants  # fixed, but not shown
    assert CORE_KEYS - {"method", "lr"} <= set(shown)  # method and lr are searched by the demo
    drl_keys = {k for k in plan.constants if k.startswith("drl.")}
    assert drl_keys and drl_keys <= set(shown)
    assert drl_keys <= at_default  # shown for belonging to a method of the study, not for a changed value
    assert {"epochs", "model.width", "eval.probe_samples"} <= set(shown) - at_default  # the demo's own choices
    assert all(k in CORE_KEYS or k.startswith("drl.") or k not in at_default for k in shown)
    assert shown["epochs"] == "10" and shown["data.name"] == "synthetic"
    listed_by_show_all = {k for k in plan.constants if not k.startswith("data.avdigits.")}
    left_out = len(listed_by_show_all) - len(shown)
    assert left_out >= 20
    assert closing == f"({left_out} more at their defaults: --dry-run -v or --show-all prints every key)"


def test_dry_run_lists_a_key_set_away_from_its_default(tmp_path, capsys):
    args = ["--set", "data.synthetic.n_train=300", "--set", "perf.bf16=false"]
    assert main(["--space", "demo", "--dry-run", "--storage", str(tmp_path / "studies"), "--name", "x", *args]) == 0
    shown, _ = fixed_block(capsys.readouterr().out)
    assert shown["data.synthetic.n_train"] == "300" and shown["perf.bf16"] == "False"
    assert "data.synthetic.n_val" not in shown and "perf.channels_last" not in shown  # still at their defaults


@pytest.mark.parametrize("flags", [["--show-all"], ["-v"], ["--verbose", "--show-all"]])
def test_dry_run_show_all_and_verbose_list_every_fixed_key(flags, tmp_path, capsys):
    assert main(["--space", "demo", "--dry-run", "--storage", str(tmp_path / "studies"), "--name", "x",
                 *flags]) == 0
    shown, closing = fixed_block(capsys.readouterr().out)
    plan = demo_plan(tmp_path)
    # every constant, but another generated dataset's knobs (data.avdigits.* while the demo reads synthetic)
    assert set(shown) == {k for k in plan.constants if not k.startswith("data.avdigits.")}
    assert shown["perf.bf16"] == "True" and shown["data.synthetic.n_train"] == "1000"
    assert closing == ""


def test_the_plan_lists_what_the_device_and_the_dataset_use(tmp_path):
    """perf.* (at their defaults) once GPUs are asked for; the feature encoders' keys for a manifest dataset (the
    only kind with feature modalities) — neither for the demo on CPUs."""
    from drl_tune.run import parse_args, plan_from_args

    shown, _ = demo_plan(tmp_path).fixed_keys()
    assert not [k for k in shown if k.startswith(("perf.", "model.feature_", "model.sequence_encoder"))]
    shown, _ = demo_plan(tmp_path, "--gpus-per-trial", "1").fixed_keys()
    assert {"perf.bf16", "perf.channels_last", "perf.compile"} <= set(shown)
    custom = plan_from_args(parse_args(["--space", "custom", "--storage", str(tmp_path / "s"), "--name", "c",
                                        "--set", f"data.root={tmp_path}"]))
    shown, _ = custom.fixed_keys()
    assert {"model.feature_hidden", "model.feature_layers", "model.sequence_encoder"} <= set(shown)
    assert not [k for k in shown if k.startswith("perf.")]
