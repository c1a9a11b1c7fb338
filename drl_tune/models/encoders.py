"""Uni-modal encoders built on torchvision's ResNet18.

torchvision hard-codes ResNet18's 64 base channels; the paper's models use exactly that, but a CPU study
wants narrower nets. :class:`ResNet18Trunk` therefore reuses torchvision's ``ResNet`` (its ``BasicBlock``,
``_make_layer`` and weight initialisation) and only chooses the channel counts and input channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from drl_tune.core.modality import ModalityKind


class ResNet18Trunk(ResNet):
    """ResNet18 (BasicBlock, [2, 2, 2, 2]) without pooling/classifier: returns the last feature map.

    ``width`` is the base channel count (64 = torchvision/paper); the feature dimension is 8·width.
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        nn.Module.__init__(self)  # ResNet.__init__ would build the fixed 64-channel net first
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        self.out_dim = width * 8
        for module in self.modules():  # the same initialisation torchvision's ResNet applies
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SpectrogramEncoder(nn.Module):
    """Audio: a [B, T, F] spectrogram as a 1-channel image; features = global average pool."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(1, width)
        self.out_dim = self.trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.unsqueeze(1)).mean(dim=(2, 3))


class FrameEncoder(nn.Module):
    """Frames [B, T, C, H, W] (RGB: C=3, optical flow u/v: C=2). Frames share the trunk (folded into the
    batch) and features are pooled over time and space together, as the paper's adaptive_avg_pool3d."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels, width)
        self.out_dim = self.trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        maps = self.trunk(x.flatten(0, 1))  # [B*T, D, h, w]
        return maps.view(b, t, *maps.shape[1:]).mean(dim=(1, 3, 4))


def build_encoder(kind: str, width: int) -> nn.Module:
    """Encoder for a modality kind as written in a dataset's manifest."""
    kind = ModalityKind.parse(kind)
    if kind is ModalityKind.SPECTROGRAM:
        return SpectrogramEncoder(width)
    return FrameEncoder(kind.channels, width)
