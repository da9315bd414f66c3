"""Small classifier families for the transfer lab (``models/zoo.py``), all trained from scratch.

Each takes ``in_channels`` x S x S (S = the member's input size) and returns 3 logits. They are
the families the shipped classifiers are not (DenseNet, MobileNetV2, Xception, ConvNeXt: the held-out
targets; SqueezeNet and a small vision transformer: surrogates), plus ResNet and VGG variants at other
sizes and widths; sized to train in minutes on 2 CPU cores.
"""
from __future__ import annotations

import torch
from torch import nn

from .classifiers import VGG16, BasicBlock, ResNet
from .registry import register


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act() if act is nn.GELU else act(inplace=True))


# --- DenseNet (Huang et al. 2017), BC variant -------------------------------------------------
class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, blocks=(4, 6, 8), growth: int = 12, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 5, 2, 2, bias=False), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:  # transition: compress by half, pool
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


# --- MobileNetV2 (Sandler et al. 2018) --------------------------------------------------------
class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _cbr(cin, mid, 1, act=nn.ReLU6), _cbr(mid, mid, 3, stride, groups=mid, act=nn.ReLU6),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    CFG = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 3, 2), (96, 2, 1), (128, 1, 2))  # (channels, repeats, first stride)

    def __init__(self, in_channels: int = 1, num_classes: int = 3, expand: int = 4):
        super().__init__()
        layers: list[nn.Module] = [_cbr(in_channels, 16, 3, 2, act=nn.ReLU6)]
        cin = 16
        for c, n, s in self.CFG:
            for j in range(n):
                layers.append(_InvertedResidual(cin, c, s if j == 0 else 1, expand))
                cin = c
        layers.append(_cbr(cin, 256, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


# --- Xception (Chollet 2017): depthwise-separable convolutions with residual shortcuts ----------
class _SepConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class _XBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), _SepConv(cin, cout), nn.ReLU(inplace=True), _SepConv(cout, cout),
                                  nn.MaxPool2d(3, stride, 1) if stride > 1 else nn.Identity())
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.short(x)


class Xception(nn.Module):
    def __init__(self, widths=(32, 64, 128, 192), middle: int = 2, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_cbr(in_channels, 16, 3, 2), _cbr(16, 32, 3)]
        cin = 32
        for w in widths:
            layers.append(_XBlock(cin, w, 2))
            cin = w
        layers += [_XBlock(cin, cin, 1) for _ in range(middle)]
        layers += [nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


# --- ConvNeXt (Liu et al. 2022) ------------------------------------------------------------------
class _LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.full((c,), 1e-2))

    def forward(self, x):
        y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths=(1, 1, 3, 1), dims=(24, 48, 96, 192), in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        # a conv stem (two stride-2 3x3) instead of the 4x4 patchify: trains from scratch on 1260 images
        layers: list[nn.Module] = [_cbr(in_channels, dims[0], 3, 2, act=nn.GELU), nn.Conv2d(dims[0], dims[0], 3, 2, 1)]
        for i, (d, c) in enumerate(zip(depths, dims)):
            if i:
                layers += [_LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], c, 2, 2)]
            layers += [_ConvNeXtBlock(c) for _ in range(d)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean(dim=(2, 3))))


# --- SqueezeNet (Iandola et al. 2016), v1.1 layout: fire modules -----------------------------------
class _Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = _cbr(cin, squeeze, 1)
        self.e1, self.e3 = _cbr(squeeze, expand, 1), _cbr(squeeze, expand, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class SqueezeNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            _cbr(in_channels, 48, 3, 2), pool(), _Fire(48, 16, 48), _Fire(96, 16, 48), pool(),
            _Fire(96, 32, 96), _Fire(192, 32, 96), pool(), _Fire(192, 48, 128), _Fire(256, 64, 160),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(320, num_classes, 1))  # SqueezeNet's conv classifier

    def forward(self, x):
        return self.head(self.features(x)).mean(dim=(2, 3))


# --- Vision transformer (Dosovitskiy et al. 2021) with a convolutional stem (Xiao et al. 2021) ------
class ViT(nn.Module):
    def __init__(self, size: int = 128, dim: int = 128, depth: int = 4, heads: int = 4, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        # three stride-2 convolutions then 2x2 patches: 16x16 = 256 tokens at 128 px; from scratch on
        # 1260 X-rays a patchify stem does not train
        self.stem = nn.Sequential(_cbr(in_channels, 32, 3, 2), _cbr(32, 64, 3, 2), _cbr(64, dim, 3, 2), nn.Conv2d(dim, dim, 2, 2))
        tokens = (size // 16) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim).normal_(std=0.02))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(t)).mean(1))


# --- registry -------------------------------------------------------------------------------------
@register
def zoo_densenet(**kw) -> DenseNet:
    return DenseNet(**kw)


@register
def zoo_mobilenetv2(**kw) -> MobileNetV2:
    return MobileNetV2(**kw)


@register
def zoo_xception(**kw) -> Xception:
    return Xception(**kw)


@register
def zoo_convnext(**kw) -> ConvNeXt:
    return ConvNeXt(**kw)


@register
def zoo_resnet10(**kw) -> ResNet:
    """ResNet with one basic block per stage at half resnet18's widths."""
    return ResNet(BasicBlock, (1, 1, 1, 1), width=32, **kw)


@register
def zoo_resnet14(**kw) -> ResNet:
    return ResNet(BasicBlock, (1, 2, 2, 1), width=24, **kw)


class _VGG11(VGG16):
    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register
def zoo_vgg11(**kw) -> VGG16:
    """VGG configuration A (11 layers) at a quarter of the widths."""
    return _VGG11(width=0.25, **kw)


@register
def zoo_squeezenet(**kw) -> SqueezeNet:
    return SqueezeNet(**kw)


@register
def zoo_vit(**kw) -> ViT:
    """ViT at 128 px (its position table fixes the size)."""
    return ViT(**kw)
