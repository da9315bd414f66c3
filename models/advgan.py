"""NROI-AdvGAN generators and discriminator.

``advgan_paper``: the reference paper's generator (Fig. 3, 6): encoder of conv + norm + ReLU,
residual bottleneck, transposed-conv decoder with CBAM-gated skips, ``eps * tanh`` output,
multiplied by ``1 - ROI``.

``advgan_grid`` (ours): the same encoder, but the decoder stops at a coarse grid (input / 4). The
grid is rounded to integers with a straight-through estimator, zeroed on every cell that touches
the ROI, and upsampled by cell repetition: exactly ``kernels.resample.upsample(grid, 4,
mode="nearest")``, so protect codes only the grid (plus clipping exceptions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, c: int, reduction: int = 8):
        super().__init__()
        r = max(1, c // reduction)
        self.mlp = nn.Sequential(nn.Linear(c, r), nn.ReLU(inplace=True), nn.Linear(r, c))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        ca = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * ca[:, :, None, None]
        sa = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * sa


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.InstanceNorm2d(c, affine=True),
        )

    def forward(self, x):
        return x + self.body(x)


def _enc(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


def _dec(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to integers in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def roi_cells(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """1 on every ``factor x factor`` cell that touches the ROI (mask > 0.5), else 0."""
    return F.max_pool2d((mask > 0.5).float(), factor, factor, ceil_mode=True)


class AdvGenerator(nn.Module):
    """Input: image (normalised) and ROI mask, (N, 2, H, W). Output: perturbation in pixel units.

    ``grid_factor = 1``: full-resolution output (the paper). ``grid_factor = 4``: output on an
    integer grid of H/4 x W/4 cells, upsampled by repetition (ours). ``eps`` is in 1/255 units.
    """

    def __init__(self, eps: float = 8.0, width: int = 32, blocks: int = 4, grid_factor: int = 1, universal: int = 0):
        super().__init__()
        if grid_factor not in (1, 2, 4):
            raise ValueError(f"grid_factor must be 1, 2 or 4, got {grid_factor}")
        self.eps = float(eps)
        self.grid_factor = grid_factor
        w = width
        self.e1, self.e2, self.e3, self.e4 = _enc(2, w, 1), _enc(w, 2 * w, 2), _enc(2 * w, 4 * w, 2), _enc(4 * w, 4 * w, 2)
        self.bottleneck = nn.Sequential(*[ResBlock(4 * w) for _ in range(blocks)])
        self.d4, self.att3, self.fuse3 = _dec(4 * w, 4 * w), CBAM(4 * w), _enc(8 * w, 2 * w, 1)
        self.d3, self.att2, self.fuse2 = _dec(2 * w, 2 * w), CBAM(2 * w), _enc(4 * w, w, 1)
        if grid_factor in (1, 2):
            self.d2, self.att1, self.fuse1 = _dec(w, w), CBAM(w), _enc(2 * w, w, 1)
        self.out = nn.Conv2d(w, 1, 3, padding=1)
        # optional learned image-independent term (``universal`` = output side in cells): a
        # universal perturbation the image-dependent decoder refines; ties the model to that size
        self.universal = nn.Parameter(torch.zeros(1, 1, universal, universal)) if universal else None

    def raw(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Continuous output in [-eps, eps] at the output resolution (full or grid), before masking.

        Grid models read the image at half resolution: e1 at H/2, bottleneck at H/16, decoder
        stages back to the grid (H/4: two stages; H/2: three).
        """
        inp = torch.cat([x, mask], 1)
        if self.grid_factor > 1:
            inp = F.avg_pool2d(inp, 2, ceil_mode=True)  # half resolution, antialiased, exportable
        z1 = self.e1(inp)
        z2 = self.e2(z1)
        z3 = self.e3(z2)
        z = self.bottleneck(self.e4(z3))
        y = self.fuse3(torch.cat([self.d4(z)[..., : z3.shape[-2], : z3.shape[-1]], self.att3(z3)], 1))
        y = self.fuse2(torch.cat([self.d3(y)[..., : z2.shape[-2], : z2.shape[-1]], self.att2(z2)], 1))
        if self.grid_factor in (1, 2):
            y = self.fuse1(torch.cat([self.d2(y)[..., : z1.shape[-2], : z1.shape[-1]], self.att1(z1)], 1))
        logit = self.out(y)
        if self.universal is not None:
            if logit.shape[-2:] != self.universal.shape[-2:]:
                raise ValueError(f"this generator works on a {tuple(self.universal.shape[-2:])} grid, got {tuple(logit.shape[-2:])}")
            logit = logit + self.universal
        return self.eps * torch.tanh(logit)

    def grid(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Integer grid (float tensor of integers), zero on cells touching the ROI (grid models)."""
        g = round_ste(self.raw(x, mask))
        return g * (1 - roi_cells(mask, self.grid_factor))

    def upsample(self, g: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Grid → full resolution by cell repetition (``kernels.resample.upsample``, nearest)."""
        up = g.repeat_interleave(self.grid_factor, -2).repeat_interleave(self.grid_factor, -1)
        return up[..., : shape[0], : shape[1]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Perturbation at the input resolution, zero inside the ROI."""
        if self.grid_factor == 1:
            return self.raw(x, mask) * (1 - (mask > 0.5).float())
        return self.upsample(self.grid(x, mask), x.shape[-2:])


class Discriminator(nn.Module):
    """Paper's D: 5 conv layers (kernels 7,5,3,3,3; channels 8,16,32,64,128; ReLU; max-pool), FC 512, FC 1."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 1
        for k, c in zip((7, 5, 3, 3, 3), (8, 16, 32, 64, 128)):
            layers += [nn.Conv2d(cin, c, k, padding=k // 2), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.LazyLinear(512), nn.ReLU(inplace=True), nn.Linear(512, 1))

    def forward(self, x):
        return self.fc(self.features(x))  # logit; sigmoid in the loss


@register
def advgan_paper(eps: float = 8.0, **kw) -> AdvGenerator:
    return AdvGenerator(eps=eps, grid_factor=1, **kw)


@register
def advgan_grid(eps: float = 8.0, **kw) -> AdvGenerator:
    """56x56 grid for 224x224 images (x4)."""
    return AdvGenerator(eps=eps, grid_factor=4, **kw)


@register
def advgan_grid2(eps: float = 8.0, **kw) -> AdvGenerator:
    """112x112 grid for 224x224 images (x2): the classifiers' own resolution."""
    return AdvGenerator(eps=eps, grid_factor=2, **kw)


@register
def advgan_grid2u(eps: float = 8.0, **kw) -> AdvGenerator:
    """advgan_grid2 plus a learned universal term on the 112x112 grid (224x224 input only)."""
    return AdvGenerator(eps=eps, grid_factor=2, universal=112, **kw)
