"""OPM: on-the-fly prediction modulation by dropping features (Wei, Hu et al., TPAMI 2024, "BML").

As the official ``code/models/Classifier.py`` and ``code/main.py`` (GeWu-Lab/BML_TPAMI2024), per batch:

* score_m = Σ_i softmax(out_m)[i, y_i], uni-modal logits from the *detached* head weight halves + b/2
  (:func:`~drl_tune.methods.base.unimodal_logits`, ``detach_head=True``), on the undropped features;
* q_m = q_base·(1 + λ·tanh(relu(p_m/p_other − 1))) when that tanh is > 0, else 0; clipped to [0, 1] —
  only the leading modality gets a drop probability;
* with probability ``p_exe`` the batch is modulated: each sample keeps modality m with probability
  1 − q_m (independent Bernoulli draws per sample and modality); the features of both modalities are
  divided by (1 − θ), θ = Σ_m d_m·q_m / Σ_m d_m (d_m = feature dimension) — the official custom autograd
  function divides the gradient by the same constant, which plain autograd of f/(1 − θ) does;
* samples with every modality dropped are removed (labels too); a batch left empty is skipped;
* no dropping while epoch ≤ ``warmup_epochs`` (official: ``warm_up = 1 if epoch <= 5``);
* only the fused cross-entropy is back-propagated (the uni-modal losses are only logged officially).

Defaults are the official script's (``train_opm.sh``: q_base 0.5, lam 0.5, p_exe 0.7).

Departures from the official code: (1) its ``Modality_drop`` has a syntax error (a stray ``]`` after
``torch.chunk``) and hard-codes 512-d features and 31 classes; this implements what it evidently intends,
for any feature width; (2) the draws use torch's global generator (checkpointed by the engine) instead of
NumPy's, so resumed runs are exact; (3) sum fusion reads each modality's logits with its own full bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from drl_tune.errors import ConfigError
from drl_tune.methods.base import Batch, EpochContext, HeadScoredMethod
from drl_tune.models import MultimodalClassifier


@dataclass
class OPMParams:
    q_base: float = 0.5
    lam: float = 0.5  # λ
    p_exe: float = 0.7  # probability that a batch is modulated at all
    warmup_epochs: int = 5  # no dropping while epoch <= warmup_epochs

    def __post_init__(self) -> None:
        for key in ("q_base", "p_exe"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"opm.{key} must be in [0, 1], got {value}")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ConfigError(f"opm.lam must be a finite number >= 0, got {self.lam}")
        if self.warmup_epochs < -1:
            raise ConfigError(f"opm.warmup_epochs must be >= -1 (-1: drop from epoch 0), got {self.warmup_epochs}")


def drop_probabilities(score_1: float, score_2: float, q_base: float, lam: float) -> tuple[float, float]:
    """(q_1, q_2) of the official ``calcu_q``."""
    q = []
    for mine, other in ((score_1, score_2), (score_2, score_1)):
        ratio = math.tanh(max(mine / other - 1.0, 0.0))
        q.append(q_base * (1.0 + lam * ratio) if ratio > 0 else 0.0)
    return min(max(q[0], 0.0), 1.0), min(max(q[1], 0.0), 1.0)


def feature_rescale(q: tuple[float, ...], dims: tuple[int, ...]) -> float:
    """1/(1 − θ), θ = Σ d_m q_m / Σ d_m: the factor every kept feature is multiplied by."""
    theta = sum(d * qm for d, qm in zip(dims, q, strict=True)) / sum(dims)
    return 1.0 / (1.0 - theta)


class OPM(HeadScoredMethod):
    name = "opm"
    Params = OPMParams
    params: OPMParams

    def __init__(self, params: OPMParams) -> None:
        super().__init__(params)
        self.model: MultimodalClassifier | None = None
        self.epoch = 0
        self._q_sum = [0.0, 0.0]
        self._steps = 0
        self._dropped_batches = 0

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self.epoch = model, ctx.epoch
        self._q_sum, self._steps, self._dropped_batches = [0.0, 0.0], 0, 0

    def modify_features(
        self, features: dict[str, torch.Tensor], labels: torch.Tensor, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        modified = super().modify_features(features, labels, batch)
        assert modified is not None and self.model is not None
        features, labels = modified
        if self.epoch <= self.params.warmup_epochs:
            return features, labels
        first, second = self.model.modalities
        scores = self.head_scores(self.model, features, labels, detach_head=True)
        q = drop_probabilities(scores[first], scores[second], self.params.q_base, self.params.lam)
        self._q_sum[0] += q[0]
        self._q_sum[1] += q[1]
        self._steps += 1
        if float(torch.rand(1)) >= self.params.p_exe:  # official: rand >= 1 - p_exe executes
            return features, labels
        self._dropped_batches += 1
        f1, f2 = features[first], features[second]
        n = f1.shape[0]
        keep = torch.bernoulli(torch.tensor([1.0 - q[0], 1.0 - q[1]]).expand(n, 2).contiguous()).to(f1.device)
        alive = keep.sum(dim=1) > 0
        if not bool(alive.any()):
            return None
        scale = feature_rescale(q, (f1.shape[1], f2.shape[1]))
        out = {first: f1 * keep[:, :1].to(f1.dtype) * scale, second: f2 * keep[:, 1:].to(f2.dtype) * scale}
        return {m: f[alive] for m, f in out.items()}, labels[alive]

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        if not self._steps:
            return {}
        metrics = {f"diag/q_{m}": self._q_sum[i] / self._steps for i, m in enumerate(model.modalities)}
        metrics["diag/modulated_batches"] = float(self._dropped_batches)
        return metrics
