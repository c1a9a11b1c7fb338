"""Fusion modules (with the classification head), as in the field's reference code (OGM-GE, DRL).

Each takes the encoders' pooled features in modality order and returns fused class logits.
FiLM and gated fusion are defined for two modalities: the first conditions (gates) the second.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """logits = W·[f_1; f_2; ...] + b — the DRL paper's model."""

    def __init__(self, dims: list[int], n_classes: int) -> None:
        super().__init__()
        self.fc_out = nn.Linear(sum(dims), n_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fc_out(torch.cat(features, dim=1))


class SumFusion(nn.Module):
    """logits = Σ_m W_m·f_m + b_m."""

    def __init__(self, dims: list[int], n_classes: int) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(d, n_classes) for d in dims)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([fc(f) for fc, f in zip(self.fc, features, strict=True)]).sum(dim=0)

    def layers(self) -> list[nn.Linear]:
        """W_m, b_m per modality: ``fc``'s layers, typed (a ModuleList's items are only known as modules)."""
        return [cast(nn.Linear, fc) for fc in self.fc]


def _require_two(name: str, dims: list[int]) -> None:
    if len(dims) != 2:
        raise ValueError(f"{name} fusion needs exactly 2 modalities, got {len(dims)}; use concat or sum")


class FiLMFusion(nn.Module):
    """(γ, β) = W·f_1; logits = W_out·(γ ⊙ f_2 + β) (Perez et al., as in OGM-GE)."""

    def __init__(self, dims: list[int], n_classes: int) -> None:
        super().__init__()
        _require_two("film", dims)
        self.film = nn.Linear(dims[0], 2 * dims[1])
        self.fc_out = nn.Linear(dims[1], n_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.film(features[0]).chunk(2, dim=1)
        return self.fc_out(gamma * features[1] + beta)


class GatedFusion(nn.Module):
    """logits = W_out·(σ(W_1·f_1) ⊙ W_2·f_2) (as in OGM-GE)."""

    def __init__(self, dims: list[int], n_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        _require_two("gated", dims)
        hidden = hidden or dims[1]
        self.fc_gate = nn.Linear(dims[0], hidden)
        self.fc_value = nn.Linear(dims[1], hidden)
        self.fc_out = nn.Linear(hidden, n_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        gate = torch.sigmoid(self.fc_gate(features[0]))
        return self.fc_out(gate * self.fc_value(features[1]))


FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "film": FiLMFusion,
    "gated": GatedFusion,
}
