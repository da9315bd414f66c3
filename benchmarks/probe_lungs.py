"""The lungs' promise, measured against true lung masks: how far protect changes true-lung pixels.

For each image of a split with masks (and for damaged copies of some: rotated, cropped, inverted,
lateral-looking, low-contrast; the true mask transformed alike), protect as ``medrae protect``
does in memory (the Protector, then the same fallback as the batch) and count the images where

* the **hiding** changed a true-lung pixel by more than one level (``|marked - adversarial|``),
* the **perturbation** reached a true-lung pixel (the segmenter missed lung there),
* and, of those, how many quality control flagged (``toolkit.qc``);

with the white-box ASR on the protected images (ResNet18, over images it classifies correctly),
PSNR and payload beside them. It measures the installed ``medrae``; for a "before" column, run it
in an environment where an earlier commit is installed.

    python benchmarks/probe_lungs.py ../shared/data/cxr3/test [--damaged 60] [--policy widen] [--pattern none]
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("data", type=Path)
ap.add_argument("--damaged", type=int, default=60, help="images per damage kind (0: none)")
ap.add_argument("--policy", default="widen", help="--on-uncertain-roi (this checkout only)")
ap.add_argument("--pattern", default=None, help="--pattern: none for the default before the transfer pattern (this checkout only)")
ap.add_argument("--dilation", type=int, default=None, help="ROI margin in px of the 224x224 view (default: the generator card's)")
ap.add_argument("--models", type=Path, default=None, help="models directory (default: the checkout's models/; e.g. a candidate segmenter beside the shipped rest)")
ap.add_argument("--json", type=Path, help="write per-condition figures here")
ap.add_argument("--list", action="store_true", help="name each image whose lungs changed (hiding > 1 level, or perturbed)")
args = ap.parse_args()

from medrae import kernels  # noqa: E402
from medrae.toolkit.datasets import load_split  # noqa: E402
from medrae.toolkit.imageio import Image  # noqa: E402
import medrae.toolkit.protect as protect_module  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR, Protector, normalize, protect_with_fallback  # noqa: E402


def damage(kind: str, x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A damaged copy of one 224x224 image and its true mask (geometry applied to both)."""
    from PIL import Image as PILImage

    def geo(a: np.ndarray, fn) -> np.ndarray:
        return np.asarray(fn(PILImage.fromarray(a)))

    if kind == "rotated":
        return geo(x, lambda im: im.rotate(20, PILImage.BILINEAR)), geo(m.astype(np.uint8) * 255, lambda im: im.rotate(20, PILImage.NEAREST)) > 127
    if kind == "cropped":  # the top-left 70 %, enlarged: a lung cut by the frame
        box = (0, 0, 157, 157)
        return (geo(x, lambda im: im.crop(box).resize((224, 224), PILImage.BILINEAR)),
                geo(m.astype(np.uint8) * 255, lambda im: im.crop(box).resize((224, 224), PILImage.NEAREST)) > 127)
    if kind == "inverted":
        return 255 - x, m
    if kind == "lateral":  # squeezed to 45 % of the width, centred on black: no frontal lung field
        w = 100
        xs = np.zeros_like(x)
        ms = np.zeros_like(m)
        xs[:, 62 : 62 + w] = geo(x, lambda im: im.resize((w, 224), PILImage.BILINEAR))
        ms[:, 62 : 62 + w] = geo(m.astype(np.uint8) * 255, lambda im: im.resize((w, 224), PILImage.NEAREST)) > 127
        return xs, ms
    if kind == "low-contrast":
        return np.round(80 + 0.35 * x.astype(np.float32)).astype(np.uint8), m
    raise ValueError(kind)


def run(name: str, prot: Protector, x: np.ndarray, masks: np.ndarray, labels: np.ndarray, clf, names: list[str]) -> dict:
    t = time.perf_counter()
    new = "guard" in inspect.signature(protect_with_fallback).parameters
    rows = []
    for i in range(0, len(x), 16):
        a = prot.analyse(x[i : i + 16])
        # as medrae protect fits them (re-refined without the pattern where it fits only coarser); older checkouts: one by one
        fits = protect_module.fit_analysed(prot, x[i : i + 16], a, bytes(32), check=False) if hasattr(protect_module, "fit_analysed") else None
        for k in range(len(a.rois)):
            img, m = x[i + k], masks[i + k]
            skip = bool(a.skip[k]) if new else False
            flagged = bool(a.assessments[k].uncertain) if new else False
            if skip:
                rows.append(dict(written=False, flagged=True))
                continue
            kw = {"guard": a.guards[k]} if new else {}
            if hasattr(a, "pattern"):  # the codec codes the transfer pattern by reference, as protect does
                kw["pattern"] = a.pattern(k)
            try:
                if fits is not None:
                    if isinstance(fits[k], kernels.CapacityError):
                        raise fits[k]
                    marked, info, plan, level, mode = fits[k].marked, fits[k].info, fits[k].plan, fits[k].level, fits[k].hiding
                    dropped = bool(a.pattern(k) is not None and not fits[k].pattern)
                else:
                    dropped = False
                    marked, info, plan, level, mode = protect_with_fallback(Image(img, 255, "png"), a.rois[k], a.grids[k], prot.eps, bytes(32),
                                                                            check=False, **kw)
            except kernels.CapacityError:
                rows.append(dict(written=False, flagged=flagged))
                continue
            hid = np.abs(marked.astype(int) - plan.adversarial.astype(int))[m]
            tot = np.abs(marked.astype(int) - img.astype(int))[m]
            mse = np.mean((marked.astype(float) - img) ** 2)
            rows.append(dict(written=True, flagged=flagged, hiding=int(hid.max(initial=0)), total=int(tot.max(initial=0)),
                             pixels_over_1=int((tot > 1).sum()), lung_pixels=int(m.sum()),
                             perturbed=int(((plan.adversarial != img) & m).sum()), hidden_over_1=int((hid > 1).sum()), coarsened=int(level), dropped=dropped, mode=str(mode) + ("+band" if getattr(plan, "band", 0) else ""),
                             psnr=10 * np.log10(255**2 / mse) if mse else 99.0, bits=info.payload_bits, marked=marked))
    written = [r for r in rows if r["written"]]
    if args.list:
        for j, r in enumerate(rows):
            if r["written"] and (r["hiding"] > 1 or r["perturbed"]):
                print(f"  {name}: {names[j]}: hiding > 1 level on {r['hidden_over_1']} true-lung px (max {r['hiding']}), "
                      f"perturbation on {r['perturbed']} true-lung px, QC {'flagged' if r['flagged'] else 'not flagged'}, mode {r['mode']}")
    out = np.stack([r["marked"] if r["written"] else x[j] for j, r in enumerate(rows)])
    logits = np.concatenate([clf.run(None, {"image": normalize(out[j : j + 32])})[0] for j in range(0, len(out), 32)])
    clean = np.concatenate([clf.run(None, {"image": normalize(x[j : j + 32])})[0] for j in range(0, len(x), 32)]).argmax(1)
    ok = (clean == labels) & np.array([r["written"] for r in rows])
    res = {
        "condition": name, "images": len(rows), "written": len(written),
        "hiding_over_1": sum(r["hiding"] > 1 for r in written),
        "lungs_over_1": sum(r["total"] > 1 for r in written),
        "lung_pixels_over_1": sum(r["pixels_over_1"] for r in written),
        "lung_pixels": sum(r["lung_pixels"] for r in written),
        "perturbed_lung": sum(r["perturbed"] > 0 for r in written),
        "perturbed_lung_flagged": sum(r["perturbed"] > 0 and r["flagged"] for r in written),
        "flagged": sum(r["flagged"] for r in rows),
        "coarsened": sum(r["coarsened"] > 0 for r in written),
        "no_band": sum(r["mode"] in ("frozen", "open1") for r in written),
        "without_pattern": sum(r["dropped"] for r in written),
        "lungs_bit_exact": sum(r["total"] == 0 for r in written),
        "white_box_asr": float(100 * ((logits.argmax(1) != labels) & ok).sum() / max(1, ok.sum())),
        "psnr": float(np.mean([r["psnr"] for r in written])) if written else None,
        "payload_bits": float(np.mean([r["bits"] for r in written])) if written else None,
        "seconds_per_image": (time.perf_counter() - t) / len(rows),
    }
    print(f"{name:14s} {res['images']:4d} img  written {res['written']:4d}  hiding>1 in lungs {res['hiding_over_1']:3d}  any>1 {res['lungs_over_1']:3d} "
          f"({res['lung_pixels_over_1']} px of {res['lung_pixels']})  "
          f"perturbation in lungs {res['perturbed_lung']:3d} (flagged {res['perturbed_lung_flagged']})  flagged {res['flagged']:3d}  "
          f"coarsened {res['coarsened']:3d}  without pattern {res['without_pattern']:3d}  no band {res['no_band']:3d}  lungs bit-exact {res['lungs_bit_exact']:4d}  white-box ASR {res['white_box_asr']:.2f} %  "
          f"PSNR {res['psnr'] or 0:.2f}  payload {res['payload_bits'] or 0:.0f}", flush=True)
    return res


def main() -> None:
    from medrae.toolkit.ort import session

    split = load_split(args.data)
    if split.masks is None:
        sys.exit(f"{args.data}: needs true lung masks (<class>/masks)")
    new = "on_uncertain_roi" in inspect.signature(Protector).parameters
    kw = {"pattern": 0 if args.pattern == "none" else args.pattern} if args.pattern else {}
    if args.dilation is not None:
        kw["dilation"] = args.dilation
    if args.models is not None:
        kw["models_dir"] = args.models
    prot = Protector(on_uncertain_roi=args.policy, **kw) if new else Protector(**kw)
    clf = session(Path(MODELS_DIR) / "classifier_resnet18.onnx")
    results = [run("as is", prot, split.images, split.masks, split.labels, clf, split.names)]
    if args.damaged:
        pick = np.random.default_rng(0).permutation(len(split.images))[: args.damaged]
        for kind in ("rotated", "cropped", "inverted", "lateral", "low-contrast"):
            pairs = [damage(kind, split.images[i], split.masks[i]) for i in pick]
            results.append(run(kind, prot, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), split.labels[pick], clf,
                               [split.names[i] for i in pick]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
