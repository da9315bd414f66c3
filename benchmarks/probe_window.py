"""How protect does on deep images that do not fill their bit depth (prints; asserts nothing).

    python benchmarks/probe_window.py [--data ../shared/data/cxr3/val] [--low 500] [--gain 10] [--bits 12]

Each 8-bit X-ray x (30 per class) becomes a ``bits``-bit image ``low + gain * x`` (default: 500..3050
of 0..4095, like a stored radiograph), is protected as medrae protect does (encrypted, payload out
of the ROI if it fits), and the protected file is read the two ways an analysing model may read it:
through its window (its own range mapped to 0..255, which is what it was made from) and at full
scale (``value * 255 / (2**bits - 1)``). Prints the white-box ResNet18's ASR in each view over the
images it gets right in 8 bits, and the largest change in window levels (eps is 8).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from medrae.toolkit.datasets import load_split  # noqa: E402
from medrae.toolkit.imageio import Image  # noqa: E402
from medrae.toolkit.ort import session  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR, Protector, network_view, normalize, protect_with_fallback  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3" / "val")
    ap.add_argument("--low", type=int, default=500)
    ap.add_argument("--gain", type=int, default=10)
    ap.add_argument("--bits", type=int, default=12)
    args = ap.parse_args()
    split = load_split(args.data)
    pick = np.concatenate([np.flatnonzero(split.labels == c)[:30] for c in range(3)])
    xs, ys = split.images[pick], split.labels[pick]
    ceiling = (1 << args.bits) - 1
    if args.low + args.gain * 255 > ceiling:
        raise SystemExit(f"--low {args.low} + 255 x --gain {args.gain} exceeds {args.bits} bits")
    native = (args.low + args.gain * xs.astype(np.int64)).astype(np.uint16)
    clf = session(MODELS_DIR / "classifier_resnet18.onnx", "cpu")
    predict = lambda v: clf.run(None, {"image": normalize(v)})[0].argmax(1)  # noqa: E731
    right = predict(xs) == ys
    protector, key = Protector(device="cpu"), os.urandom(32)
    images = [Image(n, ceiling, "png") for n in native]
    views = np.stack([network_view(im) for im in images])
    marked = []
    for b in range(0, len(images), 16):
        a = protector.analyse(views[b : b + 16])
        for k, (im, roi, grid) in enumerate(zip(images[b : b + 16], a.rois, a.grids)):  # as protect does (guard, pattern)
            marked.append(protect_with_fallback(im, roi, grid, protector.eps, key, guard=a.guards[k], pattern=a.pattern(k))[0])
    marked = np.stack(marked).astype(np.float64)
    window = np.clip(np.round((marked - args.low) / args.gain), 0, 255).astype(np.uint8)  # exactly x where unchanged
    full = np.clip(np.round(marked * 255 / ceiling), 0, 255).astype(np.uint8)
    asr = lambda v: np.mean(predict(v)[right] != ys[right])  # noqa: E731
    print(f"{len(xs)} images as {args.low}..{args.low + 255 * args.gain} of {args.bits} bits: white-box ASR through the window "
          f"{asr(window):.1%}, at full scale {asr(full):.1%} (over the {right.sum()} right in 8 bits); largest change "
          f"{np.abs(window.astype(int) - xs.astype(int)).max()} window levels")


if __name__ == "__main__":
    main()
