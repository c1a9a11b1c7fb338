"""Uni-modal auxiliary heads: a method of your own, in a file of your own.

The rule: every modality gets a linear head of its own on its encoder's pooled features, and the loss is the fused
cross-entropy plus w times the sum of the uni-modal cross-entropies, so each encoder is also trained to classify on
its own (none of the built-in methods adds this plain weighted sum). Run it beside the built-in methods:

    python -m drl_tune.train --methods-from examples/my_method.py --set method=aux_heads --set epochs=2
    python -m drl_tune.run --space demo_compare --methods-from examples/my_method.py

docs/add-your-method.md goes from an empty file to a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import param
from drl_tune.methods.base import Method
from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class AuxHeadsParams:
    weight: float = param(0.5, "w: weight of the summed uni-modal cross-entropies", ge=0)


class AuxHeads(Method):
    name = "aux_heads"
    Params = AuxHeadsParams
    params: AuxHeadsParams

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        # trained, checkpointed and moved to the device with the model (model.method_modules)
        return {m: nn.Linear(model.feature_width(m), n_classes) for m in model.modalities}

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        self.heads = model.method_modules

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        unimodal = sum(F.cross_entropy(self.heads[m](f), labels) for m, f in outputs.features.items())
        return F.cross_entropy(outputs.logits, labels) + self.params.weight * unimodal
