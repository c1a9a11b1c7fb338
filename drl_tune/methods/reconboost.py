"""ReconBoost: boosting can achieve modality reconcilement (Hua, Xu, Bao, Yang & Huang, ICML 2024).

As the official ``train.py`` (huacong/ReconBoost @441eb51, with ``models/dynamic_net.py`` and ``schedule.py``),
the run is a sequence of stages; stage s trains modality m = modalities[s mod M] (``schedule.py``'s fixed mode:
audio, visual, audio, …) for ``epochs_per_stage`` epochs of boosting, then ``correct_epoch`` epochs of global
rectification (one engine epoch = one pass over the training set):

* learners: each modality's encoder followed by one head H shared by all modalities (``common_space``: the official
  ``Head``, Linear(d, 256)–ReLU–Linear(256, C), is assigned as every learner's ``fc``); the ensemble predicts
  F(x) = β·Σ_u H(h_u(x)) over its learners, β the trainable boost rate (``DynamicNet.boost_rate``). A modality's
  learner joins after its first boosting phase; the ensemble keeps one learner per modality, the newest;
* boosting (stage s, modality m), per sample, with p = softmax(H(h_m)) and q = softmax(F_{−m}), F_{−m} the
  ensemble without m, computed without gradient (while it is empty the official constant ``c0``, a [B, 1] tensor,
  makes q_y = 1):  ℓ = (1/C)·(−w₁·log p_y + w₂·q_y·log p_y)  — ``weight1``·CE reduced where the other learners
  already predict the label (1/C: the official ``(target * …).mean(-1)``); from stage 1 on plus
  α·MSE(softmax(H(h_m)), softmax(H(h_prev))), prev the previous stage's modality (the code's ``ga_loss``,
  ``--use_ga``; the abstract's memory consolidation). A fresh optimizer per stage over encoder m and H (official
  ``optim.SGD(model.parameters(), …)`` with ``model.fc`` = H);
* rectification: CE(F(x)) over the whole ensemble, with a fresh optimizer per stage over its encoders, H and β
  (official ``net_ensemble.parameters()``);
* evaluation scores F over the learners whose first stage has begun (the official ``test`` runs once per stage,
  after rectification, on the whole ensemble in eval mode; here every epoch).

The official ``ga_loss`` is fully detached — ``mse_criterion(out_obj.detach().softmax(1),
pre_out_obj.detach().softmax(1))`` — so it adds a constant and trains nothing. ``ga_grad: false`` (the default)
keeps that: the term is computed and logged (``diag/ga``) without a gradient; ``true`` lets its gradient reach
the current learner (the previous learner stays fixed).

Defaults are the README's CREMA-D command: w₁ = ``weight1`` 5, w₂ = ``weight2`` 1, α 0.5 (``--alpha``), 4 + 4
epochs per stage, boost rate 1. The stage optimizers are of the run's kind and settings (``optimizer``, ``lr``,
``momentum``, ``weight_decay``; the official ones are SGD with m_lr = e_lr = 0.01, momentum 0.9, weight decay
5e-4).

Any number of modalities: the stages cycle through them in the model's order and F_{−m} sums every other learner
(``schedule.py`` cycles three for MOSEI; ``train.py`` itself handles two). The shared head needs equal feature
widths (refused otherwise).

Departures from the official code: (1) training starts from scratch, as every method here: the README's commands
pass ``--use_pretrain`` (uni-modal checkpoints of the OGM-GE code, not shipped); without it the official stage 0
starts from ``c0`` as here; (2) the run's ``epochs`` end the schedule (the official loop runs 1001 stages,
``utils.check_status``, and multiplies both learning rates by 0.1 every 30 stages, i.e. every 240 epochs);
(3) F_{−m} and the previous learner's output come from one train-mode forward of the other encoders: the official
runs the previous learner a second time for ``ga_loss``, which changes only its BatchNorm running statistics (one
more update per batch); (4) the official train and test loaders drop their last partial batch (``train.py`` lines
223–232, ``drop_last=True``): here every training sample is trained on (the engine drops only a last batch of a
single sample, for every method) and every validation and test sample is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, like_optimizer, shared_width
from drl_tune.models import MultimodalClassifier


@dataclass
class ReconBoostParams:
    weight1: float = param(5.0, "w₁ of the boosting loss (1/C)·(−w₁ + w₂·q_y)·log p_y", ge=0)
    weight2: float = param(1.0, "w₂: how much the others' confidence q_y discounts it", ge=0)
    alpha: float = param(0.5, "weight of the `ga_loss` MSE to the previous stage's learner", ge=0)
    epochs_per_stage: int = param(4, "boosting epochs of a stage", ge=1)
    correct_epoch: int = param(4, "global-rectification epochs of a stage", ge=0)
    boost_rate: float = param(1.0, "initial β of the ensemble β·Σ_m H(h_m) (trained in rectification)", gt=0)
    ga_grad: bool = param(False, "whether the `ga_loss` gradient reaches the learner (false: detached, as official)")

    def __post_init__(self) -> None:
        check_fields(self, "reconboost.")


def stage_of(epoch: int, n_modalities: int, boost_epochs: int, correct_epochs: int) -> tuple[int, int, bool]:
    """(stage, index of the stage's modality, rectifying?) of the 0-based engine epoch."""
    stage, within = divmod(epoch, boost_epochs + correct_epochs)
    return stage, stage % n_modalities, within >= boost_epochs


def boosting_loss(logits: torch.Tensor, others: torch.Tensor | None, labels: torch.Tensor,
                  weight1: float, weight2: float) -> torch.Tensor:
    """Batch mean of (1/C)·(−w₁·log p_y + w₂·q_y·log p_y); q = softmax(others) (q_y = 1 when there are none)."""
    log_p_y = F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    if others is None:
        q_y = torch.ones_like(log_p_y)
    else:
        q_y = torch.softmax(others, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return ((-weight1 + weight2 * q_y) * log_p_y / logits.shape[1]).mean()


class Head(nn.Module):
    """The official common-space head: Linear(d, 256) – ReLU – Linear(256, C)."""

    def __init__(self, width: int, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class BoostRate(nn.Module):
    """β, the ensemble's trainable scale."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))


def boost_rate(model: MultimodalClassifier) -> nn.Parameter:
    """β of ``model``'s BoostRate module (extra_modules' ``boost_rate``)."""
    return cast(BoostRate, model.method_modules["boost_rate"]).value


class ReconBoost(Method):
    name = "reconboost"
    Params = ReconBoostParams
    params: ReconBoostParams
    steps_optimizer = True  # a fresh optimizer per stage phase, over that phase's parameters

    def __init__(self, params: ReconBoostParams) -> None:
        super().__init__(params)
        self.phase = (0, 0, False)  # (stage, modality index, rectifying)
        self.optimizer: torch.optim.Optimizer | None = None
        self._key: tuple[int, bool] | None = None  # the phase self.optimizer belongs to
        self._pending: dict[str, Any] | None = None  # a restored phase optimizer's state
        self._diag = EpochMeans()  # diag/ga: the memory-consolidation MSE, per step it is computed

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {"head": Head(shared_width(model, self.name), n_classes),
                "boost_rate": BoostRate(self.params.boost_rate)}

    def members(self, model: MultimodalClassifier, current: bool) -> list[str]:
        """The ensemble's learners in model order: modalities with a finished boosting phase (plus, with
        ``current``, the stage's own modality)."""
        stage, index, rectifying = self.phase
        n = len(model.modalities)
        chosen = {s % n for s in range(min(stage, n))} | ({index} if current or rectifying else set())
        return [m for i, m in enumerate(model.modalities) if i in chosen]

    def phase_parameters(self, model: MultimodalClassifier) -> list[nn.Parameter]:
        modules = model.method_modules
        stage, index, rectifying = self.phase
        if rectifying:
            encoders = [p for m in self.members(model, True) for p in model.encoders[m].parameters()]
            return encoders + list(modules["head"].parameters()) + [boost_rate(model)]
        return list(model.encoders[model.modalities[index]].parameters()) + list(modules["head"].parameters())

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        p = self.params
        self.phase = stage_of(ctx.epoch, len(model.modalities), p.epochs_per_stage, p.correct_epoch)
        key = (self.phase[0], self.phase[2])
        if key != self._key:
            self.optimizer = like_optimizer(ctx.optimizer, self.phase_parameters(model))
            if self._pending is not None and tuple(self._pending["key"]) == key:
                self.optimizer.load_state_dict(self._pending["optimizer"])
            self._key, self._pending = key, None
        self._diag.reset()

    def _outputs(self, model: MultimodalClassifier, batch: Batch, names: list[str]) -> dict[str, torch.Tensor]:
        head = model.method_modules["head"]
        return {m: head(model.encoders[m](batch.inputs[m])) for m in names}

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        assert self.optimizer is not None
        stage, index, rectifying = self.phase
        beta = boost_rate(model)
        if rectifying:
            outs = self._outputs(model, batch, self.members(model, True))
            loss = F.cross_entropy(beta * sum(outs.values()), batch.labels)
        else:
            m = model.modalities[index]
            out = self._outputs(model, batch, [m])[m]
            others = [u for u in self.members(model, False) if u != m]
            with torch.no_grad():  # the other learners, in train mode as the official ensemble forward
                other_out = self._outputs(model, batch, others)
            joint = beta.detach() * sum(other_out.values()) if others else None
            loss = boosting_loss(out, joint, batch.labels, self.params.weight1, self.params.weight2)
            previous = model.modalities[(stage - 1) % len(model.modalities)]
            if stage >= 1 and previous in other_out:
                mine = torch.softmax(out if self.params.ga_grad else out.detach(), dim=1)
                ga = F.mse_loss(mine, torch.softmax(other_out[previous], dim=1))
                loss = loss + self.params.alpha * ga
                self._diag.add("ga", ga)
        if not torch.isfinite(loss):
            return loss.detach()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def eval_logits(self, model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> torch.Tensor:
        head, beta = model.method_modules["head"], boost_rate(model)
        return beta * sum(head(features[m]) for m in self.members(model, True))

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        stage, index, rectifying = self.phase
        metrics = {"diag/stage": float(stage), "diag/stage_modality": float(index), "diag/rectify": float(rectifying),
                   "diag/boost_rate": boost_rate(model).item()}
        return metrics | self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None or self._key is None:
            return {}
        return {"key": [int(self._key[0]), bool(self._key[1])], "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state) if state else None
        self._key, self.optimizer = None, None
