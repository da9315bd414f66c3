"""Lung segmenter: the reference paper's UNet (Fig. 5) with a width multiplier."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """3x3 conv + ReLU pairs, 2x2 max-pool down, 2x2 transposed conv up, skip connections,
    1x1 conv head. Channels ``64·width, 128·width, 256·width, 512·width`` (+ a bottleneck at twice
    the last). Returns logits; the mask is ``sigmoid(logits) > 0.5`` (BCE training, eq. 6).
    BatchNorm is added after each conv (the paper's figure omits normalisation)."""

    def __init__(self, width: float = 1.0, in_channels: int = 1):
        super().__init__()
        ch = [max(4, int(round(c * width))) for c in (64, 128, 256, 512, 1024)]
        self.down = nn.ModuleList()
        prev = in_channels
        for c in ch[:4]:
            self.down.append(_double_conv(prev, c))
            prev = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(ch[3], ch[4])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        prev = ch[4]
        for c in reversed(ch[:4]):
            self.up.append(nn.ConvTranspose2d(prev, c, 2, stride=2))
            self.dec.append(_double_conv(2 * c, c))
            prev = c
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register
def unet_paper(**kw) -> UNet:
    """The paper's widths 64-128-256-512."""
    return UNet(width=1.0, **kw)


@register
def unet_small(**kw) -> UNet:
    """CPU-fast default: a quarter of the paper's widths (16-32-64-128)."""
    return UNet(width=0.25, **kw)
