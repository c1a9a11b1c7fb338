"""Space files: the shipped ones load; bad ones fail naming the file, the key and what is allowed;
the define-by-run space samples a method's keys only with that method, official setting first."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest

from drl_tune.ground.errors import ConfigError
from drl_tune.study.plan import build_plan
from drl_tune.study.spaces import SpaceError, load_space
from drl_tune.study.tune import DefineByRun
from drl_tune.training.config import flatten, make_config

SHIPPED = ["demo", "cremad", "kinetics_sounds", "ucf101", "demo_compare", "cremad_compare", "avdigits_compare",
           "demo_pareto", "custom"]

GOOD = """\
dataset: {name: synthetic}
fixed: {epochs: 4, model.width: 4}
defaults: {method: drl, lr: 0.01, drl.lam: 3.0, drl.diagnosis_interval: 2}
search:
  method: {type: choice, values: [joint, drl]}
  lr: {type: loguniform, low: 1e-3, high: 0.1}
  batch_size: {type: choice, values: [32, 64]}
  momentum: {type: uniform, low: 0.5, high: 0.95}
  drl.lam: {type: uniform, low: 0.5, high: 5}
  drl.diagnosis_interval: {type: int, low: 1, high: 3}
  drl.max_reinits: {type: int, low: 1, high: 5, step: 2}
scheduler: {grace_period: 2}
study: {num_samples: 6, overrides: {epochs: 3}}
resources: {cpus_per_trial: 1, gpus_per_trial: 0.5}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load_and_contain_their_official_setting(name):
    space = load_space(name)
    assert space.search, f"{name} searches nothing"
    assert space.search["method"].values == ("joint", "drl") or set(space.search["method"].values) >= {"drl"}
    official = make_config(space.study_values()).to_flat()
    for key, param in space.search.items():
        if param.method in (None, official["method"]):
            assert param.contains(official[key]), (name, key, official[key])
    assert space.scheduler.metric == "val/acc_best"


def test_good_space_is_typed(tmp_path):
    space = load_space(str(write(tmp_path, GOOD)))
    s = space.search
    assert s["lr"].kind == "loguniform" and s["lr"].low == pytest.approx(1e-3)  # YAML's "1e-3" string is a number
    assert s["drl.lam"].method == "drl" and s["lr"].method is None
    assert s["drl.max_reinits"].step == 2 and s["drl.max_reinits"].contains(3) and not s["drl.max_reinits"].contains(2)
    assert space.study.num_samples == 6 and space.study.overrides == {"epochs": 3}
    assert space.resources.gpus_per_trial == 0.5 and space.scheduler.grace_period == 2
    assert space.config().epochs == 4  # drl_tune.train keeps the space's epochs; only the study overrides them
    assert space.study_values()["epochs"] == 3


BAD = [
    ("dataset: [unclosed", "not valid YAML"),
    ("- a list", "expected a mapping with blocks"),
    ("fixed: {epochs: 3}", "missing the 'dataset' block"),
    ("dataset: {name: synthetic}\nsearchh: {}", "unknown top-level key 'searchh'; allowed: name, description"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: gaussian, low: 0, high: 1}}",
     "'search.lr': unknown distribution type 'gaussian'; allowed: choice, uniform, loguniform, int"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: uniform, low: 0.1, high: 0.01}}",
     "'search.lr': low (0.1) must be <= high (0.01)"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: loguniform, low: 0, high: 0.01}}", "needs low > 0"),
    ("dataset: {name: synthetic}\nsearch: {lr: 0.1}", "'search.lr': expected a mapping with 'type'"),
    ("dataset: {name: synthetic}\nsearch: {lr: {type: uniform, low: 0.001, hi: 1}}", "unknown field 'hi'"),
    ("dataset: {name: synthetic}\nsearch: {epochs: {type: int, low: 2, high: 9, step: 2}}",
     "must be a multiple of step"),
    ("dataset: {name: synthetic}\nsearch: {epochs: {type: int, low: 2.5, high: 9}}", "'low' must be an integer"),
    ("dataset: {name: synthetic}\nsearch: {method: {type: choice, values: [joint, nope]}}",
     "'search.method': unknown method 'nope'; registered: joint, drl"),
    ("dataset: {name: synthetic}\ndefaults: {method: nope}", "unknown method 'nope'"),
    ("dataset: {name: synthetic}\nsearch: {learning_rate: {type: uniform, low: 0.001, high: 0.1}}",
     "'search.learning_rate': unknown key 'learning_rate'"),
    ("dataset: {name: synthetic}\ndefaults: {method: drl}\nsearch: {drl.lam: {type: uniform, low: -1, high: 2}}",
     "drl.lam must be a finite number >= 0"),
    ("dataset: {name: synthetic}\nsearch: {drl.lam: {type: uniform, low: 1, high: 2}}",
     "belongs to method 'drl', which this space never runs"),
    ("dataset: {name: synthetic}\ndefaults: {lr: 0.5}\nsearch: {lr: {type: loguniform, low: 0.001, high: 0.1}}",
     "the official setting lr=0.5"),
    ("dataset: {name: synthetic}\nscheduler: {metric: val/acc}", "'scheduler.metric' 'val/acc' is not allowed"),
    ("dataset: {name: synthetic}\nstudy: {num_samples: 0}", "'study.num_samples' must be an integer >= 1, got 0"),
    ("dataset: {name: synthetic}\nstudy: {trials: 3}", "unknown key 'study.trials'; allowed: metric"),
    ("dataset: {name: synthetic}\nstudy: {overrides: {epochs: 0}}",
     "'study.overrides': epochs must be an integer >= 1, got 0"),
    ("dataset: {name: synthetic}\nresources: {cpus_per_trial: two}", "'resources.cpus_per_trial' must be a number"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_space_names_file_key_and_allowed(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_space_lists_known_names():
    with pytest.raises(SpaceError, match="no search space named 'nope'; known: .*demo"):
        load_space("nope")
    with pytest.raises(SpaceError, match="does not exist"):
        load_space("/no/such/space.yaml")


def test_define_by_run_is_conditional_and_official_point_first(tmp_path):
    space = load_space(str(write(tmp_path, GOOD)))
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    # the official setting: the space's defaults, and the built-in defaults for searched keys it leaves out
    # then the same setting with every other method of the choice, so each method runs at least once
    assert plan.points_to_evaluate == [{"method": "drl", "lr": 0.01, "batch_size": 64, "momentum": 0.9,
                                        "drl.lam": 3.0, "drl.diagnosis_interval": 2, "drl.max_reinits": 3},
                                       {"method": "joint", "lr": 0.01, "batch_size": 64, "momentum": 0.9}]
    point = plan.points_to_evaluate[0]
    assert plan.constants["epochs"] == 3 and "lr" not in plan.constants and plan.constants["threads"] == 1
    assert plan.mlflow_uri == f"sqlite:///{tmp_path.resolve() / 't' / 'mlflow.db'}"
    define = DefineByRun(plan.search, plan.constants)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    study.enqueue_trial(point)
    seen = []
    for _ in range(20):
        trial = study.ask()
        constants = define(trial)
        seen.append(trial.params)
        study.tell(trial, 0.5)
        assert constants["epochs"] == 3 and "drl.lam" not in constants  # searched keys are not constants
    assert seen[0] == point
    methods = {p["method"] for p in seen}
    assert methods == {"joint", "drl"}
    for params in seen:
        has_drl = any(k.startswith("drl.") for k in params)
        assert has_drl == (params["method"] == "drl"), params


def test_every_method_gets_its_official_point_inside_the_space(tmp_path):
    # the official method is joint; DRL's keys come from the built-in defaults (interval 20, 3 re-inits), and
    # the interval's default lies outside the searched 1..3, so that key is left to the sampler
    text = GOOD.replace("defaults: {method: drl, lr: 0.01, drl.lam: 3.0, drl.diagnosis_interval: 2}",
                        "defaults: {method: joint, lr: 0.01}")
    plan = build_plan(load_space(str(write(tmp_path, text))), overrides={}, name="t", storage=tmp_path,
                      mlflow_uri=None)
    assert [p["method"] for p in plan.points_to_evaluate] == ["joint", "drl"]
    drl = plan.points_to_evaluate[1]
    assert drl["drl.lam"] == 3.0 and drl["drl.max_reinits"] == 3 and "drl.diagnosis_interval" not in drl
    assert {k: v for k, v in drl.items() if not k.startswith("drl.")} == {**plan.points_to_evaluate[0],
                                                                          "method": "drl"}
    # a fixed method leaves one official point
    fixed = build_plan(load_space(str(write(tmp_path, text))), overrides={"method": "drl"}, name="u",
                       storage=tmp_path, mlflow_uri=None)
    assert len(fixed.points_to_evaluate) == 1


def test_set_fixes_a_key_and_drops_other_methods_keys(tmp_path):
    space = load_space(str(write(tmp_path, GOOD)))
    plan = build_plan(space, overrides={"method": "joint", "lr": "0.02"}, name="t", storage=tmp_path,
                      mlflow_uri="http://127.0.0.1:5000")
    keys = {p.key for p in plan.search}
    assert keys == {"batch_size", "momentum"}
    assert plan.constants["lr"] == 0.02 and plan.constants["method"] == "joint"
    assert not any(k.startswith("drl.") for k in plan.constants)
    assert plan.mlflow_uri == "http://127.0.0.1:5000"


def test_compare_space_gives_every_method_the_same_trials_and_its_official_setting_first(tmp_path):
    """study.equal_trials_per_method through Ray's OptunaSearch: methods take turns by trial number, and each
    method's first trial is its official setting (the enqueued points are trials 0..M-1)."""
    from ray.tune.search.optuna import OptunaSearch

    from drl_tune.methods import REGISTRY

    space = load_space("demo_compare")
    assert set(space.search["method"].values) == set(REGISTRY)
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    methods = plan.balanced_methods
    assert len(plan.points_to_evaluate) == len(methods) == len(REGISTRY)
    search = OptunaSearch(DefineByRun(plan.search, plan.constants, tuple(methods)), metric="val/acc_best",
                          mode="max", points_to_evaluate=plan.points_to_evaluate,
                          sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True))
    configs = []
    for i in range(plan.num_samples):
        config = search.suggest(f"t{i}")
        configs.append(config)
        search.on_trial_complete(f"t{i}", {"val/acc_best": 0.1 * (i % 5), "training_iteration": 1})
    counts = {m: sum(c["method"] == m for c in configs) for m in methods}
    assert counts == {m: plan.num_samples // len(methods) for m in methods}
    for m, point in zip(methods, plan.points_to_evaluate, strict=True):
        first = next(c for c in configs if c["method"] == m)
        flat = {k: v for k, v in make_config(first).to_flat().items() if k in point}
        assert flat == point, m
        searched = {p.key: p.method for p in plan.search}
        sampled = {searched[k] for k in flatten(first) if searched.get(k)}
        assert sampled <= {m}  # a trial samples only its own method's keys
    assert plan.points_to_evaluate[2] == {"method": "ogm_ge", "lr": 0.01, "ogm_ge.alpha": 0.1}


def test_equal_trials_needs_a_multiple_of_the_methods(tmp_path):
    text = GOOD.replace("study: {num_samples: 6,", "study: {num_samples: 5, equal_trials_per_method: true,")
    with pytest.raises(SpaceError, match="multiple of the 2 searched methods"):
        load_space(str(write(tmp_path, text)))
    from drl_tune.methods import REGISTRY

    space = load_space("demo_compare")
    with pytest.raises(ConfigError, match=f"multiple of the {len(REGISTRY)} methods"):
        build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None, num_samples=10)


def test_equal_budgets_are_the_default_whenever_method_is_searched(tmp_path, capsys):
    """Every shipped space that searches the method gives each method the same number of search trials; a space
    opts out with study.equal_trials_per_method: false, and the plan says which applies."""
    for name in SHIPPED + ["avdigits"]:
        space = load_space(name)
        plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
        assert space.equal_budgets and sorted(plan.balanced_methods) == sorted(space.search["method"].values), name
        assert plan.num_samples % len(plan.balanced_methods) == 0
        text = plan.describe()
        assert f"equal budgets: {', '.join(plan.balanced_methods)} in turn" in text, name
        assert "shared keys, one range for every method: lr" in text, name
    space = load_space(str(write(tmp_path, GOOD)))  # no study.equal_trials_per_method: on by default
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    assert plan.balanced_methods == ["drl", "joint"]
    assert "shared keys, one range for every method: lr, batch_size, momentum" in plan.describe()
    with pytest.raises(ConfigError, match=r"--num-samples 5 must be a multiple of the 2 methods .* use 4 or 6"):
        build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None, num_samples=5)
    fixed = build_plan(space, overrides={"method": "joint"}, name="t", storage=tmp_path, mlflow_uri=None,
                       num_samples=5)  # one method: nothing to balance
    assert fixed.balanced_methods == [] and "budgets:" not in fixed.describe() and "UNEQUAL" not in fixed.describe()
    text = GOOD.replace("study: {num_samples: 6,", "study: {num_samples: 5, equal_trials_per_method: false,")
    opted_out = load_space(str(write(tmp_path, text, "out.yaml")))
    plan = build_plan(opted_out, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    assert not opted_out.equal_budgets and plan.balanced_methods == []
    assert "UNEQUAL budgets: the sampler draws the method" in plan.describe()
    with pytest.raises(SpaceError, match=r"num_samples' \(5\) must be a multiple .*equal_trials_per_method: false"):
        load_space(str(write(tmp_path, GOOD.replace("num_samples: 6", "num_samples: 5"), "odd.yaml")))


def test_searcher_random_or_tpe(tmp_path):
    from drl_tune.study.plan import Plan
    from drl_tune.study.tune import make_sampler

    space = load_space(str(write(tmp_path, GOOD)))
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    assert plan.searcher == "tpe" and "Optuna TPE (adaptive), seed 0" in plan.describe()
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None, searcher="random")
    assert "Optuna random sampling (i.i.d. draws), seed 0" in plan.describe()
    assert Plan.from_json(plan.to_json()).searcher == "random"
    old = json.loads(plan.to_json())
    del old["searcher"]  # a plan written before the choice existed was TPE's
    assert Plan.from_json(json.dumps(old)).searcher == "tpe"
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    text = GOOD.replace("study: {num_samples: 6,", "study: {num_samples: 6, searcher: random,")
    assert load_space(str(write(tmp_path, text, "r.yaml"))).study.searcher == "random"
    with pytest.raises(SpaceError, match="'study.searcher' must be one of tpe, random, nsga2, got 'grid'"):
        load_space(str(write(tmp_path, GOOD.replace("study: {num_samples: 6,",
                                                    "study: {num_samples: 6, searcher: grid,"), "g.yaml")))
    # random draws with the round robin: equal trials per method, each drawing only its own keys
    define = DefineByRun(plan.search, plan.constants, tuple(plan.balanced_methods))
    study = optuna.create_study(sampler=make_sampler("random", 1), direction="maximize")
    methods = []
    for _ in range(10):
        trial = study.ask()
        methods.append(define(trial)["method"])
        assert all(not k.startswith("drl.") or methods[-1] == "drl" for k in trial.params)
        study.tell(trial, 0.5)
    assert methods == ["drl", "joint"] * 5


def test_distributions_are_typed_and_plans_of_the_old_shape_still_load(tmp_path):
    import pickle

    from drl_tune.study.params import Choice, IntRange, LogUniform, Param, Uniform
    from drl_tune.study.plan import Plan

    plan = build_plan(load_space("demo"), overrides={}, name="t", storage=tmp_path, mlflow_uri="x")
    kinds = {type(p) for p in plan.search}
    assert Choice in kinds and kinds <= {Choice, IntRange, LogUniform, Uniform}
    again = Plan.from_json(plan.to_json())
    assert again.search == plan.search and again.scheduler == plan.scheduler
    # the file keeps the shape plans were written in before the distributions were classes (drl_tune.study/1)
    raw = json.loads(plan.to_json())
    assert all(set(p) == {"key", "kind", "low", "high", "step", "values", "method"} for p in raw["search"])
    old = {"key": "drl.lam", "kind": "uniform", "low": 0.5, "high": 4.0, "step": None, "values": [],
           "method": "drl"}
    assert Param.from_dict(old) == Uniform("drl.lam", low=0.5, high=4.0, method="drl")
    # a Tune searcher pickled before the change holds Param(key, kind, ...) objects: they come back typed
    legacy = object.__new__(Param)
    legacy.__dict__.update({**old, "key": "epochs", "kind": "int", "low": 2, "high": 10, "step": 2, "method": None})
    restored = pickle.loads(pickle.dumps(legacy))
    assert type(restored) is IntRange and restored.contains(4) and not restored.contains(5)
    assert pickle.loads(pickle.dumps(restored)) == restored
    # and the live table it pickled as a callback is still found under its old name, once a study folder is read
    import io

    from drl_tune import compat
    from drl_tune.study import tables

    compat.install()  # what Plan.read does before a study folder is unpickled

    assert pickle.Unpickler(io.BytesIO(b"")).find_class("drl_tune.study", "ProgressTable") is tables.ProgressTable


def test_plan_lists_the_fixed_keys_of_its_methods_and_rounds_its_first_trials(tmp_path):
    """A method's own fixed keys are listed when the study trains it (searched or fixed ``method``), though at
    their defaults; the first trials read to 4 significant digits, the plan file keeps every digit."""
    space = load_space(str(write(tmp_path, GOOD.replace("drl.lam: 3.0", "drl.lam: 4.433541515048307"))))
    plan = build_plan(space, overrides={}, name="t", storage=tmp_path, mlflow_uri=None)
    text = plan.describe()
    first = "first drl trial (official setting): method=drl, lr=0.01, batch_size=64, momentum=0.9, drl.lam=4.434,"
    assert first in text
    assert "4.43354" not in text and json.loads(plan.to_json())["points_to_evaluate"][0]["drl.lam"] == 4.433541515048307
    fixed = text.split("\n  fixed:\n")[1]
    assert "    drl.kmeans_backend " in fixed and "    perf.bf16 " not in fixed
    only_drl = build_plan(space, overrides={"method": "drl"}, name="t", storage=tmp_path, mlflow_uri=None)
    assert only_drl.study_methods() == {"drl"}
    fixed = only_drl.describe().split("\n  fixed:\n")[1]
    assert "    method                           drl\n" in fixed and "    drl.kmeans_backend " in fixed
    only_joint = build_plan(space, overrides={"method": "joint"}, name="t", storage=tmp_path, mlflow_uri=None)
    assert only_joint.study_methods() == {"joint"} and "drl." not in only_joint.describe().split("\n  fixed:\n")[1]
    assert "    drl.kmeans_backend " in only_drl.describe(show_all=True)
    assert "    perf.bf16                        True" in only_drl.describe(show_all=True)
