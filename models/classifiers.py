"""Target classifiers, trained from scratch (no downloads): 1-channel input, 3 classes, GAP head."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c)) if stride != 1 or cin != c else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, c: int, stride: int = 1):
        super().__init__()
        cout = c * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class ResNet(nn.Module):
    """He et al. 2016 ResNet with a 1-channel stem and a global-average-pooled linear head."""

    def __init__(self, block, layers, num_classes: int = 3, width: int = 64, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], width
        for i, n in enumerate(layers):
            c = width * 2**i
            for j in range(n):
                stages.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class VGG16(nn.Module):
    """Simonyan & Zisserman 2015 configuration D with batch norm, 1-channel input, GAP head."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 3, in_channels: int = 1, width: float = 1.0, attention: bool = False):
        super().__init__()
        from .advgan import CBAM

        layers, cin = [], in_channels
        for v in self.CFG:
            if v == "M":
                if attention:  # CBAM at the end of every stage (the pruning + attention defense)
                    layers.append(CBAM(cin))
                layers.append(nn.MaxPool2d(2))
            else:
                c = max(8, int(v * width))
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@register
def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


@register
def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


@register
def vgg16(**kw) -> VGG16:
    return VGG16(**kw)


@register
def vgg16_small(**kw) -> VGG16:
    """VGG16's depth and layout at a quarter of its widths (CPU-trainable transfer target)."""
    return VGG16(width=0.25, **kw)


@register
def vgg16_small_cbam(**kw) -> VGG16:
    """vgg16_small with CBAM attention after every stage: the defended target (with --prune)."""
    return VGG16(width=0.25, attention=True, **kw)
