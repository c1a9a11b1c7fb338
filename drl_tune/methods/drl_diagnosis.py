"""DRL's diagnosis step as pure functions over arrays (no torch.nn): cluster purity and re-init strength.

The paper diagnoses how well each uni-modal encoder has learnt by how separable its features are:
k-means on min-max-scaled features, purity against the labels, on the train and on the validation
split. A large train/val purity gap means the encoder fits the training set in a way that does not
carry over, and it is re-initialised more strongly: α = tanh(λ · gap).

Two quantities, two names (stated here once for the whole package):

* λ — how strongly a purity gap translates into re-initialisation. The paper's λ, ``move_lambda`` in the
  official code, the config key ``drl.lam`` (``drl.alpha`` until 2026-12-07). In code:
  ``reinit_lambda``.
* α = tanh(λ · gap) ∈ [0, 1] — the re-init strength applied to one encoder at one diagnosis: θ ← α·θ_init +
  (1 − α)·θ. In code: ``strength``. Logged as the metrics ``diag/alpha_<m>`` (and its spread over k-means
  starts as ``diag/alpha_std_<m>``, ``diag/alpha_min_<m>``, ``diag/alpha_max_<m>``): the paper's α.

One k-means run decides α, and a different k-means start can decide a quite different α. So
:func:`diagnose` can also repeat the clustering from ``restarts`` further starts on the *same* scaled
features (only k-means is repeated) and report the spread of the gap and of α over all starts, without
changing the α that is applied (always the one from ``seed``).

k-means runs either in sklearn (the official code's choice) or in torch (:func:`torch_kmeans`: the same
algorithm — greedy k-means++ seeding, Lloyd iterations — with batched distances, on whatever device the
features are on, so a GPU trial need not copy 100k × 512 features to the CPU and wait for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# sklearn (KMeans, MinMaxScaler) is imported where it is used: a study's driver imports every method to check its
# plan, and sklearn with scipy is ≈ 1.5 s of its start on this machine; a trial imports it anyway (its probes)

BACKENDS = ("sklearn", "torch")
Array = np.ndarray | torch.Tensor


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


# ---------------------------------------------------------------------------------------------------------
# k-means in torch


def _sq_distances(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor, chunk: int) -> torch.Tensor:
    """Squared Euclidean distances (N, k) by ‖x‖² − 2x·c + ‖c‖², ``chunk`` rows at a time (bounded memory)."""
    c_sq = (centres * centres).sum(1)
    out = torch.empty(len(x), len(centres), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        d = torch.addmm(c_sq.unsqueeze(0), block, centres.T, alpha=-2.0).add_(x_sq[start : start + chunk, None])
        out[start : start + chunk] = d.clamp_(min=0)
    return out


def _kmeans_plus_plus(x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator, chunk: int) -> torch.Tensor:
    """Greedy k-means++ seeding (as sklearn: 2 + ⌊ln k⌋ candidates per step, keep the one that lowers the
    potential most)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen, device=x.device).item())
    centres = [x[first]]
    closest = _sq_distances(x, x_sq, x[first : first + 1], chunk)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point sits on a centre already: any point will do
            cand = torch.randint(n, (trials,), generator=gen, device=x.device)
        else:
            cand = torch.multinomial(closest / total, trials, replacement=True, generator=gen)
        d_cand = _sq_distances(x, x_sq, x[cand], chunk)  # (N, trials)
        new_closest = torch.minimum(closest[:, None], d_cand)
        best = int(new_closest.sum(0).argmin().item())
        closest = new_closest[:, best].contiguous()
        centres.append(x[cand[best]])
    return torch.stack(centres)


def _lloyd(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor, max_iter: int, tol: float,
           chunk: int) -> tuple[torch.Tensor, float]:
    """Lloyd iterations until no label changes or the centres move less than ``tol`` (squared, summed), as
    sklearn."""
    k = len(centres)
    previous = None
    for _ in range(max_iter):
        assign = _sq_distances(x, x_sq, centres, chunk).argmin(1)
        if previous is not None and torch.equal(assign, previous):
            break  # strict convergence: the assignment did not change (as sklearn)
        previous = assign
        # per-cluster sums as one matrix product with the one-hot assignment (index_add_ is far slower on CPU)
        onehot = torch.zeros(len(x), k, dtype=x.dtype, device=x.device).scatter_(1, assign[:, None], 1.0)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        new = sums / counts.clamp(min=1)[:, None]
        empty = counts == 0
        if bool(empty.any()):  # an empty cluster moves to the points farthest from their centre (as sklearn)
            d_own = _sq_distances(x, x_sq, centres, chunk).gather(1, assign[:, None])[:, 0]
            far = d_own.topk(int(empty.sum().item())).indices
            new[empty] = x[far]
        shift = float(((new - centres) ** 2).sum().item())
        centres = new
        if shift <= tol:
            break
    d = _sq_distances(x, x_sq, centres, chunk)
    inertia, assign = d.min(1)
    return assign, float(inertia.sum().item())


def torch_kmeans(
    x: torch.Tensor, n_clusters: int, *, n_init: int = 1, seed: int = 0, max_iter: int = 300,
    tol: float = 1e-4, chunk: int = 65536,
) -> torch.Tensor:
    """Cluster labels of ``x`` (N, D) on ``x``'s device: the best (lowest inertia) of ``n_init`` runs of
    greedy k-means++ seeding + Lloyd. ``tol`` is relative to the mean feature variance, as in sklearn."""
    if x.ndim != 2:
        raise ValueError(f"torch_kmeans expects (N, D) features, got shape {tuple(x.shape)}")
    if len(x) < n_clusters:
        raise ValueError(f"{len(x)} samples cannot form {n_clusters} clusters")
    if not x.is_floating_point():
        x = x.float()
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    x_sq = (x * x).sum(1)
    tol_abs = tol * float(x.var(0, unbiased=False).mean().item())
    best_labels, best_inertia = None, math.inf
    for _ in range(n_init):
        centres = _kmeans_plus_plus(x, x_sq, n_clusters, gen, chunk)
        labels, inertia = _lloyd(x, x_sq, centres, max_iter, tol_abs, chunk)
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    assert best_labels is not None
    return best_labels


# ---------------------------------------------------------------------------------------------------------
# the diagnosis


def _scaled(features: Array, backend: str, device: str | torch.device | None) -> Array:
    """Min-max scaling to [-1, 1] fitted on this set (the official code's), in the backend's array type."""
    if backend == "torch":
        x = torch.as_tensor(features, device=device if not isinstance(features, torch.Tensor) else None)
        x = x.reshape(len(x), -1).float()
        low, high = x.min(0).values, x.max(0).values
        span = high - low
        span = torch.where(span == 0, torch.ones_like(span), span)  # constant feature -> -1, as sklearn
        return (x - low) / span * 2 - 1
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    from sklearn.preprocessing import MinMaxScaler

    rows = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return MinMaxScaler(feature_range=(-1, 1)).fit_transform(rows)


def _cluster(scaled: Array, n_clusters: int, seed: int, n_init: int, backend: str) -> np.ndarray:
    if backend == "torch":
        assert isinstance(scaled, torch.Tensor)
        return torch_kmeans(scaled, n_clusters, n_init=n_init, seed=seed).cpu().numpy()
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit_predict(scaled)


def _check(n_samples: int, n_clusters: int, n_init: int, backend: str) -> None:
    if n_clusters < 2:
        raise ValueError(f"n_clusters must be >= 2, got {n_clusters}")
    if n_samples < n_clusters:
        raise ValueError(f"{n_samples} samples cannot form {n_clusters} clusters")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if backend not in BACKENDS:
        raise ValueError(f"k-means backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def cluster_purity(
    features: Array, labels: np.ndarray, n_clusters: int, seed: int = 0, *, n_init: int = 1,
    backend: str = "sklearn", device: str | torch.device | None = None,
) -> float:
    """Purity of k-means clusters of ``features`` after min-max scaling to [-1, 1] fitted on this set.

    ``n_init=1`` is the official code's clustering under sklearn >= 1.4 (``KMeans(random_state=0)``)."""
    _check(len(features), n_clusters, n_init, backend)
    scaled = _scaled(features, backend, device)
    return purity(labels, _cluster(scaled, n_clusters, seed, n_init, backend))


def reinit_strength(purity_train: float, purity_val: float, reinit_lambda: float) -> float:
    """α = tanh(λ · |purity_train − purity_val|)."""
    if reinit_lambda < 0:
        raise ValueError(f"reinit_lambda (λ, drl.lam) must be >= 0, got {reinit_lambda}")
    return float(np.tanh(reinit_lambda * abs(purity_train - purity_val)))


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """The k-means seeds of the extra starts: fixed by ``seed``, distinct from it and from each other."""
    seeds: list[int] = []
    for value in np.random.SeedSequence(int(seed)).generate_state(restarts + 8).tolist():
        if value != seed and value not in seeds:
            seeds.append(int(value))
    return seeds[:restarts]


@dataclass(frozen=True)
class Spread:
    """The purity gap and the strength α over ``starts`` k-means starts (the applied one and the extra ones)."""

    starts: int
    gap_std: float
    gap_min: float
    gap_max: float
    strength_std: float
    strength_min: float
    strength_max: float


@dataclass(frozen=True)
class Diagnosis:
    """One modality's diagnosis: purities, their gap, the re-init strength it implies, and (when
    restarts were asked for) how much that strength moves with the k-means start."""

    purity_train: float
    purity_val: float
    strength: float
    spread: Spread | None = None


def diagnose(
    train_features: Array,
    train_labels: np.ndarray,
    val_features: Array,
    val_labels: np.ndarray,
    *,
    n_clusters: int,
    reinit_lambda: float,
    seed: int = 0,
    n_init: int = 1,
    restarts: int = 0,
    backend: str = "sklearn",
    device: str | torch.device | None = None,
) -> Diagnosis:
    """Diagnose one encoder from its features on the train and validation splits.

    The applied α comes from the k-means start ``seed``. With ``restarts`` = R > 0 both splits are also
    clustered from R further starts (:func:`restart_seeds`; each with the same ``n_init``, so each start
    repeats the decision exactly as configured), and ``spread`` describes the gap and α over all R + 1.
    """
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    for feats in (train_features, val_features):
        _check(len(feats), n_clusters, n_init, backend)
    x_train, x_val = _scaled(train_features, backend, device), _scaled(val_features, backend, device)

    def purities(s: int) -> tuple[float, float]:
        return (purity(train_labels, _cluster(x_train, n_clusters, s, n_init, backend)),
                purity(val_labels, _cluster(x_val, n_clusters, s, n_init, backend)))

    p_train, p_val = purities(seed)
    strength = reinit_strength(p_train, p_val, reinit_lambda)
    spread = None
    if restarts > 0:
        gaps = [abs(p_train - p_val)] + [abs(a - b) for a, b in map(purities, restart_seeds(seed, restarts))]
        strengths = np.tanh(reinit_lambda * np.asarray(gaps))
        spread = Spread(len(gaps), float(np.std(gaps)), float(min(gaps)), float(max(gaps)),
                        float(strengths.std()), float(strengths.min()), float(strengths.max()))
    return Diagnosis(p_train, p_val, strength, spread)
