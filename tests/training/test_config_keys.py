"""The configuration keys are documented once (drl_tune/training/config_keys.py): the docs' table and the --help
listing of drl_tune.train and drl_tune.run are generated from it, and every key of the typed configuration has a
meaning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drl_tune import driver, run, train
from drl_tune.ground.errors import ConfigError
from drl_tune.training import config_keys
from drl_tune.training.config import make_config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_key_has_exactly_one_meaning():
    listed = [k for _, found, _ in config_keys.rows() for k, _ in found]
    assert sorted(listed) == sorted(make_config({}).to_flat())
    assert len(listed) == len(set(listed))


def test_a_stale_or_missing_entry_fails(monkeypatch):
    monkeypatch.setattr(config_keys, "KEY_DOCS", [*config_keys.KEY_DOCS, ("drl.gone", "a key that was removed")])
    with pytest.raises(KeyError, match="drl.gone"):
        config_keys.rows()
    monkeypatch.setattr(config_keys, "KEY_DOCS", [d for d in config_keys.KEY_DOCS[:-1] if d[0] != "eval.batch_size"])
    with pytest.raises(KeyError, match="eval.batch_size"):
        config_keys.rows()


def test_a_method_key_is_described_by_its_own_params_field(monkeypatch):
    """A method's keys come from its file: each ``Params`` field's ``param(default, meaning, ...)``; a field declared
    without a meaning is named, with where to add it."""
    import dataclasses

    from drl_tune.methods import REGISTRY
    from drl_tune.methods.mmpareto import MMPareto

    rows = dict(config_keys.method_docs())
    assert rows["mmpareto.gamma"].startswith("γ that scales")
    assert set(rows) == {f"{n}.{f.name}" for n, m in REGISTRY.items() for f in dataclasses.fields(m.Params)}

    @dataclasses.dataclass
    class Bare:
        gamma: float = 1.5

    monkeypatch.setattr(MMPareto, "Params", Bare)
    with pytest.raises(KeyError, match=r"mmpareto.gamma has no description: declare it with param\(default"):
        config_keys.rows()


def test_a_choice_key_is_checked_and_shown_with_its_choices():
    assert "| `cml.ce` | chain | chain / full |" in config_keys.markdown_table()
    with pytest.raises(ConfigError, match="cml.ce must be one of chain, full, got 'half'"):
        make_config({"cml.ce": "half"})


def test_the_docs_table_is_the_generated_one():
    assert config_keys.markdown_table() in PAGE.read_text(), (
        "docs/configuration.md's table differs from drl_tune/training/config_keys.py; paste the output of "
        "python -m drl_tune.training.config_keys --markdown")
    assert "| `drl.lam` | 3 | >= 0 | λ of the paper" in config_keys.markdown_table()  # with its domain


@pytest.mark.parametrize("parse", [train.parse_args, run.parse_args], ids=["train", "run"])
def test_help_lists_every_key_with_its_default(parse, capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    assert config_keys.help_text() in out
    flat = " ".join(out.split())  # --help wraps long lines
    for key, value in make_config({}).to_flat().items():
        assert f"{key}={config_keys.format_default(value)}" in flat
    assert "drl.lam=3 λ of the paper" in flat


def test_quiet_libraries_drops_only_the_known_notices(monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    name = "ray._private.authentication.authentication_token_setup"
    logger = logging.getLogger(name)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    notice = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
    try:
        driver.quiet_libraries(verbose=True)
        logger.warning(notice)  # -v: shown
        driver.quiet_libraries(verbose=False)
        logger.warning(notice)  # dropped
        logger.warning("Token authentication is enabled but no authentication token was found")  # a real one
        assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    finally:
        logger.removeHandler(handler)
        for f in [f for f in logger.filters if isinstance(f, driver._DropNotices)]:
            logger.removeFilter(f)
    assert seen == [notice, "Token authentication is enabled but no authentication token was found"]
