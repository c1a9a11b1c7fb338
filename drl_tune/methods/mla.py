"""MLA: multimodal learning with alternating uni-modal adaptation (Zhang, Yoon, Bansal & Yao, CVPR 2024).

As the official ``main.py`` run with ``--gs_flag`` (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-
Adaptation @11ae1ee: ``train_epoch``'s ``gs_flag`` branch, ``valid``, ``calculate_gating_weights``; the projection
in ``utils/utils.py``, ``GSPlugin``), per batch:

* every encoder encodes the batch once; then, modality by modality in the model's order, one head H shared by all
  modalities (a linear layer on one modality's features, the official ``fusion_module.fc_out`` of input width 512;
  added by ``extra_modules``, the model's own fusion head is not used) gives L_m = CE(H(h_m)); L_m is
  back-propagated and the run's optimizer steps — M steps per batch, each reaching encoder m and H
  (``steps_optimizer``);
* between those steps the gradients are zeroed, not dropped, as ``optimizer.zero_grad()`` did under the torch
  1.8.1 the authors pin (``requirements.txt``): a later modality's step also moves the parameters stepped earlier
  in the same batch by their momentum and weight decay. After the batch every gradient is dropped (``del p.grad``
  in ``train_epoch``). ``momentum_all: false`` steps only what the modality's own loss reached (torch ≥ 2);
* the gradient projection of the shared head. ``GSPlugin.before_update`` (``utils/utils.py`` lines 24–41)
  receives ``fusion_module.fc_out`` itself, an ``nn.Linear``, and projects only the parameter named
  ``"module.weight"`` (line 32) — a Linear layer's weight is named ``"weight"``, so the official code never
  projects (its memory P stays the identity). ``projection: official`` (the default) trains as that code does,
  because the numbers the paper reports came from it; ``applied`` runs the projection the gate was written for:
  a memory P (d×d, the identity at the start, one for all modalities, kept across epochs); before every modality
  step except the run's first, r = batch mean of h_m, k = P·rᵀ, P ← P − k·kᵀ/(α + r·k) with α = 0.1^(1 + b/B)
  (b the batch's index in the epoch, B = ⌈N/batch_size⌉), P ← P/‖P‖_F, and H's weight gradient becomes ∇W·Pᵀ
  (its bias is untouched). BalanceBenchmark's ``MLA_trainer.py`` fixes the gate (``n == "weight"``) but *adds*
  ∇W·Pᵀ to ∇W — a third variant, not offered;
* evaluation fuses H's uni-modal logits z_m with weights λ_m = exp(max_u e_u − e_m) / Σ_u exp(max_u e_u − e_u)
  from their entropies e_m. ``gating: batch`` (the default) is the official ``calculate_entropy``: softmax over
  the *samples* of each evaluation batch (``main.py`` line 66, ``dim=0``), e_m summed over the batch, so one λ_m
  per modality and batch; batches are the run's ``batch_size`` in split order, as the official test loader's
  (exactly so when ``eval.batch_size`` is a multiple of it). ``sample``: per sample, over classes (line 67's
  ``dim=1``, commented out); ``fixed``: every modality weighed equally (the official fixed fusion, ``av_alpha``
  = 0.5; for three modalities the official fixed weights are 0.35/0.25/0.4, not offered).

The rule is per modality, so it runs on any number of modalities, as the official code does on three
(IEMOCAP); the shared head needs every encoder to have the same feature width (refused otherwise).
``train/loss`` is the mean of the modalities' L_m (the official ``av_alpha``-weighted sum for two).

Departures from the official code: (1) entropies use ``log_softmax`` instead of ``log(softmax(·))``: the same
value, without the NaN of 0·log 0 when a probability underflows; (2) the README's "dynamic fusion" command passes
``-dynamic``, which argparse rejects (``unrecognized arguments``); the gating is what ``--dynamic`` selects.
The official model's weight initialisation (``weight_init``: Xavier/Kaiming) is not copied; every method here
starts from the same default initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.core.domains import check_fields
from drl_tune.core.errors import ConfigError
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, shared_width
from drl_tune.models import MultimodalClassifier

GATINGS = ("batch", "sample", "fixed")
PROJECTIONS = ("official", "applied")


@dataclass
class MLAParams:
    gating: str = "batch"  # evaluation-time fusion: batch (official), sample (per-sample entropy), fixed (equal)
    projection: str = "official"  # official: no projection (the gate never matches); applied: project H's gradient
    momentum_all: bool = True  # a later step in the batch also moves earlier modalities (torch 1.8.1's zero_grad)

    def __post_init__(self) -> None:
        check_fields(self, "mla.")
        if self.gating not in GATINGS:
            raise ConfigError(f"mla.gating must be one of {', '.join(GATINGS)}, got {self.gating!r}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"mla.projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")


def projection_update(memory: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """GSPlugin's memory update for the batch-mean features r [1, d]: P − k·kᵀ/(α + r·k), k = P·rᵀ, then /‖·‖_F."""
    k = memory @ r.t()
    updated = memory - (k @ k.t()) / (alpha + r @ k)
    return updated / torch.linalg.matrix_norm(updated)


def projection_alpha(batch_index: int, n_batches: int) -> float:
    """α = 0.1^(1 + b/B): from 0.1 at an epoch's first batch towards 0.01 at its last."""
    return 0.1 ** (batch_index / n_batches + 1.0)


def entropies(logits: list[torch.Tensor], gating: str) -> torch.Tensor:
    """[M] (batch: over the samples of the batch, summed) or [M, B] (sample: per sample, over classes)."""
    dim = 0 if gating == "batch" else 1
    out = []
    for z in logits:
        log_p = F.log_softmax(z.float(), dim=dim)
        h = -(log_p.exp() * log_p)
        out.append(h.sum() if gating == "batch" else h.sum(dim=1))
    return torch.stack(out)


def gated_logits(logits: list[torch.Tensor], gating: str) -> torch.Tensor:
    """Σ_m λ_m z_m with λ = softmax(−e) over the modalities (= exp(max e − e_m) / Σ exp(max e − e_u))."""
    if gating == "fixed":
        return torch.stack(logits).mean(dim=0)
    weights = torch.softmax(-entropies(logits, gating), dim=0)  # [M] or [M, B]
    weights = weights.unsqueeze(-1) if gating == "sample" else weights.view(-1, 1, 1)
    return (weights * torch.stack(logits).float()).sum(dim=0)


class MLA(Method):
    name = "mla"
    Params = MLAParams
    params: MLAParams
    steps_optimizer = True  # one step of the run's optimizer per modality per batch

    def __init__(self, params: MLAParams) -> None:
        super().__init__(params)
        self.optimizer: torch.optim.Optimizer | None = None
        self.memory: torch.Tensor | None = None  # P of the applied projection
        self.steps = 0  # modality steps over the run (the official exp_count)
        self.batch_index, self.n_batches, self.chunk = 0, 1, 0
        self._diag = EpochMeans()  # diag/loss_<m>: each modality's L_m, per batch

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {"head": nn.Linear(shared_width(model, self.name), n_classes)}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        if self.params.projection == "applied" and self.memory is None:
            width = model.method_modules["head"].in_features
            self.memory = torch.eye(width, device=model.method_modules["head"].weight.device)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.batch_index, self.chunk = 0, ctx.batch_size
        self.n_batches = max(math.ceil(ctx.n_train / ctx.batch_size), 1)  # len() of the official DataLoader
        self._diag.reset()

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        assert self.optimizer is not None
        head = model.method_modules["head"]
        features = model.encode(batch.inputs)
        losses = []
        for m in model.modalities:
            loss = F.cross_entropy(head(features[m]), batch.labels)
            if not torch.isfinite(loss):
                return loss.detach()  # the engine stops the run with a clear error
            loss.backward()
            if self.memory is not None:
                self.project(head, features[m].detach())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=not self.params.momentum_all)
            self.steps += 1
            losses.append(loss.detach())
            self._diag.add(f"loss_{m}", loss)
        self.optimizer.zero_grad(set_to_none=True)  # the official del p.grad after the batch
        self.batch_index += 1
        return torch.stack(losses).mean()

    @torch.no_grad()
    def project(self, head: nn.Linear, features: torch.Tensor) -> None:
        """The applied projection of H's weight gradient (skipped at the run's first modality step, as official)."""
        assert self.memory is not None
        if self.steps == 0 or head.weight.grad is None:
            return
        r = features.float().mean(dim=0, keepdim=True)
        self.memory = projection_update(self.memory, r, projection_alpha(self.batch_index, self.n_batches))
        head.weight.grad = head.weight.grad @ self.memory.t().to(head.weight.grad.dtype)

    def eval_logits(self, model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> torch.Tensor:
        head = model.method_modules["head"]
        logits = [head(features[m]) for m in model.modalities]
        n = logits[0].shape[0]
        chunk = self.chunk if self.params.gating == "batch" and self.chunk else n
        return torch.cat([gated_logits([z[s : s + chunk] for z in logits], self.params.gating)
                          for s in range(0, n, chunk)])

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.memory is not None:
            state["memory"] = self.memory.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        if "memory" in state and self.memory is not None:
            self.memory = state["memory"].to(self.memory.device)
