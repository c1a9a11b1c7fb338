"""AMCo: adaptive mask co-optimization (Zhou, Liang, Zheng, Xuan & Kumada, ICASSP 2023, "Adaptive Mask
Co-optimization for Modal Dependence in Multimodal Learning").

No official code was found; the reference is BalanceBenchmark's reading (GeWu-Lab/BalanceBenchmark @4c1482f:
``balancemm/trainer/AMCo_trainer.py``, the model ``BaseClassifierAMCoModel`` in
``balancemm/models/avclassify_model.py``). Per batch, as that code trains it:

* uni-modal logits off the concat head, z_m = h_m·W[:, cols_m]ᵀ + b/M (``unimodality_calculate``, model lines
  365–375); the fused logits are their sum (line 378, so Σ_m z_m = the head's output), and the output is a
  trainable C×C linear layer on top, ``linear_star`` (lines 329, 353): out = L*(Σ_m z̃_m). Here L* is added by
  ``extra_modules``;
* a class mask for the batch (trainer lines 73–83): p_t = sin(π/2·min(ε, l)/ε), N = int(p_t·C) of the C class
  positions zeroed at random, then l += epoch/10 (0-based epoch), with l = 0 at each epoch's start (line 64) —
  so epoch 0 never masks, and in epoch e ≥ 1 the ramp is full (N = C: every logit of the masked modality zeroed)
  from batch ⌈3/e⌉ (0-based) on with ε = 0.3;
* z̃_m = z_m ⊙ mask for every modality flagged *dependent* by the previous batch of the epoch, z̃_m = z_m for the
  others (model lines 376–377; the flags start False each epoch, trainer lines 61–63);
* loss = CE(out) + Σ_m CE(z̃_m) (lines 140–145: ``loss.backward(retain_graph=True)`` then each uni-modal CE's
  backward — one summed gradient), then one optimizer step (line 96);
* after the step, the flags for the next batch (lines 146–155): P = softmax over the *concatenated* logits
  [z̃_1, …, z̃_M] (M·C wide), s_m = Σ_i Σ_{c in m's slice} P[i, c] / B (the batch's share of probability mass on
  m's logits; Σ_m s_m = 1), dependent_m = s_m > σ;
* outside ``modulation_starts`` ≤ epoch ≤ ``modulation_ends`` (lines 127–131, 156–157): no mask and loss =
  CE(out) alone; evaluation always scores L*(Σ_m z_m), unmasked (``validation_step``, lines 303–323).

Defaults from ``configs/trainer_config.yaml`` lines 20–28 (σ 0.5, ε 0.3, window 0–80 of the 30 epochs of
``configs/global_config.yaml`` line 27: always on); ``alpha``, ``method``, ``U`` and ``modality`` there are read
(trainer lines 22–30) but never used, so they are not parameters. The model is concat fusion
(``configs/model_config.yaml`` lines 6–9; ``unimodality_calculate`` computes z_m only for concat); ``sum`` works
too here (z_m = each modality's own layer, Σ_m z_m = fused), FiLM and gated are refused. The rule loops over
modalities, so any number of two or more runs (one modality is refused: it would always be "dependent").
``train/loss`` is the summed loss that is back-propagated (in the window CE(out) + Σ_m CE(z̃_m)).
``diag/p_t``: the epoch's mean mask ratio; ``diag/share_<m>``: mean s_m; ``diag/dependent_<m>``: the share of
the epoch's batches on which m was masked.

What the code at @4c1482f does not run as written, and what this file implements instead:
(1) the trainer expands the mask to [2, C] (lines 81–82, added in c1ce5a8) and the model multiplies it with the
[B, C] logits (line 377): that is one [C] mask per batch only when ``MultiModalParallel`` scatters the keyword
tensors over exactly two GPUs (one [1, C] row per replica; ``train.py`` lines 64–70 wrap the model over every
visible GPU); on one GPU the multiplication raises a size mismatch as soon as a modality is flagged (for B > 2).
Here the mask is one [C] vector for the whole batch — what each replica gets on two GPUs, and what the code
before c1ce5a8 used;
(2) ``encoder_process`` (model line 247) calls ``self.resnet``, which no longer exists (renamed
``resnet_process``, line 214, in 39ed569): every ResNet18 forward raises AttributeError; our encoders stand in;
(3) with gradient accumulation (``grad_accum_steps`` > 1; the config's is 1) line 103 calls ``training_step``
without its mask arguments (TypeError); there is no accumulation here.
Departures: (4) the masked positions are drawn from torch's global generator (checkpointed, so a resumed run
draws the same masks), not ``np.random.shuffle``'s, and only inside the window and when 0 < N < C (the code
shuffles every batch); (5) p_t uses ``math.sin`` (the code's ``np.sin``); (6) the flags stay on the device (the
code's ``bool(...)``, line 154, reads them to the host every batch): the same decisions.

The paper: what could be checked is its abstract (IEEE SPS resource centre, ICASSP 2023): a plug-in module
whose adaptive mask makes dependent modalities harder to learn, so the model fits the others better, while
co-optimization keeps the dependent modalities' performance; experiments on IEMOCAP (four models, +1.14% to
+3.03% accuracy). The paper's own definition of dependence, of the mask (what it masks: logits here, as
BalanceBenchmark's code) and of its schedule could not be checked; nothing here is taken from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import (
    Batch,
    EpochContext,
    EpochMeans,
    Method,
    check_window,
    require_unimodal_head,
    unimodal_logits,
)
from drl_tune.models import MultimodalClassifier


@dataclass
class AMCoParams:
    sigma: float = param(0.5, "σ: a modality whose share of the batch's softmax mass over all modalities' "
                              "concatenated logits exceeds σ is masked in the next batch", ge=0, le=1)
    eps: float = param(0.3, "ε: the mask ratio p_t = sin(π/2·min(ε, l)/ε) is full once l (0 at each epoch's "
                            "start, + epoch/10 per batch) reaches ε", gt=0)
    modulation_starts: int = param(0, "first epoch the mask and the uni-modal losses act (0-based)", ge=0)
    modulation_ends: int = param(80, "last epoch the mask and the uni-modal losses act", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "amco.")
        check_window(self, "amco.")


def mask_ratio(level: float, eps: float) -> float:
    """p_t = sin(π/2 · min(ε, l)/ε) (trainer line 73)."""
    return math.sin(math.pi / 2 * (min(eps, level) / eps))


def masked_count(ratio: float, n_classes: int) -> int:
    """N = int(p_t · C): how many class positions the mask zeroes (line 74)."""
    return int(ratio * n_classes)


def class_mask(n_classes: int, zeroed: int, device: torch.device | None = None) -> torch.Tensor:
    """A [C] float mask with ``zeroed`` zeros at random positions (torch's global generator)."""
    mask = torch.ones(n_classes)
    if 0 < zeroed < n_classes:
        mask[torch.randperm(n_classes)[:zeroed]] = 0.0
    elif zeroed >= n_classes:
        mask.zero_()
    return mask.to(device)


def mass_shares(logits: list[torch.Tensor]) -> torch.Tensor:
    """s_m [M]: the batch mean of the softmax mass over the concatenated logits [z_1, …, z_M] that falls on each
    modality's slice (lines 146–153)."""
    p = torch.softmax(torch.cat(logits, dim=1), dim=1)
    return torch.stack([part.sum() for part in p.split([z.shape[1] for z in logits], dim=1)]) / p.shape[0]


def summed(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_m z_m in the model's modality order (the model's running ``+=``, line 378)."""
    parts = list(logits.values())
    total = parts[0]
    for z in parts[1:]:
        total = total + z
    return total


class AMCo(Method):
    name = "amco"
    Params = AMCoParams
    min_modalities = 2  # it masks the modality the model depends on: one alone is always "dependent"
    params: AMCoParams

    def __init__(self, params: AMCoParams) -> None:
        super().__init__(params)
        self.epoch = 0
        self.level = 0.0  # l: reset at each epoch's start
        # the flags the previous batch set, in the model's modality order (all False at an epoch's start); a device
        # tensor, so no step waits for the GPU to decide the next batch's mask
        self.flags: torch.Tensor | None = None
        self._diag = EpochMeans()

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {"linear_star": nn.Linear(n_classes, n_classes)}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.epoch, self.level = ctx.epoch, 0.0
        self.flags = torch.zeros(len(model.modalities), dtype=torch.bool, device=next(model.parameters()).device)
        self._diag.reset()

    def in_window(self) -> bool:
        return self.params.modulation_starts <= self.epoch <= self.params.modulation_ends

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.encoded(model, batch)
        if modified is None:
            return None
        features, labels = modified
        logits = unimodal_logits(model, features)
        n_classes = next(iter(logits.values())).shape[1]
        ratio = mask_ratio(self.level, self.params.eps)
        self.level += self.epoch / 10
        star = model.method_modules["linear_star"]
        if not self.in_window():
            loss = F.cross_entropy(star(summed(logits)), labels)
            if torch.isfinite(loss):
                loss.backward()
            return loss.detach()
        if self.flags is None:
            self.flags = torch.zeros(len(logits), dtype=torch.bool, device=labels.device)
        self._diag.add("p_t", ratio)
        first = next(iter(logits.values()))
        mask = class_mask(n_classes, masked_count(ratio, n_classes), first.device).to(first.dtype)
        # z̃_m = z_m ⊙ mask where m is flagged, z_m · 1 (the same numbers) elsewhere
        factors = torch.where(self.flags.view(-1, 1), mask.view(1, -1), torch.ones_like(mask).view(1, -1))
        logits = {m: z * factors[i] for i, (m, z) in enumerate(logits.items())}
        for i, m in enumerate(logits):
            self._diag.add(f"dependent_{m}", self.flags[i].float())
        loss = F.cross_entropy(star(summed(logits)), labels)
        for z in logits.values():
            loss = loss + F.cross_entropy(z, labels)
        if not torch.isfinite(loss):
            return loss.detach()  # the engine stops the run with a clear error
        loss.backward()
        with torch.no_grad():
            shares = mass_shares([z.detach().float() for z in logits.values()])
        self.flags = shares > self.params.sigma
        for i, m in enumerate(logits):
            self._diag.add(f"share_{m}", shares[i])
        return loss.detach()

    def eval_logits(self, model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """L*(Σ_m z_m), unmasked (``validation_step``)."""
        return model.method_modules["linear_star"](summed(unimodal_logits(model, features)))

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        # l and the flags restart at every epoch and L* is in the model's state: nothing carries over between epochs
        return {}
