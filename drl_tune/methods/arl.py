"""ARL: asymmetric representation learning ("Improving Multimodal Learning via Imbalanced Learning", ICCV 2025).

The official code's README names the paper by this title and links arXiv 2507.10203, whose authors are Shicai Wei,
Chunbo Luo and Yang Luo. As the official ``main_arl_variance.py`` (shicaiwei123/ICCV2025-ARL @358af4f; run by
``cramed_arl.sh``), with the model ``AVClassifier_AUXI_Weight`` (``models/basic_model.py`` lines 137–215),
``ConcatFusion_AUXI`` (``models/fusion_modules.py`` lines 41–52) and ``GradScale`` in ``ResNet_weight``
(``models/backbone.py`` lines 71–86, 305–352), per batch, with the first modality in the role of "audio" (a), the
second of "visual" (v):

* uni-modal logits off the fused head, which they share: concat ``z_m = fc_out([f_m; 0])`` = W_m·f_m + b, the
  modality's weight columns and the *whole* bias (``ConcatFusion_AUXI``; not the b/2 of OGM-GE's split), sum
  ``z_m = fc_m(f_m)`` (``SumFusion_AUXI``, lines 16–26); FiLM and gated fusion are refused (the official
  ``FiLM_AUXI``/``GatedFusion_AUXI`` are other architectures, with self-modulated uni-modal paths of their own);
* loss = CE(fused) + w·(CE(z_a) + CE(z_v)) (``train_epoch`` lines 109–111, 150–162): w = 1 while epoch ≤ ``start``
  (the warm-up), w = γ after; the fused term reaches the head and both encoders, each uni-modal term the head and
  its own encoder;
* after the warm-up (epoch > ``start``, 0-based as the official ``range(args.epochs)``; backbone lines 325, 345),
  the gradient reaching each encoder's output is multiplied by 1 + c_m (``GradScale.backward``: ``grad_output +
  grad_output * weight``; here on the pooled features, the same since pooling is linear); the head's gradient is
  not scaled. The coefficients (lines 114–153), from the batch's detached uni-modal logits: the logit magnitude
  s_m = Σ_k mean_i |z_m[i, k]| normalised to s_a + s_v = 1; the mean prediction entropy H_m = mean_i Σ_k
  −p log(p + 1e-16) of p = softmax(z_m), normalised to H_a + H_v = 1 and floored at 0.3 (``torch.clamp(·, 0.3)``);
  u_m = 1/H_m normalised to u_a + u_v = 1; then (c_a, c_v) = softmax(T·[s_v·u_a, s_a·u_v]) (line 152, ``weight``);
* after every backward pass all gradients are clipped to total norm 40 (line 171), warm-up included.

Defaults: γ = 4.0 and T = 8.0 from ``cramed_arl.sh`` (the argparse defaults, lines 65 and 68, are γ 1.0 and T 8.0;
``ave_arl.sh`` runs γ 5.0, T 4.0, ``ks_arl.sh`` γ 3.0, T 4.0), ``start`` = 5 (``--start``, line 69; no script
changes it). The official optimiser (SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, lr ×0.1 from the 70th epoch,
batch 64, 100 epochs; lines 43–49, 271–272) is the run's own here, as for every method.

What the released code does differently, and what ``coefficients`` chooses:

* the coefficients of line 152 are printed (lines 155–157) and never used: nothing assigns ``args.audio_weight``
  or ``args.visual_weight`` but the warm-up branch (lines 163–164, both 0.5), so after the warm-up the released
  code would (were its GradScale to run, next point) scale *both* encoders' gradients by 1.5 — no asymmetry.
  ``coefficients: computed`` (the default) feeds line 152's c_a, c_v to the gradient scaling: the ARL of the paper
  and of the README ("determine the weight for ARL (see line 114 in main_arl_variance.py)", GradScale "to modify the
  backward gradient"); ``released`` uses the 0.5 the released code leaves in force. Where the assignment would go
  is not in the code: ``computed`` scales a batch's gradients by that batch's coefficients (an assignment after
  line 152 would act from the next batch on, since GradScale reads the weight during the forward pass);
* the released code cannot train past the warm-up at all: ``main`` raises ``EOFError`` right after building the
  model (line 262), and ``GradScale.backward`` does ``weight = ctx.saved_tensors`` (line 81), a *tuple*, so
  ``grad_output * weight`` (line 83) raises ``TypeError`` at the first ARL step — under torch 1.11.0 (the README's
  version) and 2.11 alike, as we ran it; the Swin backbone's ``GradScale`` (``models/swin_transformer.py`` line
  496) unpacks correctly. So the paper's numbers came from code other than this commit;
* the README warns that PyTorch ≥ 2.0 "may lead to significant performance decline" and that "the reason is
  unclear". Of torch 2.0's behaviour changes, the one that changes a training rule elsewhere (MLA's
  ``momentum_all``) does not apply here: ``optimizer.zero_grad()`` (line 104) sets gradients to None by default
  from 2.0 (pytorch/pytorch#92731), and SGD skips a parameter whose gradient is None where 1.x applied momentum and
  weight decay to a zero gradient — but every ARL parameter gets a gradient at every step (the fused term reaches
  the whole head and both encoders), so zeroed and dropped gradients give the same update. The other defaults on
  this path that changed after 1.11 change only rounding: the foreach SGD and ``clip_grad_norm_`` kernels, and TF32
  matmuls turned off on Ampere GPUs in 1.12 (the head's Linear only; convolutions keep TF32). A tiny model running
  the released step (``GradScale`` unpacked) under torch 1.11.0 and 2.11 on CPU ends with the same parameters to
  1e-7. So nothing in this code explains the decline, and there is no pre-2.0 behaviour to offer as an option;
  tests/methods/test_arl.py shows that the two zero_grad behaviours give the same ARL steps (and differ for a
  parameter reached at one step only), and that the released backward fails.

Departures: (1) the official ``acc_a + acc_v != 0`` guard on γ (line 150; last epoch's uni-modal validation
accuracies) is dropped — it only matters if both were exactly 0; (2) s_m and H_m are normalised by their sum only
where the sum is positive, 0.5 each otherwise (the official 0/0 gives NaN); (3) the model's initialisation, data
pipeline and optimiser are the run's own. Two modalities only: the coefficients compare a pair (every official
script is audio-visual). Diagnostics: ``diag/coeff_<m>`` (c_m in force; 0 during the warm-up), ``diag/loss_<m>``
(CE(z_m)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, require_unimodal_head
from drl_tune.models import MultimodalClassifier
from drl_tune.models.fusion import ConcatFusion, SumFusion

COEFFICIENTS = ("computed", "released")
ENTROPY_FLOOR = 0.3  # torch.clamp(H_n, 0.3), main_arl_variance.py lines 128-129
MAX_NORM = 40.0  # clip_grad_norm_(model.parameters(), max_norm=40), line 171
RELEASED_WEIGHT = 0.5  # args.audio_weight = args.visual_weight = 0.5, lines 163-164


@dataclass
class ARLParams:
    gamma: float = param(4.0, "γ: weight of the two uni-modal cross-entropies after the warm-up (cramed_arl.sh; "
                         "argparse default 1.0, AVE 5.0, KS 3.0)", ge=0)
    temperature: float = param(8.0, "T of the coefficients' softmax (official `--T`; AVE and KS scripts 4.0)", gt=0)
    start: int = param(5, "warm-up: ARL's γ and gradient scaling act from the epoch after this one (0-based; "
                       "official `--start`)", ge=0)
    coefficients: str = param("computed", "`computed`: each encoder's gradient ×(1 + c_m) with the coefficients the "
                              "official code computes (line 152); `released`: ×1.5 for both, the 0.5 the released "
                              "code leaves in force (it never assigns the computed ones)", choices=COEFFICIENTS)

    def __post_init__(self) -> None:
        check_fields(self, "arl.")


def head_logits(model: MultimodalClassifier, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's logits off the fused head as ``ConcatFusion_AUXI``/``SumFusion_AUXI``: concat fc_out([f_m; 0])
    = W_m·f_m + b (the whole bias), sum fc_m(f_m)."""
    fusion = model.fusion
    if isinstance(fusion, SumFusion):
        return {m: fc(features[m]) for fc, m in zip(fusion.layers(), model.modalities, strict=True)}
    if isinstance(fusion, ConcatFusion):
        weight, bias = fusion.fc_out.weight, fusion.fc_out.bias
        out, start = {}, 0
        for m in model.modalities:
            width = features[m].shape[1]
            out[m] = F.linear(features[m], weight[:, start : start + width], bias)
            start += width
        return out
    require_unimodal_head(model, "arl")
    raise AssertionError("unreachable")


def _shares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) / (x + y); 0.5 each where the sum is not positive (the official 0/0 is NaN)."""
    total = x + y
    ok = total > 0
    safe, half = torch.where(ok, total, 1.0), torch.full_like(total, 0.5)
    return torch.where(ok, x / safe, half), torch.where(ok, y / safe, half)


def arl_coefficients(z_a: torch.Tensor, z_v: torch.Tensor, temperature: float) -> torch.Tensor:
    """[c_a, c_v] of main_arl_variance.py lines 116–153 from the batch's uni-modal logits (no gradient)."""
    with torch.no_grad():
        z_a, z_v = z_a.detach().float(), z_v.detach().float()
        s_a, s_v = _shares(z_a.abs().mean(0).sum(), z_v.abs().mean(0).sum())

        def entropy(z: torch.Tensor) -> torch.Tensor:
            p = torch.softmax(z, dim=1)
            return (-p * torch.log(p + 1e-16)).sum(dim=1).mean()

        h_a, h_v = _shares(entropy(z_a), entropy(z_v))
        u_a, u_v = _shares(1.0 / h_a.clamp(min=ENTROPY_FLOOR), 1.0 / h_v.clamp(min=ENTROPY_FLOOR))
        return torch.softmax(temperature * torch.stack([s_v * u_a, s_a * u_v]), dim=0)


class ARL(Method):
    name = "arl"
    modalities = 2  # the coefficients compare a pair
    Params = ARLParams
    params: ARLParams

    def __init__(self, params: ARLParams) -> None:
        super().__init__(params)
        self.epoch = 0
        self._diag = EpochMeans()  # diag/coeff_<m>, diag/loss_<m>

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch
        self._diag.reset()

    @property
    def active(self) -> bool:
        """After the warm-up: γ weighs the uni-modal terms and the encoders' gradients are scaled."""
        return self.epoch > self.params.start

    def coefficients_for(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """[c_a, c_v] in force for this batch (after the warm-up)."""
        a, v = logits
        if self.params.coefficients == "released":
            return torch.full((2,), RELEASED_WEIGHT, device=logits[a].device)
        return arl_coefficients(logits[a], logits[v], self.params.temperature)

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        modified = self.encoded(model, batch)
        if modified is None:
            return None
        features, labels = modified
        fused = model.fuse(features)
        logits = head_logits(model, features)
        ce = {m: F.cross_entropy(z, labels) for m, z in logits.items()}
        weight = self.params.gamma if self.active else 1.0
        loss = F.cross_entropy(fused, labels) + weight * sum(ce.values())
        if not torch.isfinite(loss):
            return loss.detach()  # the engine stops the run with a clear error
        if self.active:
            coeffs = self.coefficients_for(logits)
            for i, m in enumerate(model.modalities):
                # GradScale after the encoder: the whole gradient reaching f_m (fused and uni-modal paths) × (1 + c_m)
                features[m].register_hook(lambda g, scale=1.0 + coeffs[i]: g * scale.to(g.dtype))
                self._diag.add(f"coeff_{m}", coeffs[i])
        else:
            for m in model.modalities:
                self._diag.add(f"coeff_{m}", 0.0)
        for m, value in ce.items():
            self._diag.add(f"loss_{m}", value)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_NORM)
        return loss.detach()

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}  # the coefficients are per batch; nothing else carries across epochs

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
