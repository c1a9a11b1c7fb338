"""AGM: adaptive gradient modulation (Li, Li, Hu, Lei, Li & Zhou, ICCV 2023).

As the official ``run/CREMAD_main.py`` (``train``) and ``model/CREMAD_net.py`` (``GradMod``), read at
lihong2303/AGM (77670a4 and b8b3a43; the issue's second address for the authors' code), per batch, with the first
modality in the role of "audio" (a):

* f(a, v) is the fused output in train mode; f(a, 0) and f(0, v) are the same model's outputs in eval mode
  with the other modality's *input* zeroed (with gradient); mono-modal outputs
  m_a = ½(f(a, v) − f(0, v) + f(a, 0)) and m_v = ½(f(a, v) − f(a, 0) + f(0, v)), so m_a + m_v = f(a, v)
  (``GradMod.forward``, lines 57–68; the official f(0, 0) pass is computed but enters nothing, so it is not
  run here);
* s_m = batch mean of −log softmax(m_m)[y] (probabilities below 1e-8 count as 1e-8); ratio_a = exp(s_v − s_a),
  ratio_v = exp(s_a − s_v); the reference ratios use the running means S_m of s_m over every step of the run so
  far (before this step's update; S starts at 0): ref_a = exp(S_v − S_a);
  coeff_m = exp(α·min(ref_m − ratio_m, 10)) — a modality doing better than its reference is damped, one doing
  worse is boosted (``train``, lines 130–155);
* loss = CE(m_a + m_v); the backward pass multiplies the gradient reaching m_a by coeff_a and the one reaching
  m_v by coeff_v (the official full backward hooks on the identity modules after m_a and m_v, ``GradMod``
  lines 42–55). The encoders, through f(a, v), f(a, 0) and f(0, v), and the head get the correspondingly
  weighted gradients;
* the coefficients are updated while ``modulation_starts`` ≤ epoch ≤ ``modulation_ends``; after the window the
  last ones stay in force (the official ``update_scale``, lines 159–166, is not called again); the running
  means update on every step;
* after the backward pass, when any entry of the fused output layer's weight gradient leaves [−1, 1], every
  gradient is clipped to total norm 1 (``clip_grad_norm_(model.parameters(), 1.0)``).

``alpha`` is α (``--alpha``, default 1.0; the README's AV-MNIST run uses 2.5). The official epochs count from
1 and its window defaults to 0–20, i.e. the first 20 epochs; here epochs count from 0, so the same window is
0–19. Two modalities only: every official script defines m_a and m_v for a pair (MOSEI: text and audio); a
Shapley split over N modalities would need 2^N forward passes. Any fusion works (the zero-input passes and the
gradient scaling need no per-modality head). Cost: each encoder runs a second, eval-mode forward and backward
pass on its real input (and one on a single zero sample).

Departures from the official code: (1) the zero inputs' eval-mode encoder outputs are the same for every
sample, so each is computed once per batch and broadcast (the same value and gradient); (2) the running means
count the steps actually taken (the official ``iteration = (epoch − 1)·len(loader) + step + 1``, line 48, also
counts the last batch of one that this engine skips); (3) for sum fusion the clipping rule reads every
modality's output layer (the official model has concat fusion only, ``fusion_module.fc_out``). Not
reproduced: BalanceBenchmark's ``AGMTrainer`` (at 1d19353) inverts the sign (ratio_m = exp(s_m − mean s), the
reference likewise, so a modality ahead of its reference is boosted), runs the zero-input passes without
gradient, multiplies the coefficients into the encoders' non-bias gradients instead of scaling m_a and m_v,
caps the exponent at 7 and clips at norm 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, check_window
from drl_tune.models import MultimodalClassifier
from drl_tune.models.fusion import SumFusion


@dataclass
class AGMParams:
    alpha: float = param(1.0, "α of AGM's coefficient exp(α·min(reference − ratio, 10))", gt=0)
    # 0-based epochs (the official 1-based window 0–20 = 0–19 here)
    modulation_starts: int = param(0, "first epoch whose coefficients are updated (0-based)", ge=0)
    modulation_ends: int = param(19, "last epoch whose coefficients are updated (the last ones stay in force after)",
                                 ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "agm.")  # the numbers' domains are declared on the fields (ground/domains.py)
        check_window(self, "agm.")


def agm_coefficients(s: tuple[float, float], running: tuple[float, float], alpha: float) -> tuple[float, float]:
    """(coeff_a, coeff_v) from this batch's scores s and the running means before this batch."""
    ratio_a, ratio_v = math.exp(s[1] - s[0]), math.exp(s[0] - s[1])
    ref_a, ref_v = math.exp(running[1] - running[0]), math.exp(running[0] - running[1])
    return math.exp(alpha * min(ref_a - ratio_a, 10.0)), math.exp(alpha * min(ref_v - ratio_v, 10.0))


def mono_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Batch mean of −log p(y), each p floored at 1e-8 (the official score_audio / score_visual)."""
    p = torch.softmax(logits.detach().double(), dim=1).gather(1, labels.view(-1, 1))
    return float(-torch.log(p.clamp_min(1e-8)).mean())


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``coeff`` backward (the official backward hook)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.coeff, None


def clip_if_head_grad_large(model: MultimodalClassifier) -> bool:
    """The official rule: when an entry of the fused output layer's weight gradient leaves [−1, 1], clip every
    gradient to total norm 1. Returns whether it clipped."""
    fusion = model.fusion
    weights = ([fc.weight for fc in fusion.layers()] if isinstance(fusion, SumFusion)
               else [cast(nn.Linear, fusion.fc_out).weight])  # every other fusion ends in its fc_out layer
    if not any(w.grad is not None and bool((w.grad.abs() > 1).any()) for w in weights):
        return False
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    return True


class AGM(Method):
    name = "agm"
    modalities = 2  # m_a and m_v are defined for a pair
    Params = AGMParams
    params: AGMParams

    def __init__(self, params: AGMParams) -> None:
        super().__init__(params)
        self.coeffs = (1.0, 1.0)  # in force (the official scale_a, scale_v)
        self.running = (0.0, 0.0)  # S_a, S_v
        self.steps = 0
        self.epoch = 0
        self._diag = EpochMeans()  # diag/coeff_<m>: the coefficients in force, per step

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch
        self._diag.reset()

    def mono_outputs(self, model: MultimodalClassifier, inputs: dict[str, torch.Tensor],
                     total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_a, m_v) from f(a, v) = ``total`` and the eval-mode zero-input passes."""
        a, v = model.modalities
        was_training = model.training
        model.eval()
        try:
            real = {m: model.encoders[m](inputs[m]) for m in (a, v)}
            zero = {m: model.encoders[m](torch.zeros_like(inputs[m][:1])).expand_as(real[m]) for m in (a, v)}
            pad_v = model.fuse({a: real[a], v: zero[v]})  # f(a, 0)
            pad_a = model.fuse({a: zero[a], v: real[v]})  # f(0, v)
        finally:
            model.train(was_training)
        return 0.5 * (total - pad_a + pad_v), 0.5 * (total - pad_v + pad_a)

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.modify_features(model.encode(batch.inputs), batch.labels, batch)
        if modified is None:
            return None
        features, labels = modified
        m_a, m_v = self.mono_outputs(model, batch.inputs, model.fuse(features))
        s = (mono_score(m_a, labels), mono_score(m_v, labels))
        coeffs = agm_coefficients(s, self.running, self.params.alpha)
        self.steps += 1
        t = self.steps
        self.running = (self.running[0] * (t - 1) / t + s[0] / t, self.running[1] * (t - 1) / t + s[1] / t)
        if self.params.modulation_starts <= self.epoch <= self.params.modulation_ends:
            self.coeffs = coeffs
        for m, coeff in zip(model.modalities, self.coeffs, strict=True):
            self._diag.add(f"coeff_{m}", coeff)
        loss = F.cross_entropy(_ScaleGrad.apply(m_a, self.coeffs[0]) + _ScaleGrad.apply(m_v, self.coeffs[1]), labels)
        if not torch.isfinite(loss):
            return loss.detach()
        loss.backward()
        clip_if_head_grad_large(model)
        return loss.detach()

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return {**{f"diag/score_{m}": self.running[i] for i, m in enumerate(model.modalities)}, **self._diag.means()}

    def state_dict(self) -> dict[str, Any]:
        return {"coeffs": list(self.coeffs), "running": list(self.running), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coeffs = (float(state["coeffs"][0]), float(state["coeffs"][1]))
        self.running = (float(state["running"][0]), float(state["running"][1]))
        self.steps = int(state["steps"])
