"""Pre-activation ResNet-50 ("ResNet v2": He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each bottleneck is BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 added to an untouched shortcut, so
the identity path runs from the stem to the head with nothing on it. Where a block changes shape, its
projection shortcut takes the pre-activated input (the paper's "activation before splitting into two
paths"), and the last block is followed by one more BN-ReLU before global pooling. The stem is a bare
conv + max pool: the first block's pre-activation is the activation "right after conv1" of Sec. 4.1.
The stride sits on the 3x3 conv, as in the paper's Torch code (fb.resnet.torch) and torchvision's ResNet-50.

Size at 224 px, 1000 classes: 25,549,352 parameters (the paper's ResNet-50: 25.5 M) and 4.09 G
multiply-adds (8.18 GFLOPs as ``torch.utils.flop_counter.FlopCounterMode`` counts them, two per
multiply-add), like torchvision's ResNet-50, whose convolutions these are.

``zero_init_residual`` has no BatchNorm to zero at the end of a pre-activation branch (its last op is a
conv), so it zeroes that conv's weight instead: every block starts as the identity (or its projection),
the goal of Goyal et al.'s zero-gamma trick. The branch still learns: the zeroed conv gets gradients at
the first step, the layers before it from the second on.
"""
from __future__ import annotations

import torch
from torch import nn

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride) of ResNet-50
EXPANSION = 4


class PreActBottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * EXPANSION
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        # No BatchNorm after the projection: in v2 nothing but a conv touches the shortcut.
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Module names follow torchvision's ResNet (conv1, layer1-4, fc), so the kit's head handling applies."""

    def __init__(self, num_classes: int = 1000, zero_init_residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate(STAGES, start=1):
            layer = []
            for block in range(blocks):
                layer.append(PreActBottleneck(in_channels, width, stride if block == 0 else 1))
                in_channels = width * EXPANSION
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.final_bn = nn.BatchNorm2d(in_channels)  # the extra activation after the last addition
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

        # torchvision's ResNet init: He-normal (fan-out) convs, unit BatchNorms, nn.Linear's default head.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, PreActBottleneck):
                    nn.init.zeros_(module.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50v2(num_classes: int = 1000, zero_init_residual: bool = True) -> PreActResNet:
    return PreActResNet(num_classes, zero_init_residual)
