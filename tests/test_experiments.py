"""The imbalance measurement command runs end to end on a tiny set and prints its table."""

from __future__ import annotations

from drl_tune.experiments.imbalance import main
from tests.conftest import TINY


def test_imbalance_command_prints_the_table(tmp_path, capsys):
    sets = [a for k, v in TINY.items() if k != "epochs" for a in ("--set", f"{k}={v}")]
    code = main(["--seeds", "0", "--epochs", "2", "--runs", "joint", "visual", "--out", str(tmp_path), *sets])
    assert code == 0
    out = capsys.readouterr().out
    assert "joint probe visual, last epoch" in out and "visual alone probe, last epoch" in out
    assert (tmp_path / "joint-s0" / "metrics.jsonl").read_text().count("\n") == 2


def test_imbalance_command_rejects_bad_overrides(capsys):
    assert main(["--set", "drl.alpha=-1"]) == 2
    assert "drl.alpha" in capsys.readouterr().err
