"""Segmentation quality control on a dataset directory (toolkit/qc.py).

``--calibrate``: each QC measure's 0.5 / 99.5 percentiles on the shipped segmenter's masks (run on
cxr3/train: where ``toolkit.qc.LIMITS`` comes from). Otherwise, on a split with true lung masks:
how many images each flag raises, and how many true-lung pixels lie outside the ROI (where the
perturbation and the multi-pass hiding may go) before and after the ``widen`` policy.

    python benchmarks/probe_qc.py ../shared/data/cxr3/train --calibrate
    python benchmarks/probe_qc.py ../shared/data/cxr3/test
    python benchmarks/probe_qc.py ../shared/data/cxr3/val --models DIR   # a candidate segmenter.onnx beside the rest
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


from medrae.toolkit import qc  # noqa: E402
from medrae.toolkit.datasets import load_split  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR, Protector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--policy", default="widen", choices=qc.POLICIES)
    ap.add_argument("--models", type=Path, default=MODELS_DIR, help="models directory (default: the shipped models/)")
    args = ap.parse_args()
    split = load_split(args.data)
    prot = Protector(args.models, refine_steps=0, on_uncertain_roi=args.policy)
    segs = [prot.segment(split.images[i : i + 64]) for i in range(0, len(split.images), 64)]
    rois, plain = np.concatenate([s.rois for s in segs]), np.concatenate([s.plain for s in segs])
    assessments = [a for s in segs for a in s.assessments]
    if args.calibrate:
        keys = sorted({k for a in assessments for k in a.measures})
        for k in keys:
            v = np.array([a.measures[k] for a in assessments if k in a.measures], float)
            print(f"{k:10s} p0.5 {np.percentile(v, 0.5):.4f}  p1 {np.percentile(v, 1):.4f}  median {np.median(v):.4f}  "
                  f"p99 {np.percentile(v, 99):.4f}  p99.5 {np.percentile(v, 99.5):.4f}")
    n = len(split.images)
    flagged = np.array([a.uncertain for a in assessments])
    print(f"{args.data}: {n} images, flagged {flagged.sum()} ({100 * flagged.mean():.1f} %)")
    for f in ("area", "lungs", "hesitant", "concave", "views", "place"):
        print(f"  {f:9s} {sum(f in a.flags for a in assessments)}")
    if split.masks is None:
        return
    for name, r in (("plain ROI", plain), (f"after --on-uncertain-roi {args.policy}", rois)):
        out = split.masks & ~r
        leak = out.any(axis=(1, 2))
        print(f"{name}: images with true lung outside the ROI {leak.sum()} (flagged {int((leak & flagged).sum())}), "
              f"pixels {int(out.sum())}, ROI {100 * r.mean():.1f} % of the image")
    leak = (split.masks & ~plain).any(axis=(1, 2))
    for i in np.flatnonzero(leak & ~flagged):
        print(f"  not flagged: {split.names[i]} ({int((split.masks[i] & ~plain[i]).sum())} px) {assessments[i].measures}")


if __name__ == "__main__":
    main()
