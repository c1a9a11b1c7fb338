"""Diagnosing & Re-learning (Wei, Li, Feng, Hu — ECCV 2024).

Every ``diagnosis_interval`` epochs (epoch index > 0, at most ``max_reinits`` times), after the epoch's
evaluation as in the official code:

1. **Diagnose** each modality m: k-means purity of its encoder's features on train and on val
   (diagnosis.py); gap_m = |purity_train − purity_val|.
2. **Re-learn**: α_m = tanh(λ · gap_m) and every parameter θ of encoder m becomes
   α_m·θ_init + (1 − α_m)·θ, with θ_init that encoder's own weights at step 0. Fusion and head are
   never touched. As the official code, BN running statistics and optimizer momentum are left alone
   by default (``blend_bn_stats`` / ``reset_momentum`` change that).

k-means is seeded as the official code (``random_state=0`` in every run, ``kmeans_seed="official"``) or
with the trial's seed (``"trial"``). ``stability_restarts`` further k-means starts on the same features
measure how much α depends on the start (``diag/alpha_std_<m>`` …); they never change the applied α.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import EpochContext, Method
from drl_tune.methods.drl_diagnosis import BACKENDS, diagnose
from drl_tune.models import MultimodalClassifier

# measured on the demo (docs/faithfulness.md, "The diagnosis' noise"): each restart costs ~5% of a diagnosis,
# so 2 stay <= 10%
STABILITY_RESTARTS = 2
KMEANS_SEEDS = ("official", "trial")


@dataclass
class DRLParams:
    """``lam`` is λ of the paper (``move_lambda`` in the official code), not the re-init strength α = tanh(λ·gap) it
    yields, which ``diag/alpha_<m>`` logs (drl_diagnosis.py says which name is which). Its key was ``drl.alpha``
    until 2026-12-07; that name is still read, with a notice (``DRL.renamed_params``)."""

    lam: float = param(3.0, "λ of the paper (`move_lambda` in the official code): the re-init strength "
                       "α = tanh(λ·gap) is what `diag/alpha_<m>` logs (formerly `drl.alpha`)", ge=0)
    diagnosis_interval: int = param(20, "diagnose and re-learn after epochs k, 2k, … (0-based epoch index, as the "
                                    "official code)", ge=1)
    max_reinits: int = param(3, "at most this many re-initialisations", ge=0)
    n_clusters: int | None = param(None, "k of k-means; null = number of classes (the official choice)", ge=2)
    blend_bn_stats: bool = param(False, "also move BN running mean/var towards their initial values (the official "
                                 "code does not)")
    reset_momentum: bool = param(False, "also clear the optimizer's momentum of the re-initialised encoder (the "
                                 "official code does not)")
    kmeans_seed: str = param("official", "`official`: k-means `random_state=0` in every run, as the paper's code "
                             "(`code/ours.py`); `trial`: the run's `seed`. The default is the official one, so that "
                             "trials differing only in `seed` diagnose identical features identically")
    kmeans_n_init: int = param(1, "k-means starts per clustering (best inertia kept); 1 = the official "
                               "`KMeans(random_state=0)` under sklearn ≥ 1.4 (10 under older sklearn); searchable",
                               ge=1)
    stability_restarts: int = param(STABILITY_RESTARTS, "R further k-means starts at every diagnosis, on the same "
                                    "features, that only *measure* how much α depends on the start "
                                    "(`diag/alpha_std_<m>` …); never change the applied α; 0 = off. Each costs ~5% "
                                    "of a demo diagnosis, so 2 stay ≤ 10% (\"The diagnosis' noise\")", ge=0)
    kmeans_backend: str = param("sklearn", "`torch`: the same k-means (greedy k-means++, Lloyd) in torch on the "
                                "run's device (\"Diagnosis speed\")", choices=BACKENDS)

    def __post_init__(self) -> None:
        check_fields(self, "drl.")  # the numbers' domains are declared on the fields (ground/domains.py)
        if self.kmeans_seed not in KMEANS_SEEDS:
            raise ConfigError(
                f"drl.kmeans_seed must be 'official' (k-means random_state=0, as the paper's code) or 'trial' "
                f"(the run's seed), got {self.kmeans_seed!r}"
            )

    def kmeans_random_state(self, run_seed: int) -> int:
        """The k-means seed of the applied clustering: 0 as the official code, or the run's seed."""
        return 0 if self.kmeans_seed == "official" else int(run_seed)


@torch.no_grad()
def soft_reinit(encoder: nn.Module, init_state: dict[str, torch.Tensor], strength: float) -> None:
    """θ ← α·θ_init + (1 − α)·θ for every parameter of ``encoder``, α = ``strength`` (in place, so optimizer
    state stays)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"re-init strength must be in [0, 1], got {strength}")
    for name, weight in encoder.named_parameters():
        weight.mul_(1.0 - strength).add_(init_state[name].to(weight.device, weight.dtype), alpha=strength)


@torch.no_grad()
def _blend_bn_stats(encoder: nn.Module, init_state: dict[str, torch.Tensor], strength: float) -> None:
    for name, buf in encoder.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.mul_(1.0 - strength).add_(init_state[name].to(buf.device, buf.dtype), alpha=strength)


class DRL(Method):
    name = "drl"
    renamed_params = {"alpha": ("lam", "2026-12-07")}  # drl.alpha was λ's key; α is what diag/alpha_<m> logs
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
        p = self.params
        for m in model.modalities:
            d = diagnose(
                train_features[m], train_labels, val_features[m], val_labels,
                n_clusters=n_clusters, reinit_lambda=p.lam, seed=p.kmeans_random_state(ctx.seed),
                n_init=p.kmeans_n_init, restarts=p.stability_restarts, backend=p.kmeans_backend,
                device=getattr(ctx, "device", None),
            )
            encoder = model.encoders[m]
            soft_reinit(encoder, self.init_state[m], d.strength)
            if self.params.blend_bn_stats:
                _blend_bn_stats(encoder, self.init_state[m], d.strength)
            if self.params.reset_momentum:
                for weight in encoder.parameters():
                    ctx.optimizer.state.pop(weight, None)
            metrics |= {
                f"diag/purity_train_{m}": d.purity_train,
                f"diag/purity_val_{m}": d.purity_val,
                f"diag/alpha_{m}": d.strength,
            }
            if d.spread is not None:
                metrics |= {
                    f"diag/alpha_std_{m}": d.spread.strength_std,
                    f"diag/alpha_min_{m}": d.spread.strength_min,
                    f"diag/alpha_max_{m}": d.spread.strength_max,
                    f"diag/gap_std_{m}": d.spread.gap_std,
                }
        self.reinits_done += 1
        metrics["diag/reinits"] = float(self.reinits_done)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"init_state": self.init_state, "reinits_done": self.reinits_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init_state = state["init_state"]
        self.reinits_done = int(state["reinits_done"])
