"""PMR: prototypical modal rebalance (Fan, Xu, Wei, Hu et al., CVPR 2023).

As the official ``main_Prototype_grad.py`` (fanyunfeng-bit/Modal-Imbalance-PMR at 1e5c79b, ``--modulation
Proto``):

* prototypes, before every epoch (``calculate_prototype``): per modality and class, the mean of the
  eval-mode pooled features over the first len(loader) // 10 batches of a freshly shuffled training loader
  (at least one batch); from the third epoch on (the official call after epoch e blends when e > 0)
  blended with the previous ones, p = (1 − μ)·p_new + μ·p_old (μ = ``momentum``, ``--momentum_coef``);
* per batch, prototype logits of modality m = −‖h_m − p_{m,c}‖ (Euclidean, ``EU_dist``, line 69); the
  batch-summed true-class confidence score_m = Σ_i softmax(prototype logits_m)[i, y_i]; ρ = score_1 / score_2;
* while ``modulation_starts`` ≤ epoch ≤ ``modulation_ends``: loss = CE(fused) + α·CE(prototype logits of
  the weaker modality) — the second modality's when ρ > 1, the first's when ρ < 1, nothing on a tie; α is
  fixed (``--alpha``), not a function of ρ. Outside the window, plain CE. The prototypes are constants: the
  prototype term's gradient reaches only the weaker modality's encoder.

Defaults are the script's argparse defaults (α 1.0, μ 0.2, window 0–100: lines 39 and 47–49); its ``bash.sh``
runs α 0.5–5 and μ 0–0.5 (mostly μ = 0). The rule compares a pair: two modalities only (BalanceBenchmark's
three-modality PMR is another rule); the first modality plays "audio". It reads only features, so every fusion
works. Cost: one eval-mode pass over a tenth of the training set per epoch.

Departures from the official code: (1) a class absent from the prototype batches gets 0/0 = NaN officially
(``calculate_prototype``, ``audio_prototypes[c, :] /= count_class[c]``), which then poisons every later
blend; here it keeps its previous prototype, or, before there is one, the mean of all sampled features (a
point that favours no class); ``diag/proto_absent`` counts such classes; (2) the prototype batches are a
random subset of the same size drawn from (seed, epoch), not the first batches of a reshuffled loader — the
same distribution, reproducible on resume without extra state; (3) the distance is
sqrt(max(Σ(h − p)², 1e-12)): the official ``torch.sqrt(torch.dot(d, d))`` (line 73) has a NaN gradient where
a feature equals a prototype; (4) the script's default ``--modulation OGM_GE`` (line 26) has no branch there
and trains plain CE; this file is the ``Proto`` branch; (5) the unused ``--temperature`` and
``--proto_update_freq`` (lines 30, 40) are not parameters; (6) the prototype features are of un-augmented
inputs (``ctx.features``); the official reads them through the training loader, whose ``CramedDataset``
random-crops and flips frames in train mode (with the data's ``augment`` off, as by default here, the two
agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import (
    EpochContext,
    EpochMeans,
    Method,
    batch_score_tensors,
    check_window,
)
from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class PMRParams:
    alpha: float = param(1.0, "α: weight of the weaker modality's prototype cross-entropy", ge=0)
    momentum: float = param(0.2, "μ: share of the previous prototypes in each update (official `momentum_coef`)",
                            ge=0, le=1)
    modulation_starts: int = param(0, "first epoch the prototype term acts (0-based)", ge=0)
    modulation_ends: int = param(100, "last epoch the prototype term acts", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "pmr.")  # the numbers' domains are declared on the fields (ground/domains.py)
        check_window(self, "pmr.")


def class_means(features: np.ndarray, labels: np.ndarray, n_classes: int,
                fallback: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Per-class mean of ``features`` [N, D]; an absent class takes its ``fallback`` row (previous prototype),
    or the mean of all rows when there is none. Returns the means and the number of absent classes."""
    features = features.astype(np.float64)
    counts = np.bincount(labels, minlength=n_classes)
    sums = np.zeros((n_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    absent = counts == 0
    means = sums / np.maximum(counts, 1)[:, None]
    means[absent] = fallback[absent] if fallback is not None else features.mean(axis=0)
    return means, int(absent.sum())


def prototype_sample(n_train: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Sorted indices of len(loader) // 10 (at least 1) random training batches, drawn from (seed, epoch)."""
    n_batches = math.ceil(n_train / batch_size)
    count = min(max(n_batches // 10, 1) * batch_size, n_train)
    return np.sort(np.random.default_rng([seed, epoch]).permutation(n_train)[:count])


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """−Euclidean distance of every sample to every class prototype [B, C]."""
    diff = features.unsqueeze(1) - prototypes.unsqueeze(0).to(features.dtype)
    return -diff.pow(2).sum(dim=2).clamp_min(1e-12).sqrt()


class PMR(Method):
    name = "pmr"
    modalities = 2  # ρ compares a pair
    Params = PMRParams
    params: PMRParams

    def __init__(self, params: PMRParams) -> None:
        super().__init__(params)
        self.prototypes: dict[str, torch.Tensor] = {}
        self.epoch = 0
        self._absent = 0
        self._diag = EpochMeans()  # diag/rho and diag/weak_<m> (the share of steps m got the prototype term)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch
        self._diag.reset()
        indices = prototype_sample(ctx.n_train, ctx.batch_size, ctx.seed, ctx.epoch)
        feats, labels = ctx.features("train", indices)
        blend = ctx.epoch >= 2 and bool(self.prototypes)
        device = next(model.parameters()).device
        new, absent = {}, 0
        for m in model.modalities:
            old = self.prototypes[m].double().cpu().numpy() if self.prototypes else None
            means, missing = class_means(feats[m], labels, ctx.n_classes, old)
            absent = max(absent, missing)
            p = torch.as_tensor(means, dtype=torch.float32)
            if blend:
                p = (1 - self.params.momentum) * p + self.params.momentum * self.prototypes[m].cpu()
            new[m] = p.to(device)
        self.prototypes, self._absent = new, absent

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(outputs.logits, labels)
        first, second = outputs.features
        proto = {m: prototype_logits(f, self.prototypes[m]) for m, f in outputs.features.items()}
        with torch.no_grad():
            scores = batch_score_tensors(proto, labels)
            rho = scores[first] / scores[second]
        self._diag.add("rho", rho)
        if not self.params.modulation_starts <= self.epoch <= self.params.modulation_ends:
            self._diag.add(f"weak_{first}", 0.0)
            self._diag.add(f"weak_{second}", 0.0)
            return ce
        # ρ > 1: the first modality leads, the second gets the prototype term; ρ < 1 the other way; a tie: none
        weak_second = (rho > 1).to(ce.dtype)
        weak_first = (rho < 1).to(ce.dtype)
        self._diag.add(f"weak_{second}", weak_second)
        self._diag.add(f"weak_{first}", weak_first)
        alpha = self.params.alpha
        return (ce + alpha * weak_second * F.cross_entropy(proto[second], labels)
                + alpha * weak_first * F.cross_entropy(proto[first], labels))

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return {"diag/proto_absent": float(self._absent), **self._diag.means()}

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": {m: p.detach().cpu() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prototypes = {m: p.clone() for m, p in state["prototypes"].items()}
