"""Train protect's transfer pattern: one universal perturbation per class, outside the lungs, made to
fool an ensemble of surrogate classifiers (issue 16: protection that reaches models it never saw).

    python -m medrae.models.train_pattern --data ../shared/data/cxr3 --zoo runs/zoo --out runs/pattern
    python -m medrae.models.train_pattern ... --install kernels/patterns/cxr3_v1   # write the shipped pattern + card

A class-conditional universal adversarial perturbation (Moosavi-Dezfooli et al. 2017; per-class, as
in Hirano & Takemoto 2020 for medical images): ``P[c]`` is a 56x56 grid of 4x4-pixel cells on the
224x224 view (``--cell 8``: 28x28 cells of 8x8, lower frequency; protect and the codec map any grid that divides 112), in integer levels ``-eps..eps``. protect adds ``P[c]`` (``c``: the white-box
classifier's prediction) on every cell outside the ROI, then its sparse refinement fools the white
box from there. Universal patterns transfer to unseen classifiers as well as per-image attacks on
the same surrogates do here (README "Transfer to unseen models"), and because the pattern ships
with medrae the payload only carries which cells it covers (``kernels`` codec ``pattern``): a dense
perturbation at the price of a sparse one.

Training: Adam on the pattern (clamped to ``eps``) over the cxr3 train images with protect's own
ROI (the shipped segmenter), a margin loss ``max(z_y - max_{j != y} z_j, -kappa)`` averaged over the
surrogates: the four shipped classifiers and the zoo's surrogates (``models/zoo.py``; never a
held-out target), each seeing the adversarial image through random resizing (112-256 px, input
diversity, Xie et al. 2019) as unknown pipelines do; plus hinge penalties that keep each image's
SSIM above ``--min-ssim`` and its MSE below ``--max-mse`` (the pattern alone; the refinement and the
hiding cost a little more). Seeded and resumable per epoch (``<out>/last.pt``). ``--sgm`` (skip-gradient
on the ResNet surrogates) and ``--feature`` (a feature-disruption term at each surrogate's middle
layer) are the issue's last two candidates, measured without gain (README "Transfer to unseen models").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SHIPPED_SURROGATES = ("classifier_resnet18", "classifier_vgg16_small", "classifier_vgg16_small_cbam_pruned", "classifier_vgg16_small_advtrained")
CELL = 4  # px per pattern cell on the 224x224 view (56x56 cells; --cell 8: 28x28)


class _Pixels(nn.Module):
    """A shipped classifier (normalised 224x224 input) on 0..255 pixels of any size."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (224, 224):
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return self.net((x / 255.0 - 0.5) / 0.25)


class _LGV(nn.Module):
    """A zoo surrogate that answers with one of its LGV weights (``models.zoo.collect_lgv``), drawn
    anew by :meth:`draw` before each step: the ensemble in time of Gubri et al. 2022."""

    def __init__(self, model: nn.Module, weights: list[dict]):
        super().__init__()
        self.model, self.weights = model, weights

    def draw(self, gen: torch.Generator) -> None:
        self.model.load_state_dict(self.weights[int(torch.randint(len(self.weights), (1,), generator=gen))])
        self.model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def surrogates(models_dir: Path, zoo_dir: Path | None, lgv: bool = False) -> tuple[list[str], list[nn.Module]]:
    """The shipped classifiers and every trained zoo surrogate (never a held-out target); with
    ``lgv``, each zoo surrogate that has LGV weights stands for them (:class:`_LGV`)."""
    from . import zoo
    from .from_onnx import load_classifier

    names, nets = [], []
    for name in SHIPPED_SURROGATES:
        names.append(name)
        nets.append(_Pixels(load_classifier(models_dir / f"{name}.onnx")))
    if zoo_dir is not None:
        for name in zoo.trained(zoo_dir, "surrogate"):
            assert zoo.member(name).role == "surrogate"
            model = zoo.load(zoo_dir, name)
            weights = [torch.load(f, weights_only=False)["model"] for f in zoo.lgv_checkpoints(zoo_dir, name)] if lgv else []
            names.append(f"{name}+lgv{len(weights)}" if weights else name)
            nets.append(_LGV(model, weights) if weights else model)
    for net in nets:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return names, nets


def skip_gradient(nets: list[nn.Module], gamma: float) -> int:
    """Skip-gradient (SGM, Wu et al. 2020): in every ResNet basic block of ``nets`` the gradient
    through the residual branch is scaled by ``gamma`` (the forward pass is unchanged), so more of it
    flows through the skip connections, the low-level features other families share. Returns the
    number of blocks changed."""
    from .classifiers import BasicBlock

    blocks = [m for net in nets for m in net.modules() if isinstance(m, BasicBlock)]
    for m in blocks:  # bn2's output is the residual branch, just before the skip connection is added
        m.bn2.register_forward_hook(lambda mod, inp, out: gamma * out + (1 - gamma) * out.detach())
    return len(blocks)


def feature_layer(net: nn.Module) -> nn.Module:
    """A middle layer of a surrogate (the output of its second ResNet stage, its middle feature
    block, or its middle transformer layer): where the feature-level loss looks."""
    for m in net.modules():
        if hasattr(m, "stages"):
            return m.stages[1]
        if hasattr(m, "encoder") and hasattr(m.encoder, "layers"):
            return m.encoder.layers[len(m.encoder.layers) // 2 - 1]
        if hasattr(m, "features"):
            return m.features[len(m.features) // 2]
    raise ValueError(f"no feature layer found in {type(net).__name__}")


def protect_rois(images: np.ndarray, models_dir: Path) -> np.ndarray:
    """protect's ROI for (N, 224, 224) uint8 images (the shipped segmenter, QC widening included)."""
    from medrae.toolkit.protect import Protector

    prot = Protector(models_dir, refine_steps=0)
    return np.concatenate([prot.segment(images[i : i + 32]).rois for i in range(0, len(images), 32)])


def free_cells(rois: np.ndarray, cell: int = CELL) -> np.ndarray:
    """(N, 224, 224) ROI -> (N, 1, 224, 224) float: 1 on every ``cell``-pixel cell the ROI does not touch."""
    n, g = len(rois), 224 // cell
    touched = rois.reshape(n, g, cell, g, cell).any(axis=(2, 4))
    return np.repeat(np.repeat(~touched, cell, 1), cell, 2)[:, None].astype(np.float32)


def _resized(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """``x`` as an unknown pipeline sees it: resized to ``size`` px (input diversity), or as it is."""
    return x if size is None else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 224)


# (mode, antialias) of the downscalers unknown pipelines use: nearest, bilinear without antialiasing
# (OpenCV's and TensorFlow's default), bilinear and bicubic with it (PIL), area (OpenCV INTER_AREA)
RESIZERS = (("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", True), ("area", False))


def pipeline_view(x: torch.Tensor, gen: torch.Generator, sizes: tuple[int, int] = (128, 320)) -> torch.Tensor:
    """``x`` (0..255) as one random unknown pipeline sees it (expectation over transformations):
    a small crop (up to 6 % a side, so a shift), a gamma or window change (0.8-1.25), then a resize
    to 128-320 px by one of :data:`RESIZERS`. Differentiable (nearest passes gradients to the
    pixels it picks)."""
    n, _, h, w = x.shape
    r = lambda: float(torch.rand(1, generator=gen))  # noqa: E731
    top, left, bottom, right = (int(r() * 0.06 * h) for _ in range(4))
    x = x[..., top : h - bottom, left : w - right]
    if r() < 0.5:
        gamma = float(torch.exp(torch.empty(1).uniform_(-0.223, 0.223, generator=gen)))
        x = 255.0 * (x.clamp(0, 255) / 255.0 + 1e-6) ** gamma
    size = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=gen))
    mode, aa = RESIZERS[int(torch.randint(len(RESIZERS), (1,), generator=gen))]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(size, size), mode=mode, antialias=aa and size < x.shape[-1], **kwargs)


def place(pattern: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The pattern (classes, 1, G, G) at one random placement of those protect draws from the key
    (:class:`kernels.patterns.Placement`: a left-right mirror, then a cyclic shift by whole cells)."""
    g = pattern.shape[-1]
    if float(torch.rand(1, generator=gen)) < 0.5:
        pattern = pattern.flip(-1)
    sy, sx = (int(v) for v in torch.randint(g, (2,), generator=gen))
    return torch.roll(pattern, shifts=(sy, sx), dims=(-2, -1))


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    own = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return (own - other).clamp(min=-kappa)


def train(args: argparse.Namespace) -> dict:
    from medrae.toolkit.datasets import load_split

    from .train import seed_everything
    from .train_generator import ssim_torch

    if args.cell % 2 or 224 % args.cell:  # the pattern's grid (224 / cell) must divide the refinement's 112 cells
        raise SystemExit(f"--cell must be an even divisor of 224 (2, 4, 8, 14, 16, ...), got {args.cell}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    names, nets = surrogates(Path(args.models), Path(args.zoo) if args.zoo else None, args.lgv)
    print(f"surrogates: {', '.join(names)}", flush=True)
    taps: dict[int, torch.Tensor] = {}
    if args.feature:  # the middle layers' outputs, kept by forward hooks
        for j, net in enumerate(nets):
            feature_layer(net).register_forward_hook(lambda mod, inp, out, j=j: taps.__setitem__(j, out))
    if args.sgm < 1:
        print(f"skip-gradient {args.sgm} on {skip_gradient(nets, args.sgm)} residual blocks", flush=True)
    tr = load_split(Path(args.data) / "train")
    cache = out / "train_rois.npy"
    if not cache.exists():
        np.save(cache, protect_rois(tr.images, Path(args.models)))
    rois = np.load(cache)
    X = torch.from_numpy(tr.images[:, None].astype(np.float32))
    Y = torch.from_numpy(tr.labels)
    free = torch.from_numpy(free_cells(rois, args.cell))
    pattern = torch.zeros(len(tr.classes), 1, 224 // args.cell, 224 // args.cell, requires_grad=True)
    opt = torch.optim.Adam([pattern], lr=args.lr)
    start, history = 0, []
    ckpt = out / "last.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            pattern.copy_(st["pattern"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start, history = st["epoch"] + 1, st["history"]
        print(f"resuming {out} at epoch {start}", flush=True)
    for epoch in range(start, args.epochs):
        t0 = time.time()
        perm = torch.randperm(len(X), generator=gen)
        sums = {"margin": 0.0, "ssim": 0.0, "mse": 0.0}
        for i in range(0, len(perm), args.batch):
            b = perm[i : i + args.batch]
            x, y = X[b], Y[b]
            p = place(pattern, gen) if args.placement else pattern
            amp = float(args.clip_levels[int(torch.randint(len(args.clip_levels), (1,), generator=gen))]) if args.clip_levels else args.eps
            delta = F.interpolate(p.clamp(-amp, amp), scale_factor=args.cell, mode="nearest")[y] * free[b]
            adv = x + delta
            adv = adv + (adv.clamp(0, 255) - adv).detach()  # clipping, straight-through
            loss_adv = 0.0
            for j, net in enumerate(nets):
                if isinstance(net, _LGV):
                    net.draw(gen)
                size = int(torch.randint(112, 257, (1,), generator=gen)) if float(torch.rand(1, generator=gen)) < args.diversity else None
                seen = pipeline_view(adv, gen) if args.pipelines and size is not None else _resized(adv, size)
                loss_adv = loss_adv + margin_loss(net(seen), y, args.kappa).mean() / len(nets)
                if args.feature:  # push the middle features away from the clean image's (feature disruption)
                    moved = taps[j]
                    with torch.no_grad():
                        net(_resized(x, size))  # the clean image, seen the same way
                        clean = taps[j]
                    ratio = ((moved - clean) ** 2).flatten(1).sum(1) / (clean**2).flatten(1).sum(1).clamp(min=1e-6)
                    loss_adv = loss_adv - args.feature * torch.log1p(ratio).mean() / len(nets)
            s = ssim_torch(x, adv)
            mse = ((adv - x) ** 2).mean(dim=(1, 2, 3))
            loss = loss_adv + args.quality * (F.relu(args.min_ssim - s).mean() / (1 - args.min_ssim) + F.relu(mse - args.max_mse).mean() / args.max_mse)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                pattern.clamp_(-args.eps, args.eps)
            for k, v in (("margin", loss_adv), ("ssim", s.mean()), ("mse", mse.mean())):
                sums[k] += float(v.detach()) * len(b)
        history.append({"epoch": epoch + 1, **{k: round(v / len(X), 4) for k, v in sums.items()}, "seconds": round(time.time() - t0, 1)})
        print(json.dumps(history[-1]), flush=True)
        torch.save({"pattern": pattern.detach(), "opt": opt.state_dict(), "gen": gen.get_state(), "epoch": epoch, "history": history}, ckpt)
    grid = np.round(pattern.detach().clamp(-args.eps, args.eps).numpy()[:, 0]).astype(np.int8)
    np.save(out / "pattern.npy", grid)
    result = {"command": "python -m medrae.models.train_pattern " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "surrogates": names,
              "placement": bool(args.placement), "pipelines": bool(args.pipelines), "clip_levels": args.clip_levels,
              "classes": list(tr.classes), "history": history, "eps": args.eps, "grid": 224 // args.cell, "cell": args.cell}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    if args.install:
        install(out / "pattern.npy", Path(args.install), result)
    return result


def install(pattern_file: Path, dest: Path, result: dict) -> Path:
    """Write the shipped pattern ``dest.npy`` and its card ``dest.json`` (SHA-256 of the array's bytes)."""
    grid = np.load(pattern_file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.save(dest.with_suffix(".npy"), grid)
    card = {"file": dest.with_suffix(".npy").name, "sha256": hashlib.sha256(np.ascontiguousarray(grid).tobytes()).hexdigest(),
            "shape": list(grid.shape), "dtype": "int8", "cell_px_on_224_view": result.get("cell", CELL), "classes": result["classes"], "eps": result["eps"],
            "placement": "key-drawn (mirror + cyclic shift)" if result.get("placement") else "as trained",
            "training": {"command": result["command"], "surrogates": result["surrogates"], "history": result["history"],
                         **{k: result[k] for k in ("pipelines", "clip_levels") if result.get(k)}}}
    dest.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return dest.with_suffix(".npy")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medrae.models.train_pattern", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ (a dataset directory per split)")
    p.add_argument("--zoo", default="runs/zoo", help="trained zoo (its surrogates join the ensemble); '' for the shipped classifiers only")
    p.add_argument("--models", default=str(Path(__file__).resolve().parent))
    p.add_argument("--out", default="runs/pattern")
    p.add_argument("--install", default="", help="also write the pattern and its card here (e.g. kernels/patterns/cxr3_v1)")
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--cell", type=int, default=CELL, help="pattern cell side in px of the 224x224 view (4: 56x56 cells; 8: coarser, lower frequency)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--kappa", type=float, default=5.0, help="margin beyond which an image stops pulling the pattern")
    p.add_argument("--diversity", type=float, default=0.7, help="probability of a random resize per surrogate and step")
    p.add_argument("--min-ssim", type=float, default=0.93)
    p.add_argument("--max-mse", type=float, default=25.0, help="per image, levels^2 (PSNR 34.2 dB)")
    p.add_argument("--quality", type=float, default=1.0, help="weight of the SSIM / MSE hinge penalties")
    p.add_argument("--lgv", action="store_true", help="zoo surrogates with LGV weights (python -m medrae.models.zoo lgv) attack through a random one per step")
    p.add_argument("--feature", type=float, default=0.0, help="weight of a feature-disruption loss at each surrogate's middle layer (0: off)")
    p.add_argument("--sgm", type=float, default=1.0, help="skip-gradient factor on the ResNet surrogates' residual branches (1: off)")
    p.add_argument("--placement", action="store_true", help="train for every placement protect draws from the key (a random mirror + cyclic shift per step)")
    p.add_argument("--pipelines", action="store_true", help="random unknown pipelines instead of bilinear resizes: crops, gamma, nearest / bilinear / bicubic / area to 128-320 px")
    p.add_argument("--clip-levels", type=lambda v: [float(t) for t in v.split(",")], default=None,
                   help="comma-separated amplitudes the pattern is clipped to, one drawn per step (e.g. 8,16: one pattern for both strengths)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    train(parser().parse_args(argv))


if __name__ == "__main__":
    main()
