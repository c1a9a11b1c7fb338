"""The bad-input corpus: every entry is something a user really types or leaves on disk, answered with one
clear message (what, where, what to do), a non-zero exit, no traceback — and nothing already written lost or
changed (the whole working folder is snapshotted before and after).

Add a case: one ``Case(...)`` in ``CASES`` — an id, the command line (``{tmp}`` is the working folder; files
are created by ``setup``), and the words the message must contain. All of them fail before Ray starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from drl_tune import driver
from drl_tune import run as run_cli
from drl_tune import train as train_cli
from drl_tune.data.cache import write_cache
from drl_tune.data.synthetic import Split
from drl_tune.study.plan import PLAN_FILE

GOOD_SPACE = """\
dataset: {name: synthetic, synthetic: {n_train: 16, n_val: 8, n_test: 8, image_size: 16}}
fixed: {threads: 1, epochs: 2}
defaults: {method: joint, lr: 0.01}
search:
  lr: {type: loguniform, low: 0.001, high: 0.1}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 1, seed: 0}
"""


def space_file(text: str, name: str = "space.yaml") -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_text(text)
    return make


def replace_in_space(old: str, new: str) -> Callable[[Path], None]:
    assert old in GOOD_SPACE
    return space_file(GOOD_SPACE.replace(old, new))


def a_cache(damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A small valid prepared 'cremad' cache at {tmp}/cache, then ``damage`` applied to it."""
    def make(tmp: Path) -> None:
        (tmp / "space.yaml").write_text(GOOD_SPACE.replace("name: synthetic,", "name: cremad,"))
        rng = np.random.default_rng(0)
        splits = {s: Split({"audio": rng.standard_normal((8, 1, 16, 16)).astype(np.float16),
                            "visual": rng.integers(0, 255, (8, 1, 3, 16, 16), dtype=np.uint8)},
                           np.arange(8) % 2) for s in ("train", "val", "test")}
        write_cache(tmp / "cache", "cremad", ["a", "b"], {"audio": "spectrogram", "visual": "frames"}, splits)
        if damage:
            damage(tmp / "cache")
    return make


def a_study(plan_text: str | None, extra: dict[str, str] | None = None) -> Callable[[Path], None]:
    """A folder {tmp}/studies/s with ``plan_text`` as its plan file (None: no plan file) and ``extra`` files."""
    def make(tmp: Path) -> None:
        folder = tmp / "studies" / "s"
        folder.mkdir(parents=True)
        if plan_text is not None:
            (folder / PLAN_FILE).write_text(plan_text)
        for name, text in (extra or {}).items():
            (folder / name).write_text(text)
    return make


def truncate(relative: str, keep: int) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[:keep])
    return damage


def edit_manifest(**changes: object) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        manifest.update(changes)
        (root / "manifest.json").write_text(json.dumps(manifest))
    return damage


def a_checkpoint(content: bytes) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / "out").mkdir()
        (tmp / "out" / "checkpoint.pt").write_bytes(content)
    return make


@dataclass
class Case:
    id: str
    argv: list[str]
    must: list[str]  # words the message must contain (the what, the where, the what-to-do)
    setup: Callable[[Path], None] | None = None
    cli: str = "run"  # run | train
    extra: list[str] = field(default_factory=list)


SPACE = ["--space", "{tmp}/space.yaml", "--storage", "{tmp}/studies"]
CACHE_RUN = [*SPACE, "--set", "data.root={tmp}/cache", "--dry-run"]

CASES = [
    # --- command-line flags
    Case("num-samples-zero", [*SPACE, "--num-samples", "0"], ["--num-samples", ">= 1"], space_file(GOOD_SPACE)),
    Case("num-samples-not-a-number", [*SPACE, "--num-samples", "many"], ["--num-samples", "many"],
         space_file(GOOD_SPACE)),
    Case("cpus-negative", [*SPACE, "--cpus-per-trial", "-1"],
         ["--cpus-per-trial", "must be a finite number > 0, got -1"], space_file(GOOD_SPACE)),
    Case("name-with-slash", [*SPACE, "--name", "../escape"], ["--name", "plain folder name"], space_file(GOOD_SPACE)),
    Case("no-space", ["--storage", "{tmp}/studies"], ["--space is required"]),
    Case("space-missing", ["--space", "{tmp}/nowhere.yaml"], ["nowhere.yaml", "does not exist"]),
    Case("space-unknown-name", ["--space", "no_such_space"], ["no_such_space"]),
    Case("storage-is-a-file", ["--space", "{tmp}/space.yaml", "--storage", "{tmp}/space.yaml", "--name", "x"],
         ["--storage", "space.yaml", "not a folder"], space_file(GOOD_SPACE)),
    Case("mlflow-relative-sqlite", [*SPACE, "--mlflow-uri", "sqlite:///rel/mlflow.db"],
         ["--mlflow-uri", "absolute"], space_file(GOOD_SPACE)),
    Case("study-exists", [*SPACE, "--name", "s"], ["exists", "--resume --name s"],
         lambda tmp: (space_file(GOOD_SPACE)(tmp), a_study(None)(tmp), _valid_plan(tmp))),
    # --- space files
    Case("space-is-a-list", ["--space", "{tmp}/space.yaml"], ["space.yaml", "expected a mapping"],
         space_file("- dataset: {name: synthetic}\n- search: {}\n")),
    Case("space-unclosed-bracket", ["--space", "{tmp}/space.yaml"], ["space.yaml", "not valid YAML"],
         space_file("dataset: {name: synthetic\nsearch:\n  lr: [0.1, 0.2\n")),
    Case("space-empty", ["--space", "{tmp}/space.yaml"], ["space.yaml", "expected a mapping"], space_file("")),
    Case("space-wrong-type", ["--space", "{tmp}/space.yaml"], ["space.yaml", "num_samples", "integer"],
         replace_in_space("num_samples: 2", "num_samples: many")),
    Case("space-unknown-distribution", ["--space", "{tmp}/space.yaml"], ["search.lr", "gaussian", "allowed"],
         replace_in_space("type: loguniform", "type: gaussian")),
    Case("space-low-above-high", ["--space", "{tmp}/space.yaml"], ["search.lr", "low", "high"],
         replace_in_space("low: 0.001, high: 0.1", "low: 0.1, high: 0.001")),
    Case("space-official-outside-range", ["--space", "{tmp}/space.yaml"], ["lr=0.5", "outside", "search.lr"],
         replace_in_space("lr: 0.01}", "lr: 0.5}")),
    Case("space-unknown-top-level", ["--space", "{tmp}/space.yaml"], ["space.yaml", "serach", "allowed"],
         replace_in_space("search:", "serach:")),
    Case("space-unknown-config-key", ["--space", "{tmp}/space.yaml"], ["lrr"],
         replace_in_space("epochs: 2}", "epochs: 2, lrr: 0.1}")),
    Case("space-loguniform-nonpositive", ["--space", "{tmp}/space.yaml"], ["search.lr", "low > 0"],
         replace_in_space("low: 0.001", "low: 0")),
    Case("space-empty-choice", ["--space", "{tmp}/space.yaml"], ["search.lr", "non-empty list"],
         replace_in_space("{type: loguniform, low: 0.001, high: 0.1}", "{type: choice, values: []}")),
    # --- --set values
    Case("set-wrong-type", [*SPACE, "--set", "epochs=ten"], ["epochs", "ten"], space_file(GOOD_SPACE)),
    Case("set-unknown-key", [*SPACE, "--set", "epoch=3"], ["epoch"], space_file(GOOD_SPACE)),
    Case("set-without-equals", [*SPACE, "--set", "lr"], ["--set", "key=value", "lr"], space_file(GOOD_SPACE)),
    Case("set-unknown-method", [*SPACE, "--set", "method=magic"], ["magic"], space_file(GOOD_SPACE)),
    Case("set-out-of-range", [*SPACE, "--set", "data.synthetic.n_train=0"], ["n_train", ">= 1"],
         space_file(GOOD_SPACE)),
    # --- data folders and cache files
    Case("data-root-missing", [*SPACE, "--set", "data.root={tmp}/nothing", "--dry-run"],
         ["not prepared", "nothing", "drl_tune.data.prepare"],
         space_file(GOOD_SPACE.replace("name: synthetic,", "name: cremad,"))),
    Case("cache-manifest-garbage", CACHE_RUN, ["manifest", "prepare"],
         a_cache(lambda root: (root / "manifest.json").write_text("{not json"))),
    Case("cache-wrong-version", CACHE_RUN, ["version", "--force"], a_cache(edit_manifest(version=99))),
    Case("cache-array-truncated", CACHE_RUN, ["audio.npy", "damaged"], a_cache(truncate("val/audio.npy", 100))),
    Case("cache-length-mismatch", CACHE_RUN, ["rows", "manifest"],
         a_cache(edit_manifest(splits={"train": 9, "val": 8, "test": 8}))),
    Case("cache-other-dataset", [*SPACE, "--set", "data.root={tmp}/cache", "--set", "data.name=ucf101", "--dry-run"],
         ["cremad", "not 'ucf101'"], a_cache()),
    # --- --resume of folders that are not studies of this tool
    Case("resume-missing-folder", ["--resume", "--storage", "{tmp}/studies", "--name", "gone"],
         ["--resume", "gone", "not a study"]),
    Case("resume-not-a-study", ["--resume", "--storage", "{tmp}/studies", "--name", "s"],
         ["--resume", "not a study", PLAN_FILE], a_study(None, {"notes.txt": "my thesis"})),
    Case("resume-plan-garbage", ["--resume", "--storage", "{tmp}/studies", "--name", "s"],
         [PLAN_FILE, "not a drl_tune study plan"], a_study("{{{ not json")),
    Case("resume-plan-foreign-json", ["--resume", "--storage", "{tmp}/studies", "--name", "s"],
         [PLAN_FILE, "not a drl_tune study plan"], a_study(json.dumps({"name": "s", "trials": [1, 2]}))),
    Case("resume-plan-is-a-list", ["--resume", "--storage", "{tmp}/studies", "--name", "s"],
         [PLAN_FILE, "not a drl_tune study plan"], a_study("[1, 2, 3]")),
    Case("resume-with-set", ["--resume", "--storage", "{tmp}/studies", "--name", "s", "--set", "lr=0.1"],
         ["--resume", "--set"]),
    Case("resume-and-dry-run", ["--resume", "--dry-run", "--storage", "{tmp}/studies"], ["--resume", "--dry-run"]),
    Case("resume-nothing-there", ["--resume", "--storage", "{tmp}/studies"], ["no study found", "--name"]),
    # --- drl_tune.train
    Case("train-resume-without-checkpoint", ["--space", "{tmp}/space.yaml", "--out", "{tmp}/out", "--resume"],
         ["checkpoint.pt", "--resume"], space_file(GOOD_SPACE), cli="train"),
    Case("train-resume-damaged-checkpoint", ["--space", "{tmp}/space.yaml", "--out", "{tmp}/out", "--resume"],
         ["checkpoint.pt", "not a loadable checkpoint"],
         lambda tmp: (space_file(GOOD_SPACE)(tmp), a_checkpoint(b"PK\x03\x04 half a file")(tmp)), cli="train"),
]


def _valid_plan(tmp: Path) -> None:
    """A real plan file (dry run of the good space, then saved) for cases that need an existing study."""
    args = run_cli.parse_args(["--space", str(tmp / "space.yaml"), "--storage", str(tmp / "studies"), "--name", "s"])
    (tmp / "studies" / "s" / PLAN_FILE).unlink(missing_ok=True)
    run_cli.plan_from_args(args).save()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return out


def run_main(case: Case, tmp: Path) -> int:
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    main = run_cli.main if case.cli == "run" else train_cli.main
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse
        return int(exit_.code or 0)


def test_corpus_is_big_and_distinct():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(driver, "start_ray", lambda address: pytest.fail("Ray must not start for a bad input"))
    monkeypatch.setenv("DRL_TUNE_CREMAD_ROOT", str(tmp_path / "no_default_cache"))
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    code = run_main(case, tmp_path)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    message = next((line for line in lines if "error:" in line), "")
    assert message, err
    # argparse adds a usage line; the project's own messages may carry one indented command to run
    assert len([line for line in lines if not line.startswith((" ", "usage:"))]) <= 2, err
    text = " ".join(lines)
    for word in case.must:
        assert word.replace("{tmp}", str(tmp_path)) in text, (word, err)
    assert snapshot(tmp_path) == before, "a bad input changed files that were already there"
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and str(p.relative_to(tmp_path)) not in before], \
        "a bad input left new files behind"
    assert os.getcwd() == str(tmp_path)
