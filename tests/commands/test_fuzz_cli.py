"""Property-based fuzzing of the command lines (Hypothesis): bad numbers in ``--set`` and in the flags, and output
folders that cannot be written, each stop with one line naming the input — exit 2, no traceback, no file left.

Every generated input is bad by construction, from what the key *means* (written here, not read from the project's
declared domains): text that is no number, ``nan``/``inf``, a negative count or rate, zero where zero means nothing,
a fraction of an integer, a value past an upper bound. The run command is fuzzed in ``--dry-run`` (the checks all
happen before anything would start), the train command for real (it stops before building the engine).

Profiles: ``ci`` (the default; the case count and time are printed) and ``thorough`` for a local run
(``DRL_TUNE_FUZZ=thorough python -m pytest tests/commands/test_fuzz_cli.py -s``).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drl_tune import run as run_cli
from drl_tune import train as train_cli

settings.register_profile("ci", max_examples=400, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("DRL_TUNE_FUZZ", "ci")
TRAIN_EXAMPLES = {"ci": 100, "thorough": 1000}[PROFILE]
TIME_BOUND_S = 10.0  # per command line: every check happens before any work

# what each key means, as a user reads the docs: (key, kind, accepts negatives, has an upper bound)
FLOAT_KEYS = ["lr", "momentum", "weight_decay", "drl.lam", "opm.q_base", "ogm_ge.alpha",
              "data.synthetic.visual_noise", "inforeg.threshold"]
INT_KEYS = ["epochs", "batch_size", "seed", "threads", "model.width", "eval.batch_size", "drl.diagnosis_interval",
            "drl.max_reinits", "data.synthetic.n_train"]
UPPER_BOUNDED = {"momentum": "1", "opm.q_base": "1.5", "seed": str(2**32), "threads": "100000"}
POSITIVE_ONLY = {"lr", "ogm_ge.alpha", "epochs", "batch_size", "model.width", "eval.batch_size",
                 "drl.diagnosis_interval", "data.synthetic.n_train"}  # zero means nothing here


def _not_a_number(text: str) -> bool:
    for parse in (float, int):
        with contextlib.suppress(ValueError, OverflowError):
            parse(text)
            return False
    return True


NON_FINITE = st.sampled_from(["nan", "NaN", "inf", "-inf", "+inf", "Infinity", "-Infinity", "1e400", "-1e999"])
TEXT = st.text(min_size=0, max_size=12).filter(lambda t: _not_a_number(t.strip()) and "\x00" not in t)
NEGATIVE = st.one_of(st.integers(max_value=-1, min_value=-10**12).map(str),
                     st.floats(max_value=-1e-9, min_value=-1e30, allow_nan=False).map(repr))


@st.composite
def bad_set(draw: st.DrawFn) -> tuple[str, str]:
    """(key, value) with a value the key cannot take."""
    key = draw(st.sampled_from(FLOAT_KEYS + INT_KEYS))
    choices = [NON_FINITE, TEXT, NEGATIVE]
    if key in INT_KEYS:
        choices.append(st.sampled_from(["2.5", "0.1", "1e-3", "3.75"]))  # not a whole number
    if key in POSITIVE_ONLY:
        choices.append(st.sampled_from(["0", "0.0", "-0"]))
    if key in UPPER_BOUNDED:
        choices.append(st.just(UPPER_BOUNDED[key]))
    return key, draw(st.one_of(choices))


FLAGS = {  # flag -> the strategies of values it cannot take
    "--num-samples": [TEXT, NON_FINITE, NEGATIVE, st.just("0"), st.just("2.5")],
    "--max-concurrent": [TEXT, NON_FINITE, NEGATIVE, st.just("0")],
    "--confirm-seeds": [TEXT, NON_FINITE, NEGATIVE, st.just("1.5")],
    "--confirm-top-k": [TEXT, NEGATIVE, st.just("0")],
    "--cpus-per-trial": [TEXT, NON_FINITE, NEGATIVE, st.sampled_from(["0", "0.0", "-0.0"])],
    "--gpus-per-trial": [TEXT, NON_FINITE, NEGATIVE, st.sampled_from(["1.5", "2.25", "7.9"])],
    "--seed": [TEXT, NEGATIVE, st.just(str(2**32)), st.just("1.5")],
    "--progress-interval": [TEXT, NON_FINITE, NEGATIVE],
}


@st.composite
def bad_flag(draw: st.DrawFn) -> tuple[str, str]:
    flag = draw(st.sampled_from(sorted(FLAGS)))
    return flag, draw(st.one_of(FLAGS[flag]))


@st.composite
def bad_storage(draw: st.DrawFn) -> str:
    """A --storage that cannot be created: under /proc (virtual) or under a file; {tmp} is the example's folder."""
    name = draw(st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=8))
    return draw(st.sampled_from([f"/proc/drl_tune_fuzz_{name}/studies", f"{{tmp}}/a_file/{name}"]))


KNOWN_KEYS = None  # filled lazily: the demo's flattened configuration keys


def _unknown(key: str) -> bool:
    global KNOWN_KEYS
    if KNOWN_KEYS is None:
        from drl_tune.study.spaces import load_space

        KNOWN_KEYS = set(load_space("demo").config().to_flat())
    head = key.split(".")[0]
    return key not in KNOWN_KEYS and head not in {k.split(".")[0] for k in KNOWN_KEYS}


UNKNOWN_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé_.", min_size=1, max_size=14).filter(
    lambda k: not k.startswith(".") and not k.endswith(".") and ".." not in k and _unknown(k))

CASE = st.one_of(bad_set().map(lambda kv: ("set", kv)), bad_flag().map(lambda kv: ("flag", kv)),
                 bad_storage().map(lambda path: ("storage", path)),
                 st.tuples(UNKNOWN_KEY, st.sampled_from(["1", "0.5", "x"])).map(lambda kv: ("set", kv)))


def call(main, argv: list[str]) -> tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 2
    return int(code), out.getvalue() + err.getvalue(), time.monotonic() - start


def assert_one_clean_line(code: int, text: str, seconds: float, names: str) -> None:
    assert code == 2, (code, text)  # 1 would be the guard: an error nobody foresaw (a defect)
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "usage:"))]
    assert len(lines) == 1 and "error:" in lines[0], text
    assert names in lines[0], (names, lines[0])
    assert seconds < TIME_BOUND_S, seconds


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_fuzz_run_command_line(capsys):
    seen = []

    @settings(settings.get_profile(PROFILE))
    @given(case=CASE)
    def one(case):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "a_file").write_text("not a folder")
            before = files_under(folder)
            argv = ["--space", "demo", "--dry-run", "--storage", str(folder / "studies")]
            kind, value = case
            if kind == "set":
                key, text = value
                argv += ["--set", f"{key}={text}"]
                names = key
            elif kind == "flag":
                flag, text = value
                argv += [f"{flag}={text}"]  # '=' so that a value starting with '-' is not read as a flag
                names = flag
            else:
                storage = value.replace("{tmp}", tmp)
                argv[argv.index("--storage") + 1] = storage
                names = f"--storage {storage}"
            code, text, seconds = call(run_cli.main, argv)
            assert_one_clean_line(code, text, seconds, names)
            assert files_under(folder) == before, "a bad input left files behind"
            seen.append(seconds)

    start = time.monotonic()
    one()
    with capsys.disabled():
        print(f"\nfuzz (run, profile {PROFILE}): {len(seen)} command lines in {time.monotonic() - start:.1f} s, "
              f"slowest {max(seen):.2f} s")
    assert len(seen) >= min(100, settings.get_profile(PROFILE).max_examples) * 0.8


def test_fuzz_train_set_values(capsys, monkeypatch):
    seen = []

    @settings(settings.get_profile(PROFILE), max_examples=TRAIN_EXAMPLES)
    @given(kv=bad_set())
    def one(kv):
        key, text = kv
        with tempfile.TemporaryDirectory() as tmp:
            code, out, seconds = call(train_cli.main, ["--space", "demo", "--set", f"{key}={text}",
                                                       "--out", f"{tmp}/out"])
            assert_one_clean_line(code, out, seconds, key)
            assert files_under(Path(tmp)) == [], "a bad input left files behind"
            seen.append(seconds)

    start = time.monotonic()
    one()
    with capsys.disabled():
        print(f"\nfuzz (train, profile {PROFILE}): {len(seen)} command lines in {time.monotonic() - start:.1f} s")
    assert len(seen) >= TRAIN_EXAMPLES * 0.8


@pytest.mark.parametrize(("argv", "line"), [  # the three classes an outside corpus found, each one line now
    (["--cpus-per-trial", "0"], "argument --cpus-per-trial: must be a finite number > 0, got 0"),
    (["--set", "lr=nan"], "error: lr must be a finite number > 0, got nan"),
    (["--storage", "/proc/drl_tune_x/studies"], "error: --storage /proc/drl_tune_x/studies: cannot be created or "
                                                 "written under /proc"),
])
def test_the_outside_corpus_classes(argv, line, tmp_path):
    base = ["--space", "demo", "--dry-run", "--storage", str(tmp_path / "s")]
    code, text, _ = call(run_cli.main, base + argv)
    assert code == 2 and line in text and "Traceback" not in text
