"""MMPareto: boosting multimodal learning with innocent uni-modal assistance (Wei & Hu, ICML 2024).

As the official ``code/MMPareto.py`` (GeWu-Lab/MMPareto_ICML2024), per batch:

* losses: L_mm = CE(fused logits) and, per modality, L_m = CE(head_m(f_m)) with a separate linear
  uni-modal head per modality (added by :meth:`extra_modules`, trained like the rest);
* per encoder m: g_mm = ∇L_mm and g_uni = ∇L_m from separate backward passes; cos = cosine of the two
  over the encoder's whole concatenated gradient;
* cos > 0 → k = (0.5, 0.5); otherwise k = the two-point min-norm solution (MinNormSolver, n = 2):
  γ* = (‖g_uni‖² − ⟨g_mm, g_uni⟩) / ‖g_mm − g_uni‖², clamped to 0.999 / 0.001 at the ends as the solver;
  k = (γ*, 1 − γ*);
* per parameter tensor p of encoder m: new = 2k₀·g_mm,p + 2k₁·g_uni,p; if ‖g_mm,p + g_uni,p‖ (the plain
  summed gradient) is larger than ‖new‖, new is scaled up to that norm; then multiplied by ``gamma`` (1.5);
* heads (the fused head / fusion module and the uni-modal heads) keep the plain gradient of L_mm + Σ L_m.

Works with every fusion: the fused loss's gradient reaches the encoders through whatever fusion module.
More than two modalities would work the same way per encoder; like the other comparators it is refused.

Departures from the official code: (1) the gradients come from three ``torch.autograd.grad`` passes (one
per loss) and the heads' gradient is their sum, instead of three recording passes plus a fourth backward
of the summed loss — the same numbers up to float summation order, one backward pass cheaper; (2) a
parameter whose recombined gradient is exactly zero is left at zero (the official 0/0 would give NaN).
Not reproduced: BalanceBenchmark's version never clears gradients between its losses, so its cosine is
always 1 and the min-norm branch never acts; here each loss's gradient is taken on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, Method
from drl_tune.models import MultimodalClassifier


@dataclass
class MMParetoParams:
    gamma: float = param(1.5, "γ that scales the encoders' recombined gradients (official 1.5)", gt=0)

    def __post_init__(self) -> None:
        check_fields(self, "mmpareto.")  # the numbers' domains are declared on the fields (ground/domains.py)


def min_norm_two(v1v1: float, v1v2: float, v2v2: float) -> float:
    """Weight c of x₁ in min_c ‖c·x₁ + (1 − c)·x₂‖² (MinNormSolver._min_norm_element_from2)."""
    if v1v2 >= v1v1:
        return 0.999
    if v1v2 >= v2v2:
        return 0.001
    return (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)


def pareto_weights(g_mm: torch.Tensor, g_uni: torch.Tensor) -> tuple[float, float, float]:
    """(k_mm, k_uni, cos) for one encoder's flattened gradients of the fused and its uni-modal loss."""
    g_mm, g_uni = g_mm.double(), g_uni.double()
    cos = float(F.cosine_similarity(g_mm, g_uni, dim=0))
    if cos > 0:
        return 0.5, 0.5, cos
    c = min_norm_two(float(g_mm @ g_mm), float(g_mm @ g_uni), float(g_uni @ g_uni))
    return c, 1.0 - c, cos


def combine(g_mm: torch.Tensor, g_uni: torch.Tensor, k: tuple[float, float], gamma: float) -> torch.Tensor:
    """The official per-tensor recombination: 2k₀g_mm + 2k₁g_uni, raised to ‖g_mm + g_uni‖ if smaller, ×γ."""
    new = 2.0 * k[0] * g_mm + 2.0 * k[1] * g_uni
    new_norm = torch.linalg.vector_norm(new)
    if new_norm == 0:
        return new * gamma
    diff = torch.linalg.vector_norm(g_mm + g_uni) / new_norm
    return (new * diff * gamma) if diff > 1 else new * gamma


class MMPareto(Method):
    name = "mmpareto"
    modalities = 2  # the authors' rule compares an audio-visual pair
    Params = MMParetoParams
    params: MMParetoParams

    def __init__(self, params: MMParetoParams) -> None:
        super().__init__(params)
        self._cos: dict[str, list[float]] = {}

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {f"head_{m}": nn.Linear(model.feature_width(m), n_classes) for m in model.modalities}

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self._cos = {m: [] for m in model.modalities}

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.encoded(model, batch)
        if modified is None:
            return None
        features, labels = modified
        heads = model.method_modules
        loss_mm = F.cross_entropy(model.fuse(features), labels)
        losses = {m: F.cross_entropy(heads[f"head_{m}"](features[m]), labels) for m in model.modalities}
        total = loss_mm + sum(losses.values())
        if not torch.isfinite(total):
            return total.detach()
        params = [p for p in model.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(params)}
        # one gradient per loss (each taken on its own; nothing accumulates between them)
        grads_mm = torch.autograd.grad(loss_mm, params, retain_graph=True, allow_unused=True)
        summed = [None if g is None else g.clone() for g in grads_mm]
        names = list(losses)
        for j, m in enumerate(names):
            grads_m = torch.autograd.grad(losses[m], params, retain_graph=j < len(names) - 1, allow_unused=True)
            encoder_ids = {id(p) for p in model.encoders[m].parameters()}
            enc = [(i, p) for i, p in enumerate(params) if id(p) in encoder_ids]
            for i, g in enumerate(grads_m):
                if g is not None and id(params[i]) not in encoder_ids:
                    summed[i] = g.clone() if summed[i] is None else summed[i] + g
            mm = [grads_mm[i] if grads_mm[i] is not None else torch.zeros_like(p) for i, p in enc]
            uni = [grads_m[i] if grads_m[i] is not None else torch.zeros_like(p) for i, p in enc]
            k0, k1, cos = pareto_weights(torch.cat([g.flatten() for g in mm]), torch.cat([g.flatten() for g in uni]))
            self._cos[m].append(cos)
            for (i, _), gm, gu in zip(enc, mm, uni, strict=True):
                summed[i] = combine(gm, gu, (k0, k1), self.params.gamma)
        for p in params:
            g = summed[index[id(p)]]
            p.grad = None if g is None else g
        return total.detach()

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        metrics = {}
        for m, values in self._cos.items():
            if values:
                metrics[f"diag/cos_{m}"] = sum(values) / len(values)
                metrics[f"diag/conflict_{m}"] = sum(v <= 0 for v in values) / len(values)
        return metrics
