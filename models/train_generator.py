"""Train NROI-AdvGAN against a frozen white-box classifier.

    python -m medrae.models.train_generator --data ../shared/data/cxr3 --classifier runs/r18/best.pt --out runs/gen

``--arch advgan_paper --loss paper`` is the reference paper (eq. 7-14). The default
``--arch advgan_grid --loss ours`` trains what protect embeds: integer grid values (straight-through
rounding), RDH-like ±1 noise on the adversarial image, a C&W-style margin instead of the unbounded
class loss (once an image is fooled, energy and rate are minimised), and an L1 rate term on the grid.
Validation measures ASR on the 8-bit adversarial image, PSNR, SSIM and the coded size (``kernels``).
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medrae import kernels

from . import create
from .advgan import Discriminator
from .data import load_split, normalize
from .train import Classifier, augment, build, seed_everything

SSIM_C1, SSIM_C2 = 6.5025, 58.5225  # (0.01*255)^2, (0.03*255)^2


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    return g[None, None]


_WIN = _gauss()


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (N, 1, H, W) images on the 0-255 scale (Gaussian 11x11, sigma 1.5)."""
    w = _WIN.to(a.device)
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    saa = F.conv2d(a * a, w) - mu_a**2
    sbb = F.conv2d(b * b, w) - mu_b**2
    sab = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * sab + SSIM_C2)) / ((mu_a**2 + mu_b**2 + SSIM_C1) * (saa + sbb + SSIM_C2))
    return s.mean(dim=(1, 2, 3))


def half(x: torch.Tensor) -> torch.Tensor:
    """The discriminator looks at half resolution (CPU budget; the classifiers do too)."""
    return F.avg_pool2d(x, 2, ceil_mode=True)


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * px + 1, 1, px) if px > 0 else mask


def load_classifier(path: str, device: str) -> Classifier:
    """A ``models.train`` checkpoint (best.pt), or a shipped ``classifier_*.onnx`` rebuilt in torch
    (``models.from_onnx``: its card names the architecture; checked equal to ONNX Runtime)."""
    if str(path).endswith(".onnx"):
        from .from_onnx import load_classifier as from_onnx

        model = from_onnx(path).to(device)
    else:
        state = torch.load(path, weights_only=False, map_location=device)
        model = build("classifier", state["arch"], state["size"]).to(device)
        model.load_state_dict(state["model"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def class_loss(logits: torch.Tensor, y: torch.Tensor, mode: str, margin: float) -> torch.Tensor:
    """paper: -log p(most likely wrong class). ours: relu(z_y - max_wrong z + margin)."""
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    if mode == "paper":
        return -(F.log_softmax(logits, 1).gather(1, wrong.argmax(1, keepdim=True))).mean()
    return F.relu(logits.gather(1, y[:, None])[:, 0] - wrong.amax(1) + margin).mean()


def grad_cam(clf, x_norm: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of class ``y`` on the classifier's last residual stage,
    normalised per image; differentiable in ``x_norm`` when ``create_graph``."""
    feats = {}
    stage = clf.net.stages[-1]
    hook = stage.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    try:
        logits = clf(x_norm)
    finally:
        hook.remove()
    a = feats["a"]
    score = logits.gather(1, y[:, None]).sum()
    g = torch.autograd.grad(score, a, create_graph=create_graph)[0]
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    return cam / cam.flatten(1).amax(1).clamp(min=1e-6)[:, None, None]


def csm_loss(clf, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, c: float, alpha: float, margin: float) -> torch.Tensor:
    """CSM-GAN: hinge(||delta||_2 - c) + L_loss - alpha * ||GradCAM(X) - GradCAM(X + delta)||_2
    (delta on the 0..1 scale; L_loss the margin loss; Grad-CAM on the white-box classifier)."""
    norm = ((adv - x) / 255).flatten(1).norm(dim=1)
    with torch.enable_grad():
        cam_x = grad_cam(clf, normalize(x).requires_grad_(True), y, create_graph=False).detach()
    cam_adv = grad_cam(clf, normalize(adv), y, create_graph=True)
    shift = (cam_x - cam_adv).flatten(1).norm(dim=1)
    return (F.relu(norm - c) + class_loss(logits, y, "ours", margin) - alpha * shift).mean()


def adversarial(gen, x255: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """8-bit adversarial image from uint8-valued ``x255``: integer perturbation, clipped."""
    d = gen(normalize(x255), mask)
    return torch.clamp(x255 + torch.round(d), 0, 255)


@torch.no_grad()
def validate(gen, clf, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, dil: int, device: str, code: bool) -> dict:
    gen.eval()
    fooled, ps, ss, bits, n_ok = [], [], [], [], 0
    for i in range(0, len(images), 32):
        x = torch.from_numpy(images[i : i + 32]).unsqueeze(1).float().to(device)
        m = dilate(torch.from_numpy(masks[i : i + 32]).unsqueeze(1).float().to(device), dil)
        y = torch.from_numpy(labels[i : i + 32]).to(device)
        ok = clf(normalize(x)).argmax(1) == y
        adv = adversarial(gen, x, m)
        pred = clf(normalize(adv)).argmax(1)
        fooled += (pred != y)[ok].tolist()
        n_ok += int(ok.sum())
        mse = ((adv - x) ** 2).mean(dim=(1, 2, 3))
        ps += (10 * torch.log10(255**2 / mse.clamp(min=1e-10))).tolist()
        ss += ssim_torch(x, adv).tolist()
        if code:
            for a, b in zip(adv.cpu().numpy().astype(np.int64), x.cpu().numpy().astype(np.int64)):
                bits.append(8 * len(kernels.encode_perturbation((a - b)[0].astype(np.int16))) / a[0].size)
    gen.train()
    return {
        "asr": float(np.mean(fooled)) if fooled else 0.0,
        "psnr": float(np.mean(ps)),
        "ssim": float(np.mean(ss)),
        "bpp": float(np.mean(bits)) if bits else float("nan"),
        "n_correct": n_ok,
    }


def train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_rng = seed_everything(args.seed)
    data = Path(args.data)
    tr, va = load_split(data / "train"), load_split(data / "val")
    if args.limit:  # quick runs: a class-balanced subset of both splits
        for split in (tr, va):
            keep = np.concatenate([np.flatnonzero(split.labels == c)[: args.limit // len(split.classes)] for c in range(len(split.classes))])
            split.images, split.masks, split.labels = split.images[keep], split.masks[keep], split.labels[keep]
    clf = load_classifier(args.classifier, args.device)
    G = create(args.arch, eps=args.eps).to(args.device)
    if args.init:
        st = torch.load(args.init, weights_only=False, map_location=args.device)
        missing, unexpected = G.load_state_dict(st.get("G", st.get("model")), strict=False)
        print(f"warm start from {args.init}: new {missing}, ignored {unexpected}")
    D = Discriminator().to(args.device)
    D(half(torch.zeros(1, 1, *tr.images.shape[1:], device=args.device)))  # materialise the lazy layer
    # the universal term is one logit per cell: a larger step lets it settle within a few epochs
    uni = [G.universal] if G.universal is not None else []
    rest = [p for p in G.parameters() if all(p is not u for u in uni)]
    opt_g = torch.optim.Adam([{"params": rest}, {"params": uni, "lr": 10 * args.lr}], lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    start, best, history, lam2 = 0, -1e9, [], 0.0
    ckpt = out / "last.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        G.load_state_dict(st["G"])
        D.load_state_dict(st["D"])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        gen_rng.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        start, best, history, lam2 = st["epoch"] + 1, st["best"], st["history"], st["lam2"]
        print(f"resuming {out} at epoch {start}")
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        for epoch in range(start, args.epochs):
            t0 = time.time()
            perm = torch.randperm(len(tr.images), generator=gen_rng)
            task = bar.add_task(f"epoch {epoch + 1}/{args.epochs}", total=len(perm))
            sums = {"cls": 0.0, "mse": 0.0, "ssim": 0.0, "rate": 0.0}
            for i in range(0, len(perm), args.batch):
                idx = perm[i : i + args.batch].numpy()
                x = torch.from_numpy(tr.images[idx]).unsqueeze(1).float() / 255
                m = torch.from_numpy(tr.masks[idx]).unsqueeze(1).float()
                x, m = augment(x, m, gen_rng, strength=0.5)
                x = torch.round(x * 255).to(args.device)
                m = dilate(m.to(args.device), args.dilate) if not args.no_roi else torch.zeros_like(m).to(args.device)
                y = torch.from_numpy(tr.labels[idx]).to(args.device)
                grid = None
                if G.grid_factor > 1:  # one generator pass for both the perturbation and the rate term
                    grid = G.grid(normalize(x), m)
                    d = G.upsample(grid, x.shape[-2:])
                else:
                    d = G(normalize(x), m)
                if args.loss in ("ours", "csm"):
                    d = d + (torch.round(d) - d).detach()  # the exact integers protect applies
                adv = x + d
                adv = adv + (torch.clamp(adv, 0, 255) - adv).detach()  # clipping, straight-through
                if args.rdh_noise > 0:  # the RDH's ±1 changes
                    noise = torch.randint(-1, 2, adv.shape, generator=gen_rng).float().to(args.device)
                    keep = (torch.rand(adv.shape, generator=gen_rng) < args.rdh_noise).float().to(args.device)
                    adv = adv + noise * keep
                logits = clf(normalize(adv))
                if args.loss == "csm":
                    l_cls = csm_loss(clf, x, adv, y, logits, args.csm_c, args.csm_alpha, args.margin)
                else:
                    l_cls = class_loss(logits, y, args.loss, args.margin)
                l_mse = ((adv - x) ** 2).mean() / (args.eps**2 if args.loss == "ours" else 255.0**2)
                l_ssim = 1 - ssim_torch(x, adv).mean()
                loss = args.l1 * l_cls + args.l3 * l_mse + args.l4 * l_ssim
                l_rate = torch.zeros(())
                if args.loss in ("ours", "csm") and grid is not None:
                    l_rate = grid.abs().mean() / args.eps
                    loss = loss + args.rate * l_rate
                if lam2 > 0:
                    loss = loss + lam2 * F.binary_cross_entropy_with_logits(D(half(normalize(adv))), torch.ones(len(idx), 1, device=args.device))
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
                # discriminator: real vs adversarial
                d_loss = F.binary_cross_entropy_with_logits(D(half(normalize(x))), torch.ones(len(idx), 1, device=args.device)) + \
                    F.binary_cross_entropy_with_logits(D(half(normalize(adv.detach()))), torch.zeros(len(idx), 1, device=args.device))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                for k, v in (("cls", l_cls), ("mse", l_mse), ("ssim", l_ssim), ("rate", l_rate)):
                    sums[k] += v.item() * len(idx)
                bar.advance(task, len(idx))
            bar.remove_task(task)
            val_masks = np.zeros_like(va.masks) if args.no_roi else va.masks
            val = validate(G, clf, va.images, val_masks, va.labels, args.dilate, args.device, code=True)
            if val["asr"] >= 0.8:
                lam2 = args.l2  # eq. 14: the GAN term only once the attack works
            metrics = {"epoch": epoch + 1, **{k: v / len(perm) for k, v in sums.items()}, **{f"val_{k}": v for k, v in val.items()}, "lam2": lam2, "seconds": round(time.time() - t0, 1)}
            history.append(metrics)
            print(json.dumps(metrics), flush=True)
            # best: highest ASR among epochs meeting the image-quality floor, then highest PSNR
            score = val["asr"] * 100 + (val["psnr"] if val["psnr"] >= args.min_psnr else -100)
            if score > best:
                best = score
                torch.save({"model": G.state_dict(), "arch": args.arch, "eps": args.eps, "epoch": epoch + 1, "dilate": args.dilate}, out / "best.pt")
            torch.save({"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "gen": gen_rng.get_state(),
                        "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best, "history": history, "lam2": lam2}, ckpt)
            with open(out / "metrics.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(history[-1]))
                w.writeheader()
                w.writerows(history)
            (out / "metrics.json").write_text(json.dumps(history, indent=1))
    result = {"command": "python -m medrae.models.train_generator " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "best_score": best}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--classifier", required=True, help="best.pt of the white-box classifier (models.train), or a shipped classifier_*.onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="advgan_grid2", choices=["advgan_grid2u", "advgan_grid2", "advgan_grid", "advgan_paper"])
    p.add_argument("--loss", default="ours", choices=["ours", "paper", "csm"], help="csm: the CSM-GAN seed method's loss (Grad-CAM shift, L2 hinge)")
    p.add_argument("--csm-c", type=float, default=3.5, help="CSM-GAN: L2 budget of delta on the 0..1 scale")
    p.add_argument("--csm-alpha", type=float, default=1.0, help="CSM-GAN: weight of the Grad-CAM shift")
    p.add_argument("--no-roi", action="store_true", help="perturb the whole image (an empty ROI), as the seed attacks do")
    p.add_argument("--eps", type=float, default=8.0, help="in 1/255 units")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--l1", type=float, default=10.0)
    p.add_argument("--l2", type=float, default=1.0)
    p.add_argument("--l3", type=float, default=10.0)
    p.add_argument("--l4", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=1.0, help="weight of the L1 rate term on the grid (ours)")
    p.add_argument("--margin", type=float, default=3.0, help="logit margin of the class loss (ours)")
    p.add_argument("--rdh-noise", type=float, default=0.3, help="fraction of pixels moved by ±1 (ours)")
    p.add_argument("--dilate", type=int, default=4, help="ROI safety dilation in pixels")
    p.add_argument("--min-psnr", type=float, default=34.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only this many images per split (quick runs)")
    p.add_argument("--init", default="", help="warm start: generator weights from a last.pt/best.pt (missing layers stay new)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.loss == "paper":
        args.rdh_noise = 0.0
    train(args)


if __name__ == "__main__":
    main()
