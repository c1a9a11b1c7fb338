"""MMCosine: multi-modal cosine loss (Xu, Feng, Zhang & Hu, ICASSP 2023).

As the official ``main_CD.py`` (GeWu-Lab/MMCosine_ICASSP23 at 214797c, ``train_epoch`` lines 113–118), per
batch, each modality's logits are the scaled cosine between its pooled features and the head's class weights
for that modality, with no bias, and the loss is the cross-entropy of their sum:

    logits_m = s · normalise(h_m) · normalise(W_m)ᵀ      (each class row of W_m normalised)
    loss = CE(Σ_m logits_m, y)

``scale`` is s (``--scaling``, default 10, the README's run). The head is the existing fusion head, read as
the official code reads its ``fc_out``: with concat fusion W_m is the block of ``fc_out.weight``'s columns
that multiplies modality m (the official ``[:, :512]`` / ``[:, 512:]``); with sum fusion it is modality m's
own layer's weight. The biases take no part (they get no gradient and stay at their initial values). FiLM and
gated fusion have no per-modality block of the output layer and are refused.

The rule is modality-wise and generalises to N modalities as written (the sum runs over all of them); the
official code has two.

The cosine logits replace the head's output everywhere: a forward hook on the fusion module (registered in
``setup``) returns Σ_m logits_m, so training, validation, test and the selection of the best epoch all use
the classifier that was trained. The model's parameters and checkpoints are the plain model's.

Departures from the official code: (1) the official CREMA-D ``valid()`` (``main_CD.py`` line 196,
``prediction = softmax(out)``) predicts with the *plain* linear head's output ``out`` (weights times
unnormalised features plus bias, line 181), not with the cosine logits it trained; its VoxCeleb script
(``main_vox2.py``, ``valid``) scores with the cosine logits, as the paper describes, and so does this file;
(2) the NCE term (``--lam``, weight 0 by default, the supplementary's) is not implemented; (3) the head split
follows each encoder's width instead of the hard-coded 512 columns; (4) the README's run command (at 00ba0a9,
``README.md`` line 42: ``--fusion_method gated --mmcosine True --scaling 10``; ``main_CD.py``'s default is
``concat``, line 56) uses the official gated fusion "revised for mid-concat case" (``models/fusion_modules.py``
lines 62–91, from eb3a540): x' = σ(fc_y(y))⊙fc_x(x) and y' = σ(fc_x(x))⊙fc_y(y) are concatenated into ``fc_out``,
whose column blocks the cosine logits then read with x', y' as the features. That fusion is not offered here (this
project's gated fusion, σ(W₁f₁)⊙W₂f₂ into the output layer, has no per-modality block and is refused); MMCosine
runs with concat or sum. Not reproduced: the earlier ``main_CD.py`` (b69b9e3) never assigned
``out = out_a + out_v`` in training, so ``--mmcosine`` trained the plain head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import EpochContext, EpochMeans, Method, require_unimodal_head
from drl_tune.models import ModelOutput, MultimodalClassifier
from drl_tune.models.fusion import ConcatFusion, SumFusion


@dataclass
class MMCosineParams:
    scale: float = param(10.0, "s: the scale of MMCosine's cosine logits (official `--scaling`)", gt=0)

    def __post_init__(self) -> None:
        check_fields(self, "mmcosine.")  # the numbers' domains are declared on the fields (ground/domains.py)


def head_blocks(fusion: nn.Module, dims: list[int]) -> list[torch.Tensor]:
    """W_m per modality: concat → the columns of ``fc_out.weight`` that multiply modality m; sum → its layer."""
    if isinstance(fusion, ConcatFusion):
        return list(torch.split(fusion.fc_out.weight, dims, dim=1))
    return [fc.weight for fc in cast(SumFusion, fusion).layers()]  # (require_unimodal_head refused the others)


def cosine_logits(features: list[torch.Tensor], blocks: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """s·cos(h_m, w_{m,c}) for every sample and class, per modality."""
    return [scale * F.normalize(h, dim=1) @ F.normalize(w, dim=1).t() for h, w in zip(features, blocks, strict=True)]


class MMCosine(Method):
    name = "mmcosine"
    Params = MMCosineParams
    params: MMCosineParams

    def __init__(self, params: MMCosineParams) -> None:
        super().__init__(params)
        self._diag = EpochMeans()  # diag/logit_<m>: mean true-class cosine logit, per step
        self._model: MultimodalClassifier | None = None

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        require_unimodal_head(model, self.name)
        self._model = model
        scale = self.params.scale

        def cosine_head(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            features = list(args[0])
            blocks = head_blocks(module, [f.shape[1] for f in features])  # the hooked module: copies stay right
            return torch.stack(cosine_logits(features, blocks, scale)).sum(dim=0)

        model.fusion.register_forward_hook(cosine_head)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self._diag.reset()

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert self._model is not None
        with torch.no_grad():  # the official tensorboard's data/logit_<m>: mean true-class logit per modality
            feats = list(outputs.features.values())
            uni = cosine_logits(feats, head_blocks(self._model.fusion, [f.shape[1] for f in feats]), self.params.scale)
            for m, z in zip(outputs.features, uni, strict=True):
                self._diag.add(f"logit_{m}", z.gather(1, labels.view(-1, 1)).mean())
        return F.cross_entropy(outputs.logits, labels)  # outputs.logits are the hooked cosine logits

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        return self._diag.means()
