"""A researcher's own method from a file outside the package: registered beside the built-in ones, described and
checked from its own ``Params``, trained by ``python -m drl_tune.train``; a bad file is one clear line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods import user as user_methods
from drl_tune.training.config import make_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_method.py"

GOOD = '''
from dataclasses import dataclass

import torch.nn.functional as F

from drl_tune.ground.domains import param
from drl_tune.methods.base import Method


@dataclass
class SmoothParams:
    eps: float = param(0.1, "label smoothing of the fused cross-entropy", ge=0, lt=1)


class Smooth(Method):
    name = "smooth_ce"
    Params = SmoothParams

    def loss(self, outputs, labels):
        return F.cross_entropy(outputs.logits, labels, label_smoothing=self.params.eps)
'''


@pytest.fixture
def registry():
    """The registry as it was: a test that registers a method leaves no trace for the others."""
    before, registered = dict(REGISTRY), dict(user_methods._REGISTERED)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(before)
    user_methods._REGISTERED.clear()
    user_methods._REGISTERED.update(registered)


def write(tmp_path: Path, text: str, name: str = "mine.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_registers_its_method_with_its_keys_described_and_checked(registry, tmp_path):
    from drl_tune.training import config_keys

    sources = user_methods.use_methods([str(write(tmp_path, GOOD))])
    assert "smooth_ce" in registry and sources[0].origin == str((tmp_path / "mine.py").resolve())
    config = make_config({"method": "smooth_ce", "smooth_ce.eps": "0.2"})
    assert config.params.eps == 0.2
    with pytest.raises(ConfigError, match=r"smooth_ce.eps must be a number in \[0, 1\), got 1.5"):
        make_config({"method": "smooth_ce", "smooth_ce.eps": 1.5})
    assert "| `smooth_ce.eps` | 0.1 | [0, 1) | label smoothing of the fused cross-entropy |" in \
        config_keys.markdown_table()
    # the same text again (a trial on a reused worker, a resume) is a no-op; another text under the name is refused
    assert user_methods.register_source(sources[0]) == ["smooth_ce"]
    changed = user_methods.MethodsSource(sources[0].origin, sources[0].source.replace("0.1,", "0.3,"))
    with pytest.raises(ConfigError, match="method name 'smooth_ce' is already registered"):
        user_methods.register_source(changed)


def test_the_shipped_example_registers(registry):
    assert user_methods.use_methods([str(EXAMPLE)])[0].sha256
    assert make_config({"method": "aux_heads"}).params.weight == 0.5


@pytest.mark.parametrize(("text", "message"), [
    ("def broken(:\n    pass\n", r"mine.py line 1: syntax error: "),
    ("import torch\nx = 1\n", r"mine.py defines no Method subclass"),
    (GOOD.replace('name = "smooth_ce"', 'name = "drl"'), r"method name 'drl' is a built-in method's"),
    (GOOD.replace('name = "smooth_ce"', 'name = "Smooth CE"'), r"Smooth.name must be a lower-case identifier"),
    (GOOD.replace('param(0.1, "label smoothing of the fused cross-entropy", ge=0, lt=1)', '0.1'),
     r"smooth_ce.eps is declared without param\(default"),
    (GOOD.replace(', ge=0, lt=1)', ')'), r"smooth_ce.eps is a number without a range"),
    ("raise RuntimeError('no GPU here')\n", r"mine.py line 1: running it failed: RuntimeError: no GPU here"),
])
def test_a_bad_method_file_is_one_clear_line(registry, tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        user_methods.use_methods([str(write(tmp_path, text))])
    assert "\n" not in str(err.value)
    assert set(registry) == set(dict(REGISTRY))  # nothing half-registered


def test_a_missing_file_is_named(registry, tmp_path):
    with pytest.raises(ConfigError, match=r"--methods-from .*nope.py: no such file"):
        user_methods.use_methods([str(tmp_path / "nope.py")])


def test_a_method_from_a_file_trains_through_the_train_command(tmp_path):
    """Written outside the package, named on the command line: two epochs of ``python -m drl_tune.train``."""
    path = write(tmp_path, GOOD)
    done = subprocess.run([sys.executable, "-m", "drl_tune.train", "--methods-from", str(path), "--set",
                           "method=smooth_ce", "--set", "smooth_ce.eps=0.05", "--set", "epochs=2", "--set", "threads=1",
                           "--set", "data.synthetic.n_train=120", "--set", "data.synthetic.n_val=60", "--set",
                           "data.synthetic.n_test=60", "--set", "model.width=4", "--out", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "done: best val acc" in done.stdout
    assert '"smooth_ce.eps": 0.05' in (tmp_path / "out" / "config.json").read_text()


def test_a_bad_method_file_on_the_command_line_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "class X:\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "drl_tune.train", "--methods-from", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path.resolve()} defines no Method subclass (class "
                                                f"MyMethod(Method): name = \"mine\"; Params = ...); see "
                                                f"docs/add-your-method.md"]


STUDY_SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, lr: 0.05, epochs: 1}
defaults: {method: joint}
search:
  method: {type: choice, values: [joint, smooth_ce]}
  smooth_ce.eps: {type: uniform, low: 0.0, high: 0.3}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 1, seed: 0, max_failures: 0}
resources: {cpus_per_trial: 1}
"""


@pytest.mark.slow
def test_a_method_from_a_file_runs_in_a_study_and_its_recorded_text_confirms_it(tmp_path):
    """A two-trial study of joint vs a method written in a file outside the package (Ray trials in their own
    processes register it from the plan's record); then the file is deleted and ``confirm`` re-trains that method
    from the text the study recorded."""
    import json

    from tests.e2e.test_study_e2e import tiny_sets

    method_file = write(tmp_path, GOOD)
    space = tmp_path / "mine.yaml"
    space.write_text(STUDY_SPACE)
    common = ["--storage", str(tmp_path / "studies"), "--name", "s", "--progress-interval", "600"]
    done = subprocess.run([sys.executable, "-m", "drl_tune.run", "--space", str(space), "--methods-from",
                           str(method_file), "--confirm-seeds", "0", "--no-report", *common, *tiny_sets()],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((tmp_path / "studies" / "s" / "drl_tune_study.json").read_text())
    assert plan["methods"][0]["source"] == GOOD and plan["methods"][0]["origin"] == str(method_file.resolve())
    assert "smooth_ce" in done.stdout and "your method file:" in done.stdout
    method_file.unlink()  # the study holds the text: nothing reads the file again
    confirm = subprocess.run([sys.executable, "-m", "drl_tune.confirm", "--name", "s", "--storage",
                              str(tmp_path / "studies"), "--seeds", "2", "--progress-interval", "600"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert confirm.returncode == 0, confirm.stdout[-3000:] + confirm.stderr[-3000:]
    answer = json.loads((tmp_path / "studies" / "s" / "answer.json").read_text())
    assert "smooth_ce" in json.dumps(answer)


def test_the_guides_comparison_space_plans_with_the_example_method(tmp_path):
    space = str(ROOT / "examples" / "my_compare.yaml")
    done = subprocess.run([sys.executable, "-m", "drl_tune.run", "--space", space,
                           "--methods-from", str(EXAMPLE), "--storage", str(tmp_path), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "equal budgets: joint, drl, aux_heads in turn, 4 search trials each" in done.stdout
    assert "aux_heads.weight                 uniform [0, 2]   (only when method=aux_heads)" in done.stdout
    without = subprocess.run([sys.executable, "-m", "drl_tune.run", "--space", space, "--storage", str(tmp_path),
                              "--dry-run"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert without.returncode == 2 and "aux_heads" in without.stderr  # the space names a method nobody registered


def test_a_resume_takes_only_the_method_files_it_recorded(tmp_path):
    source = user_methods.read_methods_file(write(tmp_path, GOOD))
    user_methods.check_resumed_files([source.origin], [source.to_dict()], "study")  # the same text: accepted
    changed = write(tmp_path, GOOD.replace("0.1,", "0.2,"), "changed.py")
    with pytest.raises(ConfigError, match=r"--methods-from .*changed.py is not a file the study recorded"):
        user_methods.check_resumed_files([str(changed)], [source.to_dict()], "study")
