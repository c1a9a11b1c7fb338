"""Evaluation metrics: accuracy, macro-F1, uni-modal (linear-probe) accuracy and the balance gap.

Uni-modal accuracy must mean the same thing for every fusion type (a FiLM or gated head has no
per-modality logits to read off), so it is measured on the encoder itself: a multinomial logistic
regression fitted on that encoder's frozen, standardised pooled features of training samples and scored
on the validation split. It measures how separable the encoder has made the classes — the quality DRL
sets out to improve in the weaker modality.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(accuracy_score(labels, predictions))


def macro_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over all ``n_classes`` (a class never predicted counts as F1 = 0)."""
    return float(f1_score(labels, predictions, labels=np.arange(n_classes), average="macro", zero_division=0))


def probe_accuracy(
    train_features: np.ndarray, train_labels: np.ndarray, eval_features: np.ndarray, eval_labels: np.ndarray
) -> float:
    """Accuracy on the eval set of a linear probe fitted on the train features."""
    if len(np.unique(train_labels)) < 2:
        return float(np.mean(eval_labels == train_labels[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_features, train_labels)
    return float(probe.score(eval_features, eval_labels))


def balance_gap(unimodal_accuracies: dict[str, float]) -> float:
    """|acc_a − acc_b| for two modalities; max − min for more."""
    values = list(unimodal_accuracies.values())
    return float(max(values) - min(values)) if values else 0.0
