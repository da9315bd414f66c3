"""Gradient attacks on the target classifiers (PyTorch), torchattacks-style: construct, then call.

    attack = PGD(model, eps=8)
    adv = attack(images, labels, region)     # images: (N, 1, H, W) float in 0..255

Every attack works in pixel units (``eps`` in 1/255 of the range, i.e. pixel levels of 8-bit
images), changes pixels only where ``region`` is 1 (None: everywhere), returns a float tensor in
0..255 within ``eps`` of the input (the caller rounds to 8 bits, as a saved file would be), and
calls the model on the normalised input ``(x / 255 - 0.5) / 0.25``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ATTACKS: dict[str, type] = {}


def register(cls: type) -> type:
    ATTACKS[cls.name] = cls
    return cls


def normalize(x255: torch.Tensor) -> torch.Tensor:
    return (x255 / 255.0 - 0.5) / 0.25


class Attack:
    """Base class: holds the model and the budget; subclasses implement :meth:`forward`.

    Parameters
    ----------
    model : nn.Module
        Classifier taking normalised (N, 1, H, W) input, returning logits.
    eps : float
        L-infinity bound in pixel levels (8 = 8/255).
    """

    name = "attack"

    def __init__(self, model: nn.Module, eps: float = 8.0, **kw):
        self.model = model.eval()
        self.eps = float(eps)
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(f"{type(self).__name__} has no option {k!r}")
            setattr(self, k, v)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
        region = torch.ones_like(images) if region is None else region.to(images.dtype)
        adv = self.forward(images.detach(), labels, region)
        return self._project(adv, images, region)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _project(self, adv: torch.Tensor, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        delta = torch.clamp(adv - images, -self.eps, self.eps) * region
        return torch.clamp(images + delta, 0, 255).detach()

    def _grad(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(self.model(normalize(x)), labels)
        return torch.autograd.grad(loss, x)[0]


@register
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps."""

    name = "fgsm"

    def forward(self, images, labels, region):
        return images + self.eps * self._grad(images, labels).sign() * region


@register
class BIM(Attack):
    """Basic iterative method (Kurakin et al. 2017): ``steps`` sign steps of ``alpha``, projected."""

    name = "bim"
    steps = 10
    alpha = 1.0

    def forward(self, images, labels, region):
        adv = images
        for _ in range(self.steps):
            adv = self._project(adv + self.alpha * self._grad(adv, labels).sign() * region, images, region)
        return adv


@register
class PGD(BIM):
    """Projected gradient descent (Madry et al. 2018): BIM from a uniform random start."""

    name = "pgd"
    seed = 0

    def forward(self, images, labels, region):
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        start = (torch.rand(images.shape, generator=g) * 2 - 1).to(images.device) * self.eps
        adv = self._project(images + start * region, images, region)
        for _ in range(self.steps):
            adv = self._project(adv + self.alpha * self._grad(adv, labels).sign() * region, images, region)
        return adv


@register
class MIDITI(Attack):
    """Transfer-oriented iterative attack: momentum (MI-FGSM, Dong et al. 2018), input diversity
    (DI, Xie et al. 2019: each step sees the image resized to a random size in 200..247 px,
    randomly padded to 248 and resized back with probability ``diversity``) and translation
    invariance (TI, Dong et al. 2019: the gradient smoothed by a ``kernel``-wide Gaussian).
    ``steps`` sign steps of ``alpha`` on the momentum-accumulated, L1-normalised gradient."""

    name = "mi_di_ti"
    steps = 10
    alpha = 1.0
    momentum = 1.0
    diversity = 0.7
    kernel = 7
    seed = 0

    def _diverse(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if float(torch.rand((), generator=g)) >= self.diversity:
            return x
        h, w = x.shape[-2:]
        size = int(torch.randint(200, 248, (), generator=g))
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        pad = 248 - size
        left, top = (int(v) for v in torch.randint(0, pad + 1, (2,), generator=g))
        y = F.pad(y, (left, pad - left, top, pad - top))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, images, labels, region):
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        k = self.kernel
        t = torch.arange(k, dtype=images.dtype, device=images.device) - k // 2
        smooth = torch.exp(-(t**2) / (2 * (k / 4) ** 2))
        smooth = (smooth[:, None] * smooth[None, :] / smooth.sum() ** 2)[None, None]
        adv, velocity = images, torch.zeros_like(images)
        for _ in range(self.steps):
            x = adv.detach().requires_grad_(True)
            loss = F.cross_entropy(self.model(normalize(self._diverse(x, g))), labels)
            grad = torch.autograd.grad(loss, x)[0]
            if k > 1:
                grad = F.conv2d(grad, smooth, padding=k // 2)
            velocity = self.momentum * velocity + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
            adv = self._project(adv + self.alpha * velocity.sign() * region, images, region)
        return adv


@register
class CW(Attack):
    """Carlini-Wagner L2 (the paper's eq. 4-5): minimise ||delta||^2 + c * f(x + delta), with
    f = max(Z_y - max_{i != y} Z_i, -kappa), in tanh space with Adam. The result is then clipped to
    the eps ball so it sits in the same table as the L-infinity attacks."""

    name = "cw"
    c = 1.0
    kappa = 0.0
    steps = 50
    lr = 0.01

    def forward(self, images, labels, region):
        x01 = (images / 255.0).clamp(1e-6, 1 - 1e-6)
        w = torch.atanh(2 * x01 - 1).detach().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        best = images.clone()
        best_l2 = torch.full((len(images),), float("inf"), device=images.device)
        onehot = F.one_hot(labels, num_classes=self.model(normalize(images[:1])).shape[1]).bool()
        for _ in range(self.steps):
            adv = images + ((torch.tanh(w) + 1) / 2 * 255.0 - images) * region
            z = self.model(normalize(adv))
            real = z[onehot]
            other = z.masked_fill(onehot, float("-inf")).amax(1)
            f = torch.clamp(real - other, min=-self.kappa)
            l2 = ((adv - images) / 255.0).pow(2).flatten(1).sum(1)
            loss = (l2 + self.c * f).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                fooled = z.argmax(1) != labels
                better = fooled & (l2 < best_l2)
                best[better] = adv[better].detach()
                best_l2[better] = l2[better]
                keep = ~fooled & torch.isinf(best_l2)  # not fooled yet: keep the latest iterate
                best[keep] = adv[keep].detach()
        return best


def _conv_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every Conv2d of ``model`` on ``x`` (in execution order) and the logits last."""
    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: feats.append(o)) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return feats + [logits]


def _gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.flatten(2)
    return f @ f.transpose(1, 2) / (c * h * w)


@register
class MLAdv(Attack):
    """Multi-loss hybrid attack (MLAdv): minimise ||X - Xa|| + (L_s + L_o + L_d) + tau * L_adv.

    ||X - Xa|| is the RMS difference on the 0..1 scale (a plain L2 norm over 50k pixels outweighs
    the adversarial term under sign steps, and the attack then does nothing).
    L_s: Gram-matrix style loss over every conv layer of the classifier (style image: the original),
    L_o: content loss on the deepest conv layer (both as relative squared errors), L_d: squared differences of vertical and horizontal
    neighbours (detail), L_adv: cross-entropy towards the most likely wrong class. Heuristic
    projection: the part of the noise beyond eps, P = clip(|n| - eps, 0) * sign(n), is spread to
    the neighbours with the w x w kernel W_o (centre 0, others 1/(w^2 - 1)):
    n' = clip(n + alpha * sign(-grad J) + gamma * sign(W_o * P), -eps, eps)."""

    name = "mladv"
    steps = 10
    alpha = 1.0
    gamma = 1.0
    tau = 0.5
    window = 3

    def forward(self, images, labels, region):
        with torch.no_grad():
            ref = _conv_features(self.model, normalize(images))
            if len(ref) < 2:
                raise ValueError("MLAdv needs a model with convolutions (its feature extractor)")
            style = [_gram(f) for f in ref[:-2]]
            content = ref[-2]
            wrong = ref[-1].masked_fill(F.one_hot(labels, ref[-1].shape[1]).bool(), float("-inf")).argmax(1)
        w = self.window
        kernel = torch.full((1, 1, w, w), 1.0 / (w * w - 1), device=images.device)
        kernel[0, 0, w // 2, w // 2] = 0
        noise = torch.zeros_like(images)
        for _ in range(self.steps):
            noise = noise.detach().requires_grad_(True)
            adv = images + noise
            feats = _conv_features(self.model, normalize(adv))
            # relative errors, so that no term's scale (feature magnitudes) swamps the others
            l_s = sum(((_gram(f) - g) ** 2).sum() / (g**2).sum().clamp(min=1e-12) for f, g in zip(feats[:-2], style)) / max(1, len(style))
            l_o = ((feats[-2] - content) ** 2).sum() / (content**2).sum().clamp(min=1e-12)
            l_d = ((adv[..., 1:, :] - adv[..., :-1, :]) / 255).pow(2).mean() + ((adv[..., :, 1:] - adv[..., :, :-1]) / 255).pow(2).mean()
            l_adv = F.cross_entropy(feats[-1], wrong)
            dist = ((noise / 255).flatten(1).pow(2).mean(dim=1) + 1e-12).sqrt().mean()  # ||X - Xa|| as an RMS on the 0..1 scale
            loss = dist + l_s + l_o + l_d + self.tau * l_adv
            grad = torch.autograd.grad(loss, noise)[0]
            with torch.no_grad():
                step = noise - self.alpha * grad.sign() * region
                over = torch.clamp(step.abs() - self.eps, min=0) * step.sign()
                spread = F.conv2d(over, kernel, padding=w // 2).sign()
                noise = torch.clamp(step - over + self.gamma * spread * region, -self.eps, self.eps)
        return images + noise.detach()


@register
class Stabilized(Attack):
    """Stabilized medical image attack (Qi et al. 2021): maximise the loss deviation CE(f(x'), y)
    while minimising the stabilisation term KL(f(x') || f(G_sigma * x')), x' = x + delta, with
    sign steps projected onto the eps ball."""

    name = "stabilized"
    steps = 10
    alpha = 1.0
    beta = 1.0
    sigma = 1.0

    def forward(self, images, labels, region):
        t = torch.arange(-3, 4, dtype=images.dtype, device=images.device)
        g = torch.exp(-(t**2) / (2 * self.sigma**2))
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :])[None, None]
        adv = images
        for _ in range(self.steps):
            x = adv.detach().requires_grad_(True)
            logits = self.model(normalize(x))
            smooth = self.model(normalize(F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), kernel)))
            kl = F.kl_div(F.log_softmax(smooth, 1), F.log_softmax(logits, 1), log_target=True, reduction="batchmean")
            loss = F.cross_entropy(logits, labels) - self.beta * kl
            grad = torch.autograd.grad(loss, x)[0]
            adv = self._project(adv + self.alpha * grad.sign() * region, images, region)
        return adv
