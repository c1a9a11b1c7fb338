"""Shared fixtures: a tiny synthetic dataset and fast configurations."""

from __future__ import annotations

import os
import tempfile

import pytest

# generated data never lands in the home directory during tests
os.environ.setdefault("DRL_TUNE_DATA", tempfile.mkdtemp(prefix="drl_tune_test_data_"))

from drl_tune.config import SyntheticConfig, make_config  # noqa: E402
from drl_tune.data.synthetic import load_synthetic  # noqa: E402

TINY = {
    "data.synthetic.n_train": 96,
    "data.synthetic.n_val": 48,
    "data.synthetic.n_test": 48,
    "data.synthetic.image_size": 32,
    "model.width": 4,
    "batch_size": 32,
    "epochs": 4,
    "lr": 0.01,
    "threads": 1,
}


@pytest.fixture(scope="session")
def tiny_data():
    cfg = make_config(TINY).data.synthetic
    assert isinstance(cfg, SyntheticConfig)
    return load_synthetic(cfg)


@pytest.fixture
def tiny_config():
    def make(**overrides):
        values = dict(TINY)
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return make_config(values)

    return make
