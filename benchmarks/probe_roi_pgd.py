"""How far a dense attack gets on protect's free area: PGD on the 112x112 cell grid outside the
ROI that protect itself computes (segmenter, ``--roi-threshold``, 4 px margin), eps 8, rounded to
integers (no hiding), ResNet18 white box, a cxr3 split (prints; asserts nothing).

    python benchmarks/probe_roi_pgd.py [--data DIR] [--roi-threshold 0.05] [--iters 50] [--step 1]
                                       [--restarts R] [--after-refine] [--roi-eps E [--roi-cell N]]

It tells whether protect's sparse refinement falls short of the ROI's limit or the ROI leaves too
little to attack (needs PyTorch: the classifier is rebuilt from its ONNX file). ``--restarts R``
adds R runs from uniform random starts (the first run starts at zero), with a cosine step schedule
from 2 ``--step`` down to 0.05 levels; an image counts as fooled if any run fools it.
``--after-refine`` attacks only the images protect's default refinement leaves unfooled (margin
>= 0 before hiding) and prints the bound this puts on the white-box ASR before hiding. ``--roi-eps E`` also lets the
attack move the cells it may not touch (the ROI and the 2 px guard) by up to E levels: what the lungs'
promise (no pixel there changed by more than 1 level) would leave to gain with E = 1. ``--roi-cell N``
keeps that move constant over N x N pixel cells (N even, dividing 224): a nudge cheap enough to code
(one value per cell) instead of one per 2x2 cell.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from medrae.models.data import normalize as norm  # noqa: E402
from medrae.models.from_onnx import load_classifier  # noqa: E402
from medrae.toolkit.datasets import load_split  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR, Protector, cells_touching  # noqa: E402


def margin(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the largest other logit (< 0: misclassified)."""
    z = net(norm(x.clamp(0, 255)))
    return z.gather(1, y[:, None])[:, 0] - z.masked_fill(F.one_hot(y, 3).bool(), -1e9).amax(1)


def attack(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, free: torch.Tensor, iters: int, step: float,
           restarts: int, roi_eps: float = 0.0, roi_cell: int = 2) -> torch.Tensor:
    """Smallest margin reached on the rounded perturbation over the zero start and ``restarts`` random ones.
    The free 2x2 cells move by up to 8 levels, the others (ROI and guard) by up to ``roi_eps``, one
    value per ``roi_cell`` x ``roi_cell`` pixels."""
    up = lambda d, f=2: F.interpolate(d, scale_factor=f, mode="nearest")  # noqa: E731
    n = 224 // roi_cell
    shapes = [(len(x), 1, 112, 112), (len(x), 1, n, n)]
    bounds = [8 * free, torch.full(shapes[1], float(roi_eps))]
    kept = 1 - free  # the cells the free part may not move: the ROI part's support

    def total(d: list[torch.Tensor]) -> torch.Tensor:
        return up(d[0] * free + up(d[1], roi_cell // 2) * kept)

    best = torch.full((len(x),), float("inf"))
    for run in range(restarts + 1):
        d = [((torch.rand(s) * 2 - 1) * b if run else torch.zeros(s)).requires_grad_(True) for s, b in zip(shapes, bounds)]
        for it in range(iters):
            size = step if not restarts else 2 * step * 0.5 * (1 + np.cos(np.pi * it / iters)) + 0.05
            grads = torch.autograd.grad(margin(net, x + total(d), y).clamp(min=-2).sum(), d)
            with torch.no_grad():
                for di, g, b in zip(d, grads, bounds):
                    di -= size * g.sign()
                    di.copy_(torch.maximum(torch.minimum(di, b), -b))
        with torch.no_grad():
            best = torch.minimum(best, margin(net, x + total([torch.round(di) for di in d]), y))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3" / "val")
    ap.add_argument("--roi-threshold", type=float, default=None)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--step", type=float, default=1.0, help="levels per iteration")
    ap.add_argument("--restarts", type=int, default=0, help="extra runs from random starts (cosine step schedule)")
    ap.add_argument("--after-refine", action="store_true", help="only the images protect's refinement leaves unfooled")
    ap.add_argument("--roi-eps", type=float, default=0.0, help="levels the ROI and its guard may move (default 0)")
    ap.add_argument("--roi-cell", type=int, default=2, help="pixels per side of one ROI move (default 2, as the free cells)")
    args = ap.parse_args()
    if args.roi_cell < 2 or args.roi_cell % 2 or 224 % args.roi_cell:
        ap.error(f"--roi-cell must be even and divide 224, got {args.roi_cell}")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    split = load_split(args.data)
    net = load_classifier(MODELS_DIR / "classifier_resnet18.onnx")
    x_all, y_all = torch.tensor(split.images, dtype=torch.float32)[:, None], torch.tensor(split.labels)
    with torch.no_grad():
        right = (net(norm(x_all)).argmax(1) == y_all).numpy()
    protector = Protector(refine_steps=None if args.after_refine else 0, roi_threshold=args.roi_threshold, device="cpu")
    analysis = [protector.analyse(split.images[i : i + 16]) for i in range(0, len(split.images), 16)]
    rois = np.concatenate([a.rois for a in analysis])
    todo = np.flatnonzero(right & (np.concatenate([a.margins for a in analysis]) >= 0)) if args.after_refine else np.flatnonzero(right)
    free = torch.tensor(~cells_touching(rois, 2), dtype=torch.float32)[:, None]
    t0, fooled = time.perf_counter(), 0
    for i in range(0, len(todo), 30):
        k = torch.tensor(todo[i : i + 30])
        fooled += int((attack(net, x_all[k], y_all[k], free[k], args.iters, args.step, args.restarts, args.roi_eps, args.roi_cell) < 0).sum())
    runs = f"PGD {args.iters} x {args.step:g} levels{f', {args.restarts} random restarts' if args.restarts else ''}"
    runs += f" (ROI and guard +-{args.roi_eps:g} on {args.roi_cell}x{args.roi_cell} cells)" if args.roi_eps else ""
    if args.after_refine:
        left = len(todo)
        print(f"ROI threshold {args.roi_threshold or 'default'}: the refinement leaves {left} of the {right.sum()} images the classifier "
              f"gets right unfooled; {runs} on the free 2x2 cells fools {fooled} of them: white-box ASR before hiding "
              f"<= {(right.sum() - left + fooled) / right.sum():.1%} with this attack's help ({time.perf_counter() - t0:.0f} s)")
    else:
        print(f"ROI threshold {args.roi_threshold or 'default'}: {runs} on the free 2x2 cells: "
              f"ASR {fooled / len(todo):.1%} over the {len(todo)} images the classifier gets right "
              f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
