"""DRL's diagnosis step as pure functions over arrays (no torch.nn): cluster purity and re-init strength.

The paper diagnoses how well each uni-modal encoder has learnt by how separable its features are:
k-means on min-max-scaled features, purity against the labels, on the train and on the validation
split. A large train/val purity gap means the encoder fits the training set in a way that does not
carry over, and it is re-initialised more strongly: α = tanh(λ · gap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.preprocessing import MinMaxScaler


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority label equals their own label."""
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if labels.shape != clusters.shape:
        raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} differ in length")
    if labels.size == 0:
        raise ValueError("purity of an empty set is undefined")
    _, label_idx = np.unique(labels, return_inverse=True)
    _, cluster_idx = np.unique(clusters, return_inverse=True)
    # contingency[c, l] = samples of label l in cluster c; each cluster keeps its majority label
    contingency = np.zeros((cluster_idx.max() + 1, label_idx.max() + 1), dtype=np.int64)
    np.add.at(contingency, (cluster_idx, label_idx), 1)
    return float(contingency.max(axis=1).sum() / labels.size)


def cluster_purity(features: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int = 0) -> float:
    """Purity of k-means clusters of ``features`` after min-max scaling to [-1, 1] fitted on this set."""
    if n_clusters < 2:
        raise ValueError(f"n_clusters must be >= 2, got {n_clusters}")
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(features) < n_clusters:
        raise ValueError(f"{len(features)} samples cannot form {n_clusters} clusters")
    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    clusters = KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto").fit_predict(scaled)
    return purity(labels, clusters)


def reinit_strength(purity_train: float, purity_val: float, alpha: float) -> float:
    """α = tanh(alpha · |purity_train − purity_val|); ``alpha`` is λ of the paper."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return float(np.tanh(alpha * abs(purity_train - purity_val)))


@dataclass(frozen=True)
class Diagnosis:
    """One modality's diagnosis: purities, their gap, and the re-init strength it implies."""

    purity_train: float
    purity_val: float
    strength: float

    @property
    def gap(self) -> float:
        return abs(self.purity_train - self.purity_val)


def diagnose(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    n_clusters: int,
    alpha: float,
    seed: int = 0,
) -> Diagnosis:
    """Diagnose one encoder from its features on the train and validation splits."""
    p_train = cluster_purity(train_features, train_labels, n_clusters, seed)
    p_val = cluster_purity(val_features, val_labels, n_clusters, seed)
    return Diagnosis(p_train, p_val, reinit_strength(p_train, p_val, alpha))
