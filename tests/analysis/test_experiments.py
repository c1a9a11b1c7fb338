"""The imbalance measurement command runs end to end on a tiny set and prints its table."""

from __future__ import annotations

from drl_tune.experiments.imbalance import main
from tests.conftest import TINY


def test_imbalance_command_prints_the_table(tmp_path, capsys):
    sets = [a for k, v in TINY.items() if k != "epochs" for a in ("--set", f"{k}={v}")]
    code = main(["--seeds", "0", "--epochs", "2", "--runs", "joint", "audio", "visual", "--out", str(tmp_path), *sets])
    assert code == 0
    out = capsys.readouterr().out
    assert "joint probe visual, last epoch" in out and "visual alone probe, last epoch" in out
    assert "late fusion (mean probabilities)" in out
    assert (tmp_path / "joint-s0" / "metrics.jsonl").read_text().count("\n") == 2


def test_imbalance_command_rejects_bad_overrides(capsys):
    assert main(["--set", "drl.lam=-1"]) == 2
    assert "drl.lam" in capsys.readouterr().err


def test_complementarity_on_hand_built_predictions():
    import numpy as np

    from drl_tune.experiments.imbalance import complementarity

    labels = np.array([0, 1, 0, 1])
    # audio right on clips 0, 1; visual right on clips 1, 2; nobody on clip 3
    audio = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    visual = np.array([[0.4, 0.6], [0.45, 0.55], [0.95, 0.05], [0.7, 0.3]])
    c = complementarity((audio, labels), (visual, labels))
    assert c["audio alone"] == 0.5 and c["visual alone"] == 0.5
    assert c["only audio right"] == 0.25 and c["only visual right"] == 0.25
    assert c["oracle (either right)"] == 0.75
    # sums: [1.3, .7] ok, [.65, 1.35] ok, [1.25, .75] ok, [1.3, .7] wrong
    assert c["late fusion (mean probabilities)"] == 0.75
