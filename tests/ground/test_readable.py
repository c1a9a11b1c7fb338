"""Numbers as people read them: 4 significant digits for a float, everything else as it is."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drl_tune.ground.readable import settings, sig4
from drl_tune.study.tables import format_cell, render_table


@pytest.mark.parametrize(("value", "text"), [
    (4.433541515048307, "4.434"), (0.0027741234, "0.002774"), (0.01, "0.01"), (1.5e-05, "1.5e-05"),
    (0.85678, "0.8568"), (3.0, "3"), (123.456, "123.5"), (-2.5e-7, "-2.5e-07"), (np.float64(0.123456), "0.1235"),
    (np.float32(4.4335415), "4.434"),
    (7, "7"), (123456789, "123456789"), (np.int64(12345), "12345"), (True, "True"), ("sgd", "sgd"),
    ("0.0027741234", "0.0027741234"), (None, "None"),
])
def test_sig4(value, text):
    assert sig4(value) == text


def test_settings_rounds_only_the_floats():
    assert settings({"method": "drl", "drl.lam": 4.433541515048307, "drl.diagnosis_interval": 3,
                     "lr": 0.0027741234, "drl.n_clusters": None}) == \
        "method=drl, drl.lam=4.434, drl.diagnosis_interval=3, lr=0.002774, drl.n_clusters=None"


def test_table_cells_read_to_four_significant_digits():
    assert [format_cell(v) for v in (4.433541515048307, 0.0027741234, 123.456, 20000.0, 64, "drl", None, math.nan)] \
        == ["4.434", "0.002774", "123.5", "2e+04", "64", "drl", "-", "-"]
    table = render_table(["method", "lr", "val acc"], [["drl", 0.0027741234, 0.8567891]])
    assert table.splitlines()[2].split() == ["drl", "0.002774", "0.8568"]
