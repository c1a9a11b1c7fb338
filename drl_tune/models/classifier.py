"""The multimodal classifier: one encoder per modality, a fusion module that ends in class logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, cast

import torch
from torch import nn

from drl_tune.models.encoders import FeatureSizes, build_encoder
from drl_tune.models.fusion import FUSIONS


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # fused class logits [B, n_classes]
    features: dict[str, torch.Tensor]  # each modality's pooled features [B, D]


class MultimodalClassifier(nn.Module):
    """``modalities`` maps a modality name to its kind (spectrogram, frames, flow, vector, sequence), in fusion
    order; ``shapes`` gives the per-sample input shape of the feature modalities (their encoders' input size)."""

    # a method's trainable modules (Method.extra_modules), attached by the engine with add_module when it has any
    method_modules: nn.ModuleDict

    def __init__(self, modalities: Mapping[str, str], n_classes: int, width: int = 64, fusion: str = "concat",
                 shapes: dict[str, tuple[int, ...]] | None = None, feature_sizes: FeatureSizes | None = None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; known: {', '.join(FUSIONS)}")
        self.modalities = list(modalities)
        shapes = shapes or {}
        self.encoders = nn.ModuleDict({m: build_encoder(kind, width, shapes.get(m), feature_sizes)
                                       for m, kind in modalities.items()})
        dims = [self.feature_width(m) for m in self.modalities]
        self.fusion = FUSIONS[fusion](dims, n_classes)

    def feature_width(self, modality: str) -> int:
        """The width of ``modality``'s pooled features (its encoder's ``out_dim``)."""
        return cast(int, self.encoders[modality].out_dim)

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fusion([features[m] for m in self.modalities])

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = self.encode(inputs)
        return ModelOutput(self.fuse(features), features)
