"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

As the official ``main.py`` (GeWu-Lab/OGM-GE_CVPR2022), per batch:

* only the multimodal cross-entropy is back-propagated;
* score_m = Σ_i softmax(out_m)[i, y_i] with the uni-modal logits read off the fused head
  (:func:`~drl_tune.methods.base.unimodal_logits`: concat → weight halves + b/2; sum → the modality's own
  layer); ratio_v = score_v / score_a;
* ratio_v > 1 → coeff_v = 1 − tanh(α·ratio_v), coeff_a = 1; otherwise coeff_a = 1 − tanh(α/ratio_v),
  coeff_v = 1 (so a tie slows audio down);
* while ``modulation_starts`` ≤ epoch ≤ ``modulation_ends``: every 4-D (conv) weight gradient g of an
  encoder becomes coeff·g, and with GE (default) plus noise N(0, std(g) + 1e-8), std of the *unmodulated*
  gradient, for **both** encoders (the un-slowed one gets coeff 1 plus noise).

The modalities play the official roles in the model's order: the first is "audio", the second "visual"
(audio first in every dataset here). FiLM and gated fusion are refused: they have no uni-modal logits.

Sum fusion reads each modality's logits with its own layer's full bias, as the official training path does
(``main.py`` at 343dc1d, ``train_epoch``, the ``fusion_method == 'sum'`` branch: ``+ fc_x.bias`` /
``+ fc_y.bias``); only its ``valid()`` — and the earlier ``main.py`` at 0f64793 in training too — halves it.
``ge: false`` gives plain OGM (the official ``--modulation OGM``).

Departures from the official code: (1) the noise is drawn from torch's global generator (official:
``torch.zeros_like(parms.grad).normal_(...)`` on the default CUDA generator, ``train_epoch``), which the
engine checkpoints, so resumed runs are exact — the same distribution, other numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import EpochContext, EpochMeans, HeadScoredMethod, check_window
from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class OGMGEParams:
    """``alpha``: α of Eq. 10 (the OGM-GE README's example 0.1); modulation active for starts ≤ epoch ≤ ends."""

    alpha: float = param(0.1, "α of OGM-GE's coefficient 1 − tanh(α·ratio) (the OGM-GE README's example)", gt=0)
    modulation_starts: int = param(0, "first epoch of the modulation (0-based)", ge=0)
    modulation_ends: int = param(50, "last epoch of the modulation", ge=0)
    ge: bool = param(True, "add the generalisation-enhancement noise (false = plain OGM)")

    def __post_init__(self) -> None:
        check_fields(self, "ogm_ge.")  # the numbers' domains are declared on the fields (ground/domains.py)
        check_window(self, "ogm_ge.")


def ogm_coefficients(score_a: float, score_v: float, alpha: float) -> tuple[float, float]:
    """(coeff_a, coeff_v) of the official code for the batch scores of the first and second modality."""
    ratio_v = score_v / score_a
    if ratio_v > 1:
        return 1.0, 1.0 - math.tanh(alpha * ratio_v)
    return 1.0 - math.tanh(alpha / ratio_v), 1.0


@torch.no_grad()
def modulate_encoder(encoder: nn.Module, coeff: float, noise: bool) -> None:
    """g ← coeff·g (+ N(0, std(g) + 1e-8)) for the encoder's 4-D weight gradients."""
    for weight in encoder.parameters():
        g = weight.grad
        if g is None or g.dim() != 4:
            continue
        if noise:
            std = g.std().item() + 1e-8
            weight.grad = g * coeff + torch.zeros_like(g).normal_(0.0, std)
        else:
            g.mul_(coeff)


class OGMGE(HeadScoredMethod):
    name = "ogm_ge"
    Params = OGMGEParams
    params: OGMGEParams

    def __init__(self, params: OGMGEParams) -> None:
        super().__init__(params)
        self.model: MultimodalClassifier | None = None
        self.epoch = 0
        self.coeffs: tuple[float, float] = (1.0, 1.0)
        self._diag = EpochMeans()  # diag/coeff_<m>: the coefficients applied, per modulated step

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self.epoch = model, ctx.epoch
        self._diag.reset()

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        scores = self.head_scores(self.model, outputs.features, labels)
        first, second = self.model.modalities
        self.coeffs = ogm_coefficients(scores[first], scores[second], self.params.alpha)
        return F.cross_entropy(outputs.logits, labels)

    def after_backward(self, model: nn.Module) -> None:
        assert self.model is not None
        if not self.params.modulation_starts <= self.epoch <= self.params.modulation_ends:
            return
        for m, coeff in zip(self.model.modalities, self.coeffs, strict=True):
            modulate_encoder(self.model.encoders[m], coeff, self.params.ge)
        for m, coeff in zip(self.model.modalities, self.coeffs, strict=True):
            self._diag.add(f"coeff_{m}", coeff)

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        return {}  # coefficients are recomputed every batch; the noise RNG is the engine's torch RNG
