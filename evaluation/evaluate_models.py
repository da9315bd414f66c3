"""Measure the shipped ONNX models on a dataset directory (ONNX Runtime only, no PyTorch).

    python -m medrae.evaluation.evaluate_models --data ../shared/data/cxr3/test [--models models] [--out r.json]

Reports segmenter DSC / pixel accuracy against the ground-truth masks, every classifier's accuracy,
and for the generator, on the final 8-bit RAE (after reversible embedding, as saved): white-box and
transfer ASR over the images each classifier gets right, PSNR and SSIM against the original, the
largest change inside the true lung mask, payload and coded bits per image pixel, exact restore.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from medrae import kernels

from medrae.toolkit.datasets import load_split
from medrae.toolkit.metrics import psnr, ssim
from medrae.toolkit.ort import session
from medrae.toolkit.protect import MODELS_DIR, Protector, normalize


def classifiers(models: Path) -> dict[str, object]:
    return {p.stem: session(p) for p in sorted(models.glob("classifier_*.onnx"))}


def predict(sess, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([sess.run(None, {"image": normalize(images[i : i + batch])})[0].argmax(1) for i in range(0, len(images), batch)])


def evaluate(data: Path, models: Path, limit: int = 0, key: bytes | None = None) -> dict:
    split = load_split(data)
    images, masks, labels, classes = split.images, split.masks, split.labels, split.classes
    if limit:
        pick = np.concatenate([np.flatnonzero(labels == c)[: limit // len(classes)] for c in range(len(classes))])
        images, labels = images[pick], labels[pick]
        masks = masks[pick] if masks is not None else None
    out: dict = {"data": str(data), "images": int(len(images))}
    clfs = classifiers(models)
    clean = {name: predict(s, images) for name, s in clfs.items()}
    out["classifiers"] = {name: {"accuracy": float((p == labels).mean())} for name, p in clean.items()}
    if (models / "segmenter.onnx").exists() and masks is not None:
        seg = session(models / "segmenter.onnx")
        pred = np.concatenate([seg.run(None, {"image": normalize(images[i : i + 32])})[0][:, 0] > 0 for i in range(0, len(images), 32)])
        inter = (pred & masks).sum(axis=(1, 2))
        dsc = 2 * inter / np.maximum(pred.sum(axis=(1, 2)) + masks.sum(axis=(1, 2)), 1)
        out["segmenter"] = {"dsc": float(dsc.mean()), "pa": float((pred == masks).mean())}
    if not (models / "generator.onnx").exists():
        return out
    prot = Protector(models)
    key = key or os.urandom(32)
    rae, kept, refused = [], [], 0
    stats = {"psnr": [], "ssim": [], "payload_bpp": [], "coded_bpp": [], "roi_max_change": [], "restored": [], "seconds": [],
                      "used_roi_max_change": [], "lung_changed_gt1": []}
    for i in range(0, len(images), 16):
        t = time.perf_counter()
        results = prot.protect(images[i : i + 16], key)
        stats["seconds"].append((time.perf_counter() - t) / len(results))
        for k, r in enumerate(results):
            x = images[i + k]
            if r.marked is None:
                refused += 1
                continue
            kept.append(i + k)
            rae.append(r.marked)
            stats["psnr"].append(psnr(x, r.marked, data_range=255))
            stats["ssim"].append(ssim(x, r.marked, data_range=255))
            stats["payload_bpp"].append(r.info.payload_bits / x.size)
            stats["coded_bpp"].append(r.info.coded_bits / x.size)
            stats["restored"].append(bool(np.array_equal(kernels.restore_array(r.marked, key), x)))
            change = np.abs(r.marked.astype(int) - x)
            stats["used_roi_max_change"].append(int(change[r.roi].max(initial=0)))
            if masks is not None:
                stats["roi_max_change"].append(int(change[masks[i + k]].max(initial=0)))
                stats["lung_changed_gt1"].append(float((change[masks[i + k]] > 1).mean()))
    rae = np.stack(rae)
    skip = ("roi_max_change", "restored", "used_roi_max_change", "lung_changed_gt1")
    gen = {k: float(np.mean(v)) for k, v in stats.items() if k not in skip}
    gen["psnr_min"] = float(np.min(stats["psnr"]))
    gen["restored_fraction"] = float(np.mean(stats["restored"]))
    gen["used_roi_max_change"] = int(np.max(stats["used_roi_max_change"]))  # RDH only: <= 2 by design
    if stats["roi_max_change"]:
        gen["true_lung_max_change"] = int(np.max(stats["roi_max_change"]))
        gen["true_lung_fraction_changed_gt1"] = float(np.mean(stats["lung_changed_gt1"]))
    gen["protected"] = len(kept)
    gen["refused_capacity"] = refused
    gen["asr"] = {}
    kept = np.array(kept)
    for name, s in clfs.items():  # over the protected images this classifier gets right
        ok = clean[name][kept] == labels[kept]
        gen["asr"][name] = float((predict(s, rae)[ok] != labels[kept][ok]).mean()) if ok.any() else float("nan")
    out["generator"] = gen
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="dataset directory (<class>/images, <class>/masks)")
    p.add_argument("--models", type=Path, default=MODELS_DIR)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = evaluate(args.data, args.models, args.limit)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
