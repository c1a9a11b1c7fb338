"""Uni-modal encoders: torchvision's ResNet18 for spectrograms and frames, small ``torch.nn`` models for
precomputed features (an MLP for a vector, a 1-D convolution or Transformer encoder for a masked sequence).

torchvision hard-codes ResNet18's 64 base channels; the paper's models use exactly that, but a CPU study
wants narrower nets. :class:`ResNet18Trunk` therefore reuses torchvision's ``ResNet`` (its ``BasicBlock``,
``_make_layer`` and weight initialisation) and only chooses the channel counts and input channels.

The two image encoders also expose their trunk's steps (``trunk_input``, ``trunk.stem``, ``trunk.layer1``–``4``,
``pool``), so that a method can run the trunks stage by stage and exchange information between them (Greedy's
MMTM blocks after ``layer2``–``4``); ``forward`` is exactly those steps in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from drl_tune.ground.modality import ModalityKind

# torchvision is imported where an encoder is built (drl_tune/models/resnet.py holds the ResNet18 trunk): importing
# it loads all of torchvision, torch._dynamo included, ≈ 1.3 s here, and a study's driver imports every method
# (and so this module) to check its plan without ever building a model


class SpectrogramEncoder(nn.Module):
    """Audio: a [B, T, F] spectrogram as a 1-channel image; features = global average pool."""

    def __init__(self, width: int = 64) -> None:
        from drl_tune.models.resnet import ResNet18Trunk

        super().__init__()
        self.trunk = ResNet18Trunk(1, width)
        self.out_dim = self.trunk.out_dim

    def trunk_input(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as the trunk's images [B, 1, T, F]."""
        return x.unsqueeze(1)

    def pool(self, maps: torch.Tensor, batch: int) -> torch.Tensor:
        """The trunk's last maps [B, D, h, w] (one per sample: ``batch`` = B) to features [B, D]."""
        return maps.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(self.trunk_input(x)), x.shape[0])


class FrameEncoder(nn.Module):
    """Frames [B, T, C, H, W] (RGB: C=3, optical flow u/v: C=2). Frames share the trunk (folded into the
    batch) and features are pooled over time and space together, as the paper's adaptive_avg_pool3d."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        from drl_tune.models.resnet import ResNet18Trunk

        super().__init__()
        self.trunk = ResNet18Trunk(in_channels, width)
        self.out_dim = self.trunk.out_dim

    def trunk_input(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as the trunk's images: frames folded into the batch, [B*T, C, H, W]."""
        return x.flatten(0, 1)

    def pool(self, maps: torch.Tensor, batch: int) -> torch.Tensor:
        """The trunk's last maps [B*T, D, h, w] to features [B, D] (mean over time and space)."""
        return maps.view(batch, -1, *maps.shape[1:]).mean(dim=(1, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(self.trunk_input(x)), x.shape[0])


@dataclass(frozen=True)
class FeatureSizes:
    """How the encoders of precomputed-feature modalities are sized (config keys ``model.feature_*``)."""

    hidden: int = 128  # the MLP's / temporal model's width = the pooled feature dimension
    layers: int = 2
    sequence_encoder: str = "conv"  # "conv" (1-D convolutions) or "transformer" (torch.nn.TransformerEncoder)
    heads: int = 4  # attention heads of the Transformer encoder (must divide hidden)


class VectorEncoder(nn.Module):
    """A feature vector [B, D] through torchvision's MLP (``layers`` Linear+ReLU); features = its output."""

    def __init__(self, in_dim: int, sizes: FeatureSizes) -> None:
        from torchvision.ops import MLP

        super().__init__()
        # MLP ends in a bare Linear; the final ReLU makes the features non-negative activations, as the pooled
        # ReLU maps of the ResNet encoders are
        self.mlp = nn.Sequential(MLP(in_dim, [sizes.hidden] * sizes.layers), nn.ReLU())
        self.out_dim = sizes.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SequenceEncoder(nn.Module):
    """A masked feature sequence [B, T, D + 1] (last column: 1 = real step, 0 = padding): a temporal model over
    the D features, then the mean over the real steps only (padding never reaches the pooled features)."""

    def __init__(self, in_dim: int, sizes: FeatureSizes) -> None:
        super().__init__()
        self.kind = sizes.sequence_encoder
        self.temporal: nn.ModuleList | nn.TransformerEncoder  # conv: one Conv1d per layer
        if self.kind == "conv":
            self.temporal = nn.ModuleList(
                nn.Conv1d(in_dim if i == 0 else sizes.hidden, sizes.hidden, kernel_size=3, padding=1)
                for i in range(sizes.layers))
        else:
            self.project = nn.Linear(in_dim, sizes.hidden)
            layer = nn.TransformerEncoderLayer(sizes.hidden, sizes.heads, dim_feedforward=2 * sizes.hidden,
                                               dropout=0.0, batch_first=True)
            self.temporal = nn.TransformerEncoder(layer, sizes.layers, enable_nested_tensor=False)
        self.out_dim = sizes.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, mask = x[..., :-1], x[..., -1] > 0.5  # [B, T, D], [B, T]
        if self.kind == "conv":
            # padded steps are zeroed before every layer, so a real step's receptive field sees zeros past the
            # sequence's end, exactly the convolution's own zero padding of the unpadded sequence
            keep = mask.unsqueeze(1).to(values.dtype)  # [B, 1, T]
            h = values.transpose(1, 2) * keep
            for conv in cast(nn.ModuleList, self.temporal):  # the conv kind built a ModuleList
                h = torch.relu(conv(h)) * keep
            h = h.transpose(1, 2)
        else:
            h = self.temporal(self.project(values), src_key_padding_mask=~mask)
        weights = mask.unsqueeze(-1).to(h.dtype)
        return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)



def build_encoder(kind: str, width: int, shape: tuple[int, ...] | None = None,
                  sizes: FeatureSizes | None = None) -> nn.Module:
    """Encoder for a modality kind as written in a dataset's manifest; a feature modality also needs its
    per-sample ``shape`` (the cache's: [D] for a vector, [T, D + 1] for a sequence)."""
    kind = ModalityKind.parse(kind)
    if kind is ModalityKind.SPECTROGRAM:
        return SpectrogramEncoder(width)
    if kind.is_features:
        if shape is None:
            raise ValueError(f"a {kind} modality's encoder needs the per-sample shape of its features")
        sizes = sizes or FeatureSizes()
        if kind is ModalityKind.VECTOR:
            return VectorEncoder(shape[-1], sizes)
        return SequenceEncoder(shape[-1] - 1, sizes)
    return FrameEncoder(kind.channels, width)
