"""The gradient of a classifier's decision margin with respect to its input, as a forward-only graph.

protect refines its perturbation with a few gradient steps on the white-box classifier, on ONNX
Runtime, without PyTorch. ONNX has no autograd and the TorchScript exporter cannot trace
``torch.autograd.grad``, so :class:`MarginGradient` writes the backward pass out by hand with
forward operators: a convolution's transpose is ``conv_transpose2d`` with the *same* weight tensor,
a ReLU's is its activity mask, a max-pool's routes each gradient to its window's maxima. It covers the
BN-folded classifiers :func:`models.from_onnx.load_classifier` rebuilds: ResNet with basic blocks
and VGG (conv + bias, ReLU, max-pool, residual add, global average pool, linear), with or without
CBAM attention (Woo et al. 2018; the pruning + attention defended target).

Output: the logits and ``d margin / d pixel`` (pixels on the 0..255 scale), where
``margin = z[label] - max_{j != label} z[j]``; ``label < 0`` means "the class the model predicts".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .advgan import CBAM
from .classifiers import VGG16, BasicBlock, ResNet
from .train import Classifier

SIZE = 224

PIXEL_SCALE = 255.0 * 0.25  # network input = (pixel / 255 - 0.5) / 0.25


def _folded(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``bn(conv(x))`` for a BN-folded rebuild (BN = add its bias)."""
    if isinstance(bn, nn.BatchNorm2d):
        return conv.weight, bn.bias
    return conv.weight, conv.bias


def _conv(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module | None = None) -> torch.Tensor:
    w, b = _folded(conv, bn)
    return F.conv2d(x, w, b, conv.stride, conv.padding)


def _conv_t(g: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """Transpose of ``conv`` applied to ``g``, back to the input's spatial ``size``."""
    if conv.stride == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1] and size == tuple(g.shape[-2:]):
        # a plain convolution with the flipped, transposed kernel: in an ORT profile (ResNet18,
        # batch 16) the convolution kernels took 182 instead of 217 ms, though the whole step's wall
        # time stayed within this VM's noise; ORT folds the weight flip once when the session loads
        k, p = conv.kernel_size[0], conv.padding[0]
        return F.conv2d(g, conv.weight.transpose(0, 1).flip(2, 3), None, 1, k - 1 - p)
    pad = []
    for d in range(2):
        full = (g.shape[2 + d] - 1) * conv.stride[d] - 2 * conv.padding[d] + conv.kernel_size[d]
        pad.append(size[d] - full)
    return F.conv_transpose2d(g, conv.weight, None, conv.stride, conv.padding, output_padding=tuple(pad))


def _pool_t(g: torch.Tensor, x: torch.Tensor, pooled: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """Transpose of a max-pool at ``x``: each pooled gradient goes back to the window's maxima, split
    evenly where several pixels tie. Ties are common (flat image regions, ReLU zeros), and a pool's
    returned indices break them differently in torch and ORT; comparing values does not."""
    k, s, p = (v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding))
    n, c, h, w = x.shape
    ho, wo = pooled.shape[-2:]
    padded = F.pad(x, (p, p, p, p), value=float("-inf")) if p else x
    # the k*k pixels of every window, by exact strided slicing (no arithmetic)
    patches = torch.stack([padded[:, :, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
                           for i in range(k) for j in range(k)], 2)
    winner = (patches == pooled.unsqueeze(2)).to(g.dtype)
    share = winner * (g / winner.sum(2).clamp(min=1.0)).unsqueeze(2)
    # back to the pixels: a transposed convolution whose k*k input channels each place one offset
    eye = torch.eye(k * k, dtype=g.dtype, device=g.device).view(k * k, 1, k, k)
    full = (ho - 1) * s - 2 * p + k
    back = F.conv_transpose2d(share.reshape(n * c, k * k, ho, wo), eye, None, s, p, output_padding=(h - full, w - full))
    return back.view(n, c, h, w)


def _max_share(x: torch.Tensor, top: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Where ``x`` reaches its maximum ``top`` over ``dims``, each tied position's share (1/ties)."""
    winner = (x == top).to(x.dtype)
    return winner / winner.sum(dims, keepdim=True)


def _cbam(x: torch.Tensor, m: CBAM):
    """CBAM forward at ``x`` and the transpose of its Jacobian there: channel attention
    ``sigmoid(mlp(mean) + mlp(max))`` then spatial attention ``sigmoid(conv7([mean_c, max_c]))``."""
    l1, l2 = m.mlp[0], m.mlp[2]
    n, c, h, w = x.shape
    xmax = x.amax((2, 3), keepdim=True)
    hidden = [F.linear(v, l1.weight, l1.bias) for v in (x.mean((2, 3)), xmax[:, :, 0, 0])]
    ca = torch.sigmoid(sum(F.linear(torch.relu(u), l2.weight, l2.bias) for u in hidden))
    y = x * ca[:, :, None, None]
    ymax = y.amax(1, keepdim=True)
    sa = torch.sigmoid(_conv(torch.cat([y.mean(1, keepdim=True), ymax], 1), m.spatial))

    def backward(g: torch.Tensor) -> torch.Tensor:
        g_pre = (g * y).sum(1, keepdim=True) * sa * (1 - sa)
        g_pair = _conv_t(g_pre, m.spatial, (h, w))  # (N, 2, H, W): mean and max inputs
        g_y = g * sa + g_pair[:, :1] / float(c) + _max_share(y, ymax, (1,)) * g_pair[:, 1:]
        g_z = (g_y * x).sum((2, 3)) * ca * (1 - ca)
        g_r = g_z @ l2.weight
        g_mean, g_max = ((g_r * (u > 0)) @ l1.weight for u in hidden)
        return (g_y * ca[:, :, None, None] + g_mean[:, :, None, None] / float(h * w)
                + _max_share(x, xmax, (2, 3)) * g_max[:, :, None, None])

    return y * sa, backward


def _pool(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    return F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding)


class MarginGradient(nn.Module):
    """``(image, label) → (logits, d margin / d pixel)`` for a BN-folded ResNet (basic blocks) or VGG.

    Parameters
    ----------
    model : nn.Module
        The classifier as :func:`models.from_onnx.load_classifier` returns it (eval mode).
    """

    def __init__(self, model: nn.Module, resize: torch.Tensor | None = None):
        super().__init__()
        self.shrink = 1  # the Classifier wrapper's k x k average pool to its internal resolution
        # or a linear resize ``R @ image @ R^T`` (R: (S, 224)), e.g. a zoo member's antialiased
        # bilinear resize to its own input size; its transpose is ``R^T @ g @ R``
        self.resize = resize
        if isinstance(model, Classifier):
            if SIZE % model.internal:
                raise ValueError(f"MarginGradient needs an internal resolution dividing {SIZE}, got {model.internal}")
            self.shrink, model = SIZE // model.internal, model.net
        if isinstance(model, ResNet):
            if not all(isinstance(b, BasicBlock) for b in model.stages):
                raise ValueError("MarginGradient supports ResNets with basic blocks only")
        elif isinstance(model, VGG16):
            if not all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, CBAM)) for m in model.features):
                raise ValueError("MarginGradient supports VGG layers conv, BN, ReLU, max-pool and CBAM only")
        else:
            raise ValueError(f"MarginGradient supports ResNet and VGG16, not {type(model).__name__}")
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d) and not (torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)
                                                        and torch.allclose(bn.running_var + bn.eps, torch.ones(()))):
                raise ValueError("MarginGradient needs a BN-folded classifier (models.from_onnx.load_classifier)")
        self.model = model

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.shrink
        x = F.avg_pool2d(image, k) if k > 1 else image
        if self.resize is not None:
            x = self.resize @ x @ self.resize.T
        if isinstance(self.model, ResNet):
            feats, backward = self._resnet(x)
        else:
            feats, backward = self._vgg(x)
        head = self.model.head
        logits = F.linear(feats.mean(dim=(2, 3)), head.weight, head.bias)
        classes = torch.arange(logits.shape[1], device=logits.device)
        label = torch.where(label < 0, logits.argmax(1), label)
        true = (label[:, None] == classes).to(logits.dtype)
        runner_up = (logits - 1e9 * true).argmax(1)
        direction = true - (runner_up[:, None] == classes).to(logits.dtype)  # d margin / d logits
        g = (direction @ head.weight)[:, :, None, None].expand_as(feats) / float(feats.shape[2] * feats.shape[3])
        g = backward(g)
        if self.resize is not None:
            g = self.resize.T @ g @ self.resize
        if k > 1:  # transpose of the k x k average pool
            g = F.interpolate(g, scale_factor=k, mode="nearest") / float(k * k)
        return logits, g / PIXEL_SCALE

    def _resnet(self, x: torch.Tensor):
        conv, bn, _, pool = self.model.stem
        a0 = _conv(x, conv, bn)
        h0 = torch.relu(a0)
        h = _pool(h0, pool)
        pooled = h
        saved = []
        for block in self.model.stages:
            a1 = _conv(h, block.conv1, block.bn1)
            pre = _conv(torch.relu(a1), block.conv2, block.bn2)
            pre = pre + (_conv(h, block.short[0], block.short[1]) if isinstance(block.short, nn.Sequential) else h)
            saved.append((block, h.shape[-2:], a1 > 0, pre > 0))
            h = torch.relu(pre)

        def backward(g: torch.Tensor) -> torch.Tensor:
            for block, size, live1, live2 in reversed(saved):
                g = g * live2
                inner = _conv_t(_conv_t(g, block.conv2, live1.shape[-2:]) * live1, block.conv1, size)
                g = inner + (_conv_t(g, block.short[0], size) if isinstance(block.short, nn.Sequential) else g)
            g = _pool_t(g, h0, pooled, pool) * (a0 > 0)
            return _conv_t(g, conv, x.shape[-2:])

        return h, backward

    def _vgg(self, x: torch.Tensor):
        layers = list(self.model.features)
        saved = []
        h, i = x, 0
        while i < len(layers):
            m = layers[i]
            if isinstance(m, nn.Conv2d):
                bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
                saved.append(("conv", m, h.shape[-2:]))
                h = _conv(h, m, bn)
                i += 2 if bn is not None else 1
                continue
            if isinstance(m, nn.ReLU):
                saved.append(("relu", h > 0, None))
                h = torch.relu(h)
            elif isinstance(m, nn.MaxPool2d):
                out = _pool(h, m)
                saved.append(("pool", m, (h, out)))
                h = out
            elif isinstance(m, CBAM):
                h, back = _cbam(h, m)
                saved.append(("cbam", back, None))
            i += 1

        def backward(g: torch.Tensor) -> torch.Tensor:
            for kind, a, b in reversed(saved):
                if kind == "conv":
                    g = _conv_t(g, a, b)
                elif kind == "relu":
                    g = g * a
                elif kind == "cbam":
                    g = a(g)
                else:
                    g = _pool_t(g, b[0], b[1], a)
            return g

        return h, backward


def reference_gradient(model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantity by autograd, for parity checks."""
    x = image.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        label = torch.where(label < 0, logits.argmax(1), label)
        wrong = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), float("-inf"))
        margin = logits.gather(1, label[:, None])[:, 0] - wrong.amax(1)
        (grad,) = torch.autograd.grad(margin.sum(), x)
    return logits.detach(), grad / PIXEL_SCALE
