"""Trade-offs of protect's sparse refinement on cxr3 val (prints; asserts nothing).

    python benchmarks/probe_refine.py [--all] [--roi-margin 4] [--roi-threshold P] [--roi-convex] [--from-generator] SPEC [SPEC ...]
    SPEC = WHITE_BOXES:MARGIN:ROBUST:FRACTION:FACTOR:STEPS, e.g. resnet18:1:0:0.05:2:40
           (WHITE_BOXES joined by '+', e.g. resnet18+vgg16_small)

For each setting: ASR of the final RAE (after coding and hiding anywhere, as `--rdh-in-roi`; no encryption) on every shipped
classifier over the images it gets right, white-box ASR after a half-size-and-back resize, PSNR,
payload bits per pixel, how often the payload fits outside the ROI (protect's default), ms per image. 90 val images (30 per class), or all 270 with ``--all``.
Also prints how many true-lung pixels lie outside the protected cells at the given ROI margin and
threshold, and how much of the image those cells cover (a spec with 0 steps measures only that).
``--from-generator`` starts the refinement from the shipped generator's grid instead of zero (with 0
steps: the generator alone, on the same footing).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from medrae import kernels  # noqa: E402
from medrae.toolkit.datasets import load_split  # noqa: E402
from medrae.evaluation.evaluate import CONDITIONS  # noqa: E402
from medrae.toolkit.metrics import psnr  # noqa: E402
from medrae.toolkit.ort import session  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR, Protector, cells_touching, normalize  # noqa: E402
from medrae.toolkit.refine import Refiner, RefineSettings, upsample_cells  # noqa: E402

CLASSIFIERS = ("resnet18", "vgg16_small", "vgg16_small_cbam_pruned", "vgg16_small_advtrained")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3" / "val")
    ap.add_argument("--all", action="store_true", help="every val image, not 30 per class")
    ap.add_argument("--roi-margin", type=int, default=4)
    ap.add_argument("--roi-threshold", type=float, default=None, help="lung probability from which a pixel is ROI (default: protect's)")
    ap.add_argument("--roi-convex", action="store_true", help="each lung's convex hull")
    ap.add_argument("--from-generator", action="store_true", help="start from the generator's grid, not zero")
    args = ap.parse_args()
    split = load_split(args.data)
    pick = np.arange(len(split.labels)) if args.all else np.concatenate([np.flatnonzero(split.labels == c)[:30] for c in range(3)])
    images, labels = split.images[pick], split.labels[pick]
    generated = Protector(refine_steps=0, dilation=args.roi_margin, roi_threshold=args.roi_threshold, roi_convex=args.roi_convex).analyse(images)
    rois = generated.rois
    if split.masks is not None:
        lungs = split.masks[pick].astype(bool)
        protected = upsample_cells(cells_touching(rois, 2), 2)
        missed = (lungs & ~protected).sum(axis=(1, 2))
        print(f"ROI margin {args.roi_margin}, threshold {args.roi_threshold or 'default'}{', convex' if args.roi_convex else ''}: true-lung pixels outside the protected cells on {np.mean(missed > 0):.1%} "
              f"of images, {missed.mean():.1f} px per image on average; protected cells cover {protected.mean():.1%} of the image")
    sessions = {n: session(MODELS_DIR / f"classifier_{n}.onnx", "cpu") for n in CLASSIFIERS}
    predict = lambda n, x: sessions[n].run(None, {"image": normalize(x)})[0].argmax(1)  # noqa: E731
    right = {n: predict(n, images) == labels for n in CLASSIFIERS}
    resize = CONDITIONS["resize0.5"]
    right_resized = predict(CLASSIFIERS[0], np.stack([resize(x) for x in images])) == labels
    for spec in args.specs:
        boxes, margin, robust, fraction, factor, steps = spec.split(":")
        factor = int(factor)
        settings = RefineSettings(steps=int(steps), fraction=float(fraction), margin=float(margin), factor=factor, robust=bool(int(robust)))
        refiner = Refiner([MODELS_DIR / f"gradient_{b}.onnx" for b in boxes.split("+")], "cpu", settings)
        free = ~cells_touching(rois, factor)
        t = time.perf_counter()
        start = (lambda b: generated.grids[b : b + 16]) if args.from_generator else (lambda b: None)  # noqa: E731
        grids = np.concatenate([refiner.refine(images[b : b + 16], free[b : b + 16], 8, start(b)).grids for b in range(0, len(images), 16)])
        ms = (time.perf_counter() - t) / len(images) * 1e3
        out, bpp, kept = [], [], 0
        for x, grid, roi in zip(images, grids, rois):
            adv = np.clip(x.astype(np.int64) + upsample_cells(grid, factor), 0, 255).astype(np.uint8)
            hints = {"grid": grid, "factor": factor} if factor > 1 else {}
            try:  # as protect does by default: the payload kept out of the ROI, if it fits there
                kernels.protect_array(x, adv, None, eps=8, check=False, frozen=roi, **hints)
                kept += 1
            except kernels.CapacityError:
                pass
            try:
                marked, info = kernels.protect_array(x, adv, None, eps=8, check=False, **({"grid": grid, "factor": factor} if factor > 1 else {}))
                bpp.append(info.payload_bits / x.size)
            except kernels.CapacityError:
                marked = x  # not publishable reversibly: the original goes out
            out.append(marked)
        out = np.stack(out)
        asr = " ".join(f"{n} {np.mean(predict(n, out)[right[n]] != labels[right[n]]):.3f}" for n in CLASSIFIERS)
        resized = predict(CLASSIFIERS[0], np.stack([resize(x) for x in out]))
        print(f"{spec}: ASR {asr} | resize0.5 {np.mean(resized[right_resized] != labels[right_resized]):.3f} | "
              f"PSNR {np.mean([psnr(a, b, data_range=255) for a, b in zip(images, out) if not np.array_equal(a, b)]):.2f} "
              f"bpp {np.mean(bpp):.3f} | payload fits outside the ROI {kept / len(images):.1%} | {ms:.0f} ms/img", flush=True)


if __name__ == "__main__":
    main()
