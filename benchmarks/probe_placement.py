"""How much of a keyed pattern placement an attacker with medrae but without the key recovers.

    python benchmarks/probe_placement.py --data ../shared/data/cxr3/val --limit 30 --block 0 --block 8

Each X-ray is protected at the standard level with the given block size (0: one key-drawn mirror +
cyclic shift for the whole pattern; B: one per B x B square of cells), then the attacker's matched
filter (:func:`medrae.evaluation.adaptive.matched_estimate`, on its own lung mask from the shipped
segmenter) estimates the pattern. Printed: white-box ASR, SSIM, and the share of the pattern's
covered non-zero cells whose value the estimate gets right (chance: about the share of cells at
the pattern's most common amplitude).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=30, help="every (N / limit)-th X-ray of the split")
    ap.add_argument("--block", type=int, action="append", required=True)
    args = ap.parse_args()

    from medrae.evaluation import adaptive
    from medrae.evaluation.evaluate_models import classifiers, predict
    from medrae.kernels import patterns
    from medrae.toolkit.datasets import load_split
    from medrae.toolkit.metrics import ssim
    from medrae.toolkit.protect import MODELS_DIR, Fitted, fit_analysed
    from medrae.toolkit.settings import ProtectSettings

    split = load_split(args.data)
    idx = np.linspace(0, len(split.images) - 1, args.limit).astype(int)
    x, y = split.images[idx], split.labels[idx]
    wb = classifiers(MODELS_DIR)["classifier_resnet18"]
    ok = predict(wb, x) == y
    key = os.urandom(32)
    for block in args.block:
        prot = ProtectSettings(pattern_block=block).protector()
        a = prot.analyse(x, key=key)
        out = x.copy()
        for k, f in enumerate(fit_analysed(prot, x, a, key, check=False)):
            if isinstance(f, Fitted):
                out[k] = f.marked
        free = adaptive._free_cells(prot.segment(out).rois, prot.pattern_grid.shape[-1])
        right = []
        for k in range(len(x)):
            use = a.pattern(k)
            if use is None:
                continue
            true = patterns.placed(use.pattern_id, use.cls, use.placement, use.clip, use.gain)
            est = adaptive.matched_estimate(out[k], free[k], use.pattern_id, use.clip or prot.eps, block)
            m = free[k] & (true != 0)
            if m.any():
                right.append((est[m] == true[m]).mean())
        print(f"block {block:2d}: white-box {100 * (predict(wb, out) != y)[ok].mean():.1f} % SSIM "
              f"{np.mean([ssim(p, q, data_range=255) for p, q in zip(x, out)]):.4f}; the matched filter gets "
              f"{100 * np.mean(right):.1f} % of the pattern's cells right ({len(x)} X-rays)", flush=True)


if __name__ == "__main__":
    main()
