"""DRL's diagnosis, checked against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drl_tune.diagnosis import cluster_purity, diagnose, purity, reinit_strength


def test_purity_of_hand_built_clusters():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    clusters = np.array([5, 5, 7, 7, 7, 7, 9, 9, 9, 5])
    # cluster 5 = {0,0,2} -> 2 right; cluster 7 = {0,1,1,1} -> 3; cluster 9 = {2,2,2} -> 3  => 8/10
    assert purity(labels, clusters) == pytest.approx(0.8)


def test_purity_is_one_for_perfect_and_one_over_k_for_a_single_cluster():
    labels = np.repeat(np.arange(4), 5)
    assert purity(labels, labels + 10) == 1.0
    assert purity(labels, np.zeros_like(labels)) == pytest.approx(0.25)


def test_purity_does_not_depend_on_label_or_cluster_names():
    rng = np.random.default_rng(0)
    labels, clusters = rng.integers(0, 3, 50), rng.integers(0, 4, 50)
    names = np.array([17, -3, 99])
    assert purity(names[labels], clusters * 11 + 2) == pytest.approx(purity(labels, clusters))


def test_purity_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ"):
        purity(np.zeros(3), np.zeros(4))


def _blobs(labels_of_blob: list[int], per_blob: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Far-apart Gaussian blobs; blob b carries label labels_of_blob[b]. Features on very different scales
    so the [-1, 1] min-max scaling matters."""
    centres = rng.normal(0, 1, (len(labels_of_blob), 5)) * 50
    x = np.concatenate([c + rng.normal(0, 0.5, (per_blob, 5)) for c in centres])
    x = x * np.array([1, 10, 100, 1000, 0.01])
    y = np.repeat(np.array(labels_of_blob), per_blob)
    return x, y


def test_cluster_purity_recovers_known_purity():
    rng = np.random.default_rng(1)
    x, y = _blobs([0, 1, 2], 40, rng)
    assert cluster_purity(x, y, n_clusters=3) == pytest.approx(1.0)
    # the same blobs, but 10 of blob 0's 40 samples carry label 1: purity = 110/120
    y_noisy = y.copy()
    y_noisy[:10] = 1
    assert cluster_purity(x, y_noisy, n_clusters=3) == pytest.approx(110 / 120)


def test_cluster_purity_two_blobs_mixing_two_labels():
    rng = np.random.default_rng(2)
    # 2 blobs, labels inside each blob alternate 0/1 -> every cluster's majority holds half its samples
    x, _ = _blobs([0, 1], 30, rng)
    y = np.tile([0, 1], 30)
    assert cluster_purity(x, y, n_clusters=2) == pytest.approx(0.5)


def test_reinit_strength_is_tanh_of_alpha_times_gap():
    assert reinit_strength(0.9, 0.6, alpha=3.0) == pytest.approx(math.tanh(0.9))
    assert reinit_strength(0.6, 0.9, alpha=3.0) == pytest.approx(math.tanh(0.9))
    assert reinit_strength(0.7, 0.7, alpha=3.0) == 0.0
    assert reinit_strength(0.9, 0.1, alpha=0.0) == 0.0
    with pytest.raises(ValueError, match="alpha"):
        reinit_strength(0.9, 0.1, alpha=-1.0)


def test_diagnose_combines_train_and_val_purity():
    rng = np.random.default_rng(3)
    x_train, y_train = _blobs([0, 1, 2], 30, rng)  # purity 1.0
    x_val, _ = _blobs([0, 1, 2], 30, rng)
    y_val = rng.permutation(np.repeat([0, 1, 2], 30))  # labels unrelated to the blobs
    expected_val = cluster_purity(x_val, y_val, n_clusters=3)
    d = diagnose(x_train, y_train, x_val, y_val, n_clusters=3, alpha=2.0)
    assert d.purity_train == pytest.approx(1.0)
    assert d.purity_val == pytest.approx(expected_val)
    assert d.purity_val < 0.6
    assert d.strength == pytest.approx(math.tanh(2.0 * (1.0 - expected_val)))
