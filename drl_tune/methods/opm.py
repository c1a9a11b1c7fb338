"""OPM: on-the-fly prediction modulation by dropping features (Wei, Hu et al., TPAMI 2024, "BML").

As the official ``code/models/Classifier.py`` and ``code/main.py`` (GeWu-Lab/BML_TPAMI2024), per batch:

* score_m = Σ_i softmax(out_m)[i, y_i], uni-modal logits from the *detached* head weight halves + b/2
  (:func:`~drl_tune.methods.base.unimodal_logits`, ``detach_head=True``), on the undropped features;
* q_m = q_base·(1 + λ·tanh(relu(p_m/p_other − 1))) when that tanh is > 0, else 0; clipped to [0, 1] —
  only the leading modality gets a drop probability;
* with probability ``p_exe`` the batch is modulated: each sample keeps modality m with probability
  1 − q_m (independent Bernoulli draws per sample and modality); the features of both modalities are
  divided by (1 − θ), θ = Σ_m d_m·q_m / Σ_m d_m (d_m = feature dimension), and so is their gradient;
* the θ gradient (``theta_grad``). The official custom autograd function (``custom_autograd`` in
  ``code/models/Classifier.py`` at 8db168f, lines 9–21) returns θ itself as θ's gradient (line 21). θ is no
  constant there: the scores come from the *non-detached* encoder outputs (``Classifier.forward`` detaches
  only the head's ``weight`` and ``bias``), and ``calcu_q`` writes them into q with the graph kept (lines
  67–68). So every modulated batch also adds ∇_encoders(θ²/2) to the encoder gradients, a push that lowers the
  leading modality's confidence relative to the other's. ``official`` (the default: the authors' code is what
  the paper's numbers came from) does the same through :class:`_RescaleWithThetaGrad`; ``none`` treats θ as a
  constant, the gradient the paper's equations imply. The two coincide when λ = 0 (q = q_base, constant), when
  q clips to 1, when a batch is not modulated and during warm-up; the head gradient is the same in both;
* samples with every modality dropped are removed (labels too); a batch left empty is skipped;
* no dropping while epoch ≤ ``warmup_epochs`` (official: ``warm_up = 1 if epoch <= 5``);
* only the fused cross-entropy is back-propagated (the uni-modal losses are only logged officially).

Defaults are the official script's (``train_opm.sh``: q_base 0.5, lam 0.5, p_exe 0.7).

Departures from the official code (``code/models/Classifier.py`` at 8db168f): (1) ``execute_drop`` does not
parse (a stray ``]`` after ``torch.chunk``, line 53) and stacks the two modalities' features, so it needs
equal widths, and ``Classifier`` hard-codes 512-d features and 31 classes (``ConcatFusion(in_c_x=512,
in_c_y=512, out_c=31)``); this implements what it evidently intends, for any feature widths; (2) the
execute draw uses torch's global generator (official: ``np.random.rand(1)``, line 34) and the per-sample
keep draws ``torch.bernoulli`` (official: ``torch.distributions.Bernoulli(1-q).sample``, line 45), both
checkpointed by the engine, so resumed runs are exact — the same distributions, other numbers; (3) the
official model has concat fusion only; sum fusion is an addition here (each modality's logits from its own
layer with its own full bias), not a departure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import (
    Batch,
    EpochContext,
    EpochMeans,
    HeadScoredMethod,
    batch_score_tensors,
    unimodal_logits,
)
from drl_tune.models import MultimodalClassifier

THETA_GRADS = ("official", "none")


@dataclass
class OPMParams:
    q_base: float = param(0.5, "OPM's base drop probability (`train_opm.sh`)", ge=0, le=1)
    lam: float = param(0.5, "λ of the drop probability (`train_opm.sh`)", ge=0)
    p_exe: float = param(0.7, "probability that a batch is modulated at all (`train_opm.sh`)", ge=0, le=1)
    warmup_epochs: int = param(5, "no dropping while epoch ≤ this (official `warm_up`; -1: drop from epoch 0)",
                               ge=-1)
    theta_grad: str = param("official", "`official`: θ's gradient as the authors' code (adds ∇(θ²/2) to the "
                            "encoders); `none`: θ a constant, as the paper's equations", choices=THETA_GRADS)

    def __post_init__(self) -> None:
        check_fields(self, "opm.")  # the numbers' domains are declared on the fields (ground/domains.py)


def drop_probabilities(score_1: Any, score_2: Any, q_base: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_1, q_2) of the official ``calcu_q``, as float64 0-d tensors: from numbers or from score tensors,
    whose graph they then keep (the official θ gradient flows through it; a clipped q has none)."""
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (score_1, score_2))
    q = []
    for mine, other in ((s1, s2), (s2, s1)):
        ratio = torch.tanh(torch.relu(mine / other - 1.0))
        q.append(q_base * (1.0 + lam * ratio) if bool(ratio > 0) else torch.zeros((), dtype=torch.float64))
    return torch.clamp(q[0], 0.0, 1.0), torch.clamp(q[1], 0.0, 1.0)


def drop_theta(q: tuple[Any, ...], dims: tuple[int, ...]) -> Any:
    """θ = Σ d_m q_m / Σ d_m, of numbers or of tensors (then with their graph)."""
    return sum(d * qm for d, qm in zip(dims, q, strict=True)) / sum(dims)


def feature_rescale(q: tuple[float, ...], dims: tuple[int, ...]) -> float:
    """1/(1 − θ): the factor every kept feature is multiplied by."""
    return 1.0 / (1.0 - float(drop_theta(q, dims)))


class _RescaleWithThetaGrad(torch.autograd.Function):
    """features / (1 − θ) forward, gradients / (1 − θ) backward — and θ itself handed back as θ's gradient, as
    the official ``custom_autograd.backward`` returns (its second value). Autograd then carries θ·∇θ = ∇(θ²/2)
    through θ's graph into the encoders. One application for all modalities, so the θ term is added once per
    batch, as the official function applied to the stacked features."""

    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(theta)
        scale = 1.0 / (1.0 - float(theta))
        return tuple(f * scale for f in features)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (theta,) = ctx.saved_tensors
        scale = 1.0 / (1.0 - float(theta))
        return (theta.detach().clone(), *(None if g is None else g * scale for g in grads))




class OPM(HeadScoredMethod):
    name = "opm"
    Params = OPMParams
    params: OPMParams

    def __init__(self, params: OPMParams) -> None:
        super().__init__(params)
        self.model: MultimodalClassifier | None = None
        self.epoch = 0
        self._diag = EpochMeans()  # diag/q_<m>: the drop probabilities, per step after warm-up
        self._dropped_batches = 0

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self.epoch = model, ctx.epoch
        self._diag.reset()
        self._dropped_batches = 0

    def modify_features(
        self, features: dict[str, torch.Tensor], labels: torch.Tensor, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        modified = super().modify_features(features, labels, batch)
        assert modified is not None and self.model is not None
        features, labels = modified
        if self.epoch <= self.params.warmup_epochs:
            return features, labels
        first, second = self.model.modalities
        official = self.params.theta_grad == "official"
        if official:  # the scores keep the encoders' graph (the head weights are detached either way)
            scores: dict[str, Any] = batch_score_tensors(unimodal_logits(self.model, features, detach_head=True),
                                                         labels)
        else:
            scores = self.head_scores(self.model, features, labels, detach_head=True)
        q_tensors = drop_probabilities(scores[first], scores[second], self.params.q_base, self.params.lam)
        q = (float(torch.as_tensor(q_tensors[0]).detach()), float(torch.as_tensor(q_tensors[1]).detach()))
        self._diag.add(f"q_{first}", q[0])
        self._diag.add(f"q_{second}", q[1])
        if float(torch.rand(1)) >= self.params.p_exe:  # official: rand >= 1 - p_exe executes
            return features, labels
        self._dropped_batches += 1
        f1, f2 = features[first], features[second]
        n = f1.shape[0]
        keep = torch.bernoulli(torch.tensor([1.0 - q[0], 1.0 - q[1]]).expand(n, 2).contiguous()).to(f1.device)
        alive = keep.sum(dim=1) > 0
        if not bool(alive.any()):
            return None
        dims = (f1.shape[1], f2.shape[1])
        kept_1, kept_2 = f1 * keep[:, :1].to(f1.dtype), f2 * keep[:, 1:].to(f2.dtype)
        theta = drop_theta(q_tensors, dims)
        if official and isinstance(theta, torch.Tensor) and theta.requires_grad:
            kept_1, kept_2 = _RescaleWithThetaGrad.apply(theta, kept_1, kept_2)
        else:
            scale = feature_rescale(q, dims)
            kept_1, kept_2 = kept_1 * scale, kept_2 * scale
        return {first: kept_1[alive], second: kept_2[alive]}, labels[alive]

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        metrics = self._diag.means()
        if metrics:  # nothing before warm-up ends
            metrics["diag/modulated_batches"] = float(self._dropped_batches)
        return metrics
