"""MBSD (Liu et al., 2023 — the citation BalanceBenchmark's README gives, in its table ``images/Algorithms.jpeg``:
"MBSD [Liu et al., 2023]", an objective method with a performance-score indicator, two modalities; the repository
names neither the title nor the venue).

No official code was found; the reference is BalanceBenchmark's reading (GeWu-Lab/BalanceBenchmark @4c1482f:
``balancemm/trainer/MBSD_trainer.py``; the uni-modal logits of ``balancemm/models/avclassify_model.py``). Per batch,
as that code trains it:

* fused logits from the concat head, and uni-modal logits off it, z_m = h_m·W[:, cols_m]ᵀ + b/M
  (``unimodality_calculate``, model lines 277–301); p_m = softmax(z_m) (trainer lines 125–126);
* for a pair of modalities (a, b), per sample i (lines 134–151): the true-class confidences p_a = p_a[i, y_i] and
  p_b; ps_i = max(p_a, p_b), pw_i = min(p_a, p_b); a weight w_i = ps_i − pw_i when at least one of the two
  modalities predicts y_i (argmax), else 0;
* KL_i = ``F.kl_div(ps, pw, reduction='none')`` (line 153) = pw_i·(log pw_i − ps_i): ``kl_div`` takes its input
  as a log-probability, and the code passes the probability ps itself, so this is a per-sample expression of the
  two scalars, not a divergence between distributions; RS_i = (1/C)·Σ_c (z_a − z_b)²_{i,c} on the *logits* with
  two modalities (line 132), on the *probabilities* (p_a − p_b) with three (lines 197–199);
* pair terms KL = Σ_i w_i·KL_i / B and RS = Σ_i w_i·RS_i / B (lines 154–158); w, ps and pw are written into
  tensors by index assignment, which keeps their graph (checked in plain torch 2.11; the repository pins
  1.12.1), so the gradient also flows through the weight and both confidences;
* while ``modulation_starts`` ≤ epoch ≤ ``modulation_ends`` (line 129): loss = CE(fused) + Σ_m CE(z_m) + KL + RS
  for two modalities (line 159); for three, the pair terms of (1, 2), (1, 3), (2, 3) each averaged over the three
  pairs (lines 184–224). Outside the window: CE(fused) alone (lines 226–228).

Defaults from ``configs/trainer_config.yaml`` lines 47–50 (window 0–80 of the 30 epochs of
``configs/global_config.yaml`` line 27: always on; its ``modality: 2`` is not read, trainer lines 22–23).
``rs_on``: ``official`` (logits for two modalities, probabilities for three or more, as the code's two
branches), ``logits`` or ``probs`` for both.
For more than three modalities the code's three-modality branch silently ignores the fourth and later (it reads
``key[0..2]`` only); here every pair is averaged and every modality's CE is added (our extension). One modality is
refused (there is no pair). Concat fusion (``unimodality_calculate`` computes z_m only for concat); ``sum`` works
too (each modality's own layer), FiLM and gated are refused. ``train/loss`` is the summed loss;
``diag/mbsd_kl``, ``diag/mbsd_rs``, ``diag/mbsd_w`` are the epoch means of the pair-averaged KL and RS terms and of
the mean weight w.

What the code at @4c1482f does not run as written: (1) line 111 calls ``model.Unimodality_Calculate()``, renamed
``unimodality_calculate`` in 39ed569 (``MultiModalParallel`` line 88, ``BaseClassifierModel`` line 277), so the
first training step raises AttributeError; the call only recomputes what the forward pass already computed
(model line 274), so this file does without it; (2) ``encoder_process`` (model line 247) calls ``self.resnet``,
renamed ``resnet_process`` (line 214): ResNet18 encoders raise AttributeError; our encoders stand in.
Departures: (3) the per-sample Python loop (lines 147–151) is vectorised: max/min become ``torch.maximum`` /
``torch.minimum``, the same values (on an exact tie Python's ``max`` sends the gradient to the first modality,
``torch.maximum`` splits it; w is 0 there either way); (4) the code's ``optimizer.step(closure)`` (line 69) runs
the closure once, as the engine's plain step after the backward.

The paper: its title, venue and equations could not be checked (only "Liu et al., 2023" is given); nothing here is
taken from it, and whether it weighs the terms, or means a true KL divergence by its distillation term, is
unknown.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

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

RS_SPACES = ("official", "logits", "probs")


@dataclass
class MBSDParams:
    rs_on: str = param("official", "RS term's space: `official` (logits for two modalities, softmax probabilities "
                       "for three or more, as BalanceBenchmark's two branches), `logits`, `probs`", choices=RS_SPACES)
    modulation_starts: int = param(0, "first epoch the uni-modal CEs and the pair terms act (0-based)", ge=0)
    modulation_ends: int = param(80, "last epoch the uni-modal CEs and the pair terms act", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "mbsd.")
        check_window(self, "mbsd.")


def pair_terms(za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor, on_logits: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KL, RS, mean w) of one pair of uni-modal logits [B, C], as the code's two-modality branch."""
    pa, pb = torch.softmax(za, dim=1), torch.softmax(zb, dim=1)
    index = labels.view(-1, 1)
    ca, cb = pa.gather(1, index).squeeze(1), pb.gather(1, index).squeeze(1)
    strong, weak = torch.maximum(ca, cb), torch.minimum(ca, cb)
    correct = (pa.argmax(dim=1) == labels) | (pb.argmax(dim=1) == labels)
    w = torch.where(correct, strong - weak, torch.zeros_like(strong))
    kl = F.kl_div(strong, weak, reduction="none")  # = weak·(log weak − strong), as the code calls it
    diff = za - zb if on_logits else pa - pb
    rs = diff.pow(2).sum(dim=1) / za.shape[1]
    batch = za.shape[0]
    return (w * kl).sum() / batch, (w * rs).sum() / batch, w.detach().mean()


def mbsd_loss(fused: torch.Tensor, unimodal: list[torch.Tensor], labels: torch.Tensor, rs_on: str = "official"
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE(fused) + Σ_m CE(z_m) + the pair-averaged KL and RS terms; also the terms (detached) for diagnostics."""
    on_logits = rs_on == "logits" or (rs_on == "official" and len(unimodal) == 2)
    pairs = [pair_terms(unimodal[i], unimodal[j], labels, on_logits)
             for i, j in itertools.combinations(range(len(unimodal)), 2)]
    kl = torch.stack([p[0] for p in pairs]).mean()
    rs = torch.stack([p[1] for p in pairs]).mean()
    loss = F.cross_entropy(fused, labels)
    for z in unimodal:
        loss = loss + F.cross_entropy(z, labels)
    loss = loss + rs + kl
    return loss, {"mbsd_kl": kl.detach(), "mbsd_rs": rs.detach(),
                  "mbsd_w": torch.stack([p[2] for p in pairs]).mean()}


class MBSD(Method):
    name = "mbsd"
    Params = MBSDParams
    min_modalities = 2  # it compares pairs of modalities
    params: MBSDParams

    def __init__(self, params: MBSDParams) -> None:
        super().__init__(params)
        self.epoch = 0
        self._diag = EpochMeans()

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch
        self._diag.reset()

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.encoded(model, batch)
        if modified is None:
            return None
        features, labels = modified
        fused = model.fuse(features)
        if self.params.modulation_starts <= self.epoch <= self.params.modulation_ends:
            logits = unimodal_logits(model, features)
            loss, terms = mbsd_loss(fused, [logits[m] for m in model.modalities], labels, self.params.rs_on)
            for name, value in terms.items():
                self._diag.add(name, value)
        else:
            loss = F.cross_entropy(fused, labels)
        if not torch.isfinite(loss):
            return loss.detach()  # the engine stops the run with a clear error
        loss.backward()
        return loss.detach()

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless across epochs: the window reads the epoch the engine passes
