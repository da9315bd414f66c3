"""How far a dense attack gets on protect's free area: PGD on the 112x112 cell grid outside the
ROI that protect itself computes (segmenter, ``--roi-threshold``, 4 px margin), eps 8, rounded to
integers (no hiding), ResNet18 white box, all cxr3 val images (prints; asserts nothing).

    python benchmarks/probe_roi_pgd.py [--roi-threshold 0.05] [--iters 50] [--step 1]

It tells whether protect's sparse refinement falls short of the ROI's limit or the ROI leaves too
little to attack (needs PyTorch: the classifier is rebuilt from its ONNX file).
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
sys.path.insert(0, str(ROOT))

from models.data import normalize as norm  # noqa: E402
from models.from_onnx import load_classifier  # noqa: E402
from toolkit.datasets import load_split  # noqa: E402
from toolkit.protect import MODELS_DIR, Protector, cells_touching  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3" / "val")
    ap.add_argument("--roi-threshold", type=float, default=None)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--step", type=float, default=1.0, help="levels per iteration")
    args = ap.parse_args()
    torch.set_num_threads(2)
    split = load_split(args.data)
    free = ~cells_touching(Protector(refine_steps=0, roi_threshold=args.roi_threshold).analyse(split.images).rois, 2)
    net = load_classifier(MODELS_DIR / "classifier_resnet18.onnx")
    up = lambda d, f: F.interpolate(d * f, scale_factor=2, mode="nearest")  # noqa: E731
    right, fooled, t0 = [], [], time.perf_counter()
    for i in range(0, len(split.images), 30):
        x = torch.tensor(split.images[i : i + 30], dtype=torch.float32)[:, None]
        y = torch.tensor(split.labels[i : i + 30])
        f = torch.tensor(free[i : i + 30], dtype=torch.float32)[:, None]
        d = torch.zeros(len(x), 1, 112, 112, requires_grad=True)
        for _ in range(args.iters):
            z = net(norm((x + up(d, f)).clamp(0, 255)))
            other = z.masked_fill(F.one_hot(y, 3).bool(), -1e9).amax(1)
            (g,) = torch.autograd.grad((z.gather(1, y[:, None])[:, 0] - other).clamp(min=-2).sum(), d)
            with torch.no_grad():
                d -= args.step * g.sign()
                d.clamp_(-8, 8)
        with torch.no_grad():
            right.append((net(norm(x)).argmax(1) == y).numpy())
            fooled.append((net(norm((x + up(torch.round(d), f)).clamp(0, 255))).argmax(1) != y).numpy())
    right, fooled = np.concatenate(right), np.concatenate(fooled)
    print(f"ROI threshold {args.roi_threshold or 'default'}: PGD {args.iters} x {args.step:g} levels on the free 2x2 cells: "
          f"ASR {fooled[right].mean():.1%} over the {right.sum()} images the classifier gets right "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
