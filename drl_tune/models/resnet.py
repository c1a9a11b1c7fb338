"""ResNet18's trunk with a chosen base width, on torchvision's ``ResNet`` (drl_tune/models/encoders.py says why;
a module of its own so that torchvision is imported only where an image encoder is built)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


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

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, bn1, ReLU and max-pool: what precedes ``layer1``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
