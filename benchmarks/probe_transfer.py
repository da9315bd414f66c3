"""Which perturbations transfer to the held-out zoo targets? (issue 16's candidates, measured)

    python benchmarks/probe_transfer.py --data ../shared/data/cxr3/test --limit 90 \
        --variant default --variant noise --variant pgd:shipped:2:20 --variant pgd:all:4:20

Each variant perturbs outside protect's ROI (eps 8), is made reversible with protect's own codec + RDH
fallback (so what is scored is the saved file), and is scored on the zoo's held-out targets
(``medrae.evaluation.transfer``), beside white-box ResNet18 ASR, PSNR, SSIM and payload bits per pixel.
Variant ``pgd:SURROGATES:FACTOR:STEPS[:di][:l2=W]``: sign PGD on a grid of FACTOR-pixel cells
against the surrogate set (``shipped``: the four shipped classifiers; ``zoo``: the zoo's surrogates;
``all``: both; or names joined by ``+``), with input diversity if ``di``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


SHIPPED = ("classifier_resnet18", "classifier_vgg16_small", "classifier_vgg16_small_cbam_pruned", "classifier_vgg16_small_advtrained")


def surrogates(spec: str, models_dir: Path, zoo_dir: Path):
    import torch
    from torch import nn

    from medrae.models import zoo
    from medrae.models.from_onnx import load_classifier

    class Pixels(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net((x / 255.0 - 0.5) / 0.25)

    names = {"shipped": list(SHIPPED), "zoo": zoo.trained(zoo_dir, "surrogate"), "all": list(SHIPPED) + zoo.trained(zoo_dir, "surrogate")}.get(spec, spec.split("+"))
    out = []
    for n in names:
        if n.startswith("classifier_"):
            out.append(Pixels(load_classifier(models_dir / f"{n}.onnx")).eval())
        else:
            if zoo.member(n).role != "surrogate":
                raise SystemExit(f"{n} is a held-out target: never attack with it")
            out.append(zoo.load(zoo_dir, n))
    for m in out:
        for p in m.parameters():
            p.requires_grad_(False)
    return names, out


def grid_pgd(models, x, y, free_px, factor, steps, eps=8, di=False, seed=0):
    """Sign PGD on a (224/factor)^2 grid, cells outside the ROI only; returns integer grids."""
    import torch
    import torch.nn.functional as F

    g = 224 // factor
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x[:, None].astype(np.float32))
    yt = torch.from_numpy(y)
    free = torch.from_numpy(free_px[:, None].astype(np.float32))
    theta = torch.zeros(len(x), 1, g, g)
    alpha = 2.0 * eps / steps * 1.25
    for t in range(steps):
        theta.requires_grad_(True)
        delta = F.interpolate(theta, scale_factor=factor, mode="nearest") * free
        adv = (xt + delta).clamp(0, 255)
        if di:
            s = int(torch.randint(192, 257, (1,), generator=gen))
            adv = F.interpolate(adv, size=(s, s), mode="bilinear", align_corners=False, antialias=s < 224)
        loss = sum(F.cross_entropy(m(adv), yt) for m in models) / len(models)
        grad = torch.autograd.grad(loss, theta)[0]
        theta = (theta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return np.round(theta[:, 0].numpy()).astype(np.int64)


def torch_refiner(models, steps, fraction, margin, robust=False, step=4, factor=2):
    """protect's sparse refinement (toolkit.refine.Refiner's loop), its gradients from torch models:
    what an ensemble of these surrogates would give if shipped as gradient models."""
    import torch

    from medrae.toolkit.refine import Refiner, RefineSettings

    class TorchRefiner(Refiner):
        def __init__(self):
            self.sessions = list(models)
            self.cards = [{"architecture": type(m).__name__} for m in models]
            self.settings = RefineSettings(steps=steps, fraction=fraction, margin=margin, robust=robust, step=step, factor=factor)

        def margins(self, views, labels, count=None):
            out_m, out_l, out_g = [], [], []
            for m, lab in zip(self.sessions[:count], labels):
                x = torch.from_numpy(views[:, None].astype(np.float32)).requires_grad_(True)
                z = m(x)
                lab = np.where(lab < 0, z.detach().argmax(1).numpy(), lab)
                lt = torch.from_numpy(lab)
                own = z.gather(1, lt[:, None])[:, 0]
                other = z.scatter(1, lt[:, None], float("-inf")).max(1).values
                marg = own - other
                g = torch.autograd.grad(marg.sum(), x)[0][:, 0].numpy()
                out_m.append(marg.detach().numpy())
                out_l.append(lab)
                out_g.append(g)
            return np.stack(out_m), np.stack(out_l), np.stack(out_g)

    return TorchRefiner()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cxr3/test")
    p.add_argument("--zoo", default="runs/zoo")
    p.add_argument("--models", default="models")
    p.add_argument("--limit", type=int, default=90)
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--conditions", default="file")
    p.add_argument("--pattern", default="", help="variant default with this candidate transfer pattern (.npy from models.train_pattern) "
                                                   "instead of the shipped one; 'none' for no pattern")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from medrae import kernels
    from medrae.toolkit.datasets import load_split
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.metrics import psnr, ssim
    from medrae.toolkit.protect import Protector, cells_touching, fit_analysed, protect_with_fallback
    from medrae.evaluation.transfer import TransferLab, noise_floor, summary

    split = load_split(args.data)
    per = args.limit // len(split.classes)
    idx = np.concatenate([np.flatnonzero(split.labels == c)[:per] for c in range(len(split.classes))])
    x, y = split.images[idx], split.labels[idx]
    lab = TransferLab(args.zoo, x, y, args.conditions.split(","))
    print("targets:", ", ".join(f"{n} {lab.accuracy(n):.3f}" for n in lab.names))
    pattern = None
    if args.pattern == "none":
        pattern = 0
    elif args.pattern:  # registered for this process only, under an id no release uses (the path is absolute)
        import hashlib

        from medrae.kernels import patterns

        cand = Path(args.pattern).resolve()
        pattern = 255
        patterns.register_pattern(pattern, str(cand.with_suffix("")), hashlib.sha256(np.ascontiguousarray(np.load(cand)).tobytes()).hexdigest())
    prot = Protector(args.models, pattern=pattern)
    t0 = time.time()
    a = prot.analyse(x)
    t_default = time.time() - t0
    from medrae.evaluation.evaluate_models import classifiers, predict

    wb = classifiers(Path(args.models))["classifier_resnet18"]
    wb_ok = predict(wb, x) == y
    key = os.urandom(32)
    for v in args.variant or ["default", "noise"]:
        t0 = time.time()
        if v == "noise":
            out, bits = noise_floor(x, 8), np.full(len(x), np.nan)
        else:
            if v == "default":
                grids, secs = a.grids, t_default
            else:
                parts = v.split(":")
                names, models = surrogates(parts[1], Path(args.models), Path(args.zoo))
                if parts[0] == "refine":  # refine:SURR:STEPS:FRACTION:MARGIN[:robust][:f4]
                    factor = 4 if "f4" in parts else 8 if "f8" in parts else 2
                    r = torch_refiner(models, int(parts[2]), float(parts[3]), float(parts[4]), "robust" in parts, factor=factor)
                    grids = r.refine(x, ~cells_touching(a.rois, factor), 8).grids
                else:
                    factor, steps = int(parts[2]), int(parts[3])
                    free_cells = ~cells_touching(a.rois, factor)
                    free_px = np.repeat(np.repeat(free_cells, factor, 1), factor, 2)
                    grids = grid_pgd(models, x, y, free_px, factor, steps, di="di" in parts)
            secs = time.time() - t0
            out, bits = x.copy(), np.full(len(x), np.nan)
            if v == "default":  # as medrae protect fits them: refined again without the pattern where it fits only coarser
                for k, f in enumerate(fit_analysed(prot, x, a, key, check=False)):
                    if f is not None and not isinstance(f, kernels.CapacityError):
                        out[k], bits[k] = f.marked, f.info.payload_bits
            else:
                for k in range(len(x)):
                    try:
                        marked, info, *_ = protect_with_fallback(Image(x[k], 255, "png"), a.rois[k], grids[k], 8, key, check=False, guard=a.guards[k])
                    except kernels.CapacityError:
                        continue
                    out[k], bits[k] = marked, info.payload_bits
        res = lab.asr(out)
        wb_asr = float((predict(wb, out) != y)[wb_ok].mean())
        q = [psnr(a0, b0, data_range=255) for a0, b0 in zip(x, out)]
        s = [ssim(a0, b0, data_range=255) for a0, b0 in zip(x, out)]
        fit = np.isfinite(bits)
        for c, row in res.items():
            sm = summary(row)
            print(f"{v:28s} {c:6s} median {sm['median']*100:5.1f} min {sm['min']*100:5.1f} | " + " ".join(f"{row[n]*100:5.1f}" for n in lab.names)
                  + f" | wb {wb_asr*100:5.1f} psnr {np.mean([z for z in q if np.isfinite(z)]):.2f} ssim {np.mean(s):.4f}"
                  f" fit {fit.mean()*100:.0f}% bpp {np.nanmean(bits)/224/224 if fit.any() else float('nan'):.3f} {secs/len(x)*1000:.0f} ms/img", flush=True)


if __name__ == "__main__":
    main()
