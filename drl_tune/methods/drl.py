"""Diagnosing & Re-learning (Wei, Li, Feng, Hu — ECCV 2024).

Every ``diagnosis_interval`` epochs (epoch index > 0, at most ``max_reinits`` times), after the epoch's
evaluation as in the official code:

1. **Diagnose** each modality m: k-means purity of its encoder's features on train and on val
   (diagnosis.py); gap_m = |purity_train − purity_val|.
2. **Re-learn**: α_m = tanh(λ · gap_m) and every parameter θ of encoder m becomes
   α_m·θ_init + (1 − α_m)·θ, with θ_init that encoder's own weights at step 0. Fusion and head are
   never touched. As the official code, BN running statistics and optimizer momentum are left alone
   by default (``blend_bn_stats`` / ``reset_momentum`` change that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from drl_tune.config import ConfigError
from drl_tune.diagnosis import diagnose
from drl_tune.methods.base import EpochContext, Method
from drl_tune.models import MultimodalClassifier


@dataclass
class DRLParams:
    """``alpha`` is λ of the paper (``move_lambda`` in the official code)."""

    alpha: float = 3.0
    diagnosis_interval: int = 20
    max_reinits: int = 3
    n_clusters: int | None = None  # None = number of classes (the official choice)
    blend_bn_stats: bool = False  # also move BN running mean/var towards their initial values
    reset_momentum: bool = False  # also clear the optimizer's momentum of the re-initialised encoder

    def __post_init__(self) -> None:
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"drl.alpha must be a finite number >= 0, got {self.alpha}")
        if self.diagnosis_interval < 1:
            raise ConfigError(f"drl.diagnosis_interval must be >= 1, got {self.diagnosis_interval}")
        if self.max_reinits < 0:
            raise ConfigError(f"drl.max_reinits must be >= 0, got {self.max_reinits}")
        if self.n_clusters is not None and self.n_clusters < 2:
            raise ConfigError(
                f"drl.n_clusters must be >= 2 (or null for the number of classes), got {self.n_clusters}"
            )


@torch.no_grad()
def soft_reinit(encoder: nn.Module, init_state: dict[str, torch.Tensor], alpha: float) -> None:
    """θ ← α·θ_init + (1 − α)·θ for every parameter of ``encoder`` (in place, so optimizer state stays)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"re-init strength must be in [0, 1], got {alpha}")
    for name, param in encoder.named_parameters():
        param.mul_(1.0 - alpha).add_(init_state[name].to(param.device, param.dtype), alpha=alpha)


@torch.no_grad()
def _blend_bn_stats(encoder: nn.Module, init_state: dict[str, torch.Tensor], alpha: float) -> None:
    for name, buf in encoder.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.mul_(1.0 - alpha).add_(init_state[name].to(buf.device, buf.dtype), alpha=alpha)


class DRL(Method):
    name = "drl"
    Params = DRLParams
    params: DRLParams

    def __init__(self, params: DRLParams) -> None:
        super().__init__(params)
        self.init_state: dict[str, dict[str, torch.Tensor]] = {}
        self.reinits_done = 0

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        self.init_state = {
            m: {k: v.detach().clone() for k, v in enc.state_dict().items()} for m, enc in model.encoders.items()
        }

    def is_diagnosis_epoch(self, epoch: int) -> bool:
        """Epoch indices count from 0, as in the official loop: diagnose after epochs interval, 2·interval, …"""
        interval = self.params.diagnosis_interval
        return epoch > 0 and epoch % interval == 0 and self.reinits_done < self.params.max_reinits

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        if not self.is_diagnosis_epoch(ctx.epoch):
            return {}
        train_features, train_labels = ctx.features("train")
        val_features, val_labels = ctx.features("val")
        n_clusters = self.params.n_clusters if self.params.n_clusters is not None else ctx.n_classes
        metrics: dict[str, float] = {}
        for m in model.modalities:
            d = diagnose(
                train_features[m], train_labels, val_features[m], val_labels,
                n_clusters=n_clusters, alpha=self.params.alpha, seed=ctx.seed,
            )
            encoder = model.encoders[m]
            soft_reinit(encoder, self.init_state[m], d.strength)
            if self.params.blend_bn_stats:
                _blend_bn_stats(encoder, self.init_state[m], d.strength)
            if self.params.reset_momentum:
                for param in encoder.parameters():
                    ctx.optimizer.state.pop(param, None)
            metrics |= {
                f"diag/purity_train_{m}": d.purity_train,
                f"diag/purity_val_{m}": d.purity_val,
                f"diag/alpha_{m}": d.strength,
            }
        self.reinits_done += 1
        metrics["diag/reinits"] = float(self.reinits_done)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"init_state": self.init_state, "reinits_done": self.reinits_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init_state = state["init_state"]
        self.reinits_done = int(state["reinits_done"])
