"""Protect → restore → verify on generated chest phantoms (no real data, no trained model).

    python -m toolkit.demo [OUTDIR]

Until the trained generator ships, the adversarial perturbation is a synthetic coarse-grid ±eps
pattern outside the lungs: the kind of perturbation the generator is trained to emit.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

import kernels
from kernels.resample import downsample, grid_shape, upsample
from toolkit.phantoms import chest_phantom


def synthetic_adversarial(image: np.ndarray, lungs: np.ndarray, eps: int, seed: int, factor: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.integers(-eps, eps + 1, grid_shape(image.shape, factor))
    g[downsample(lungs.astype(np.int64), factor) > 0] = 0  # no change on cells touching the lungs
    delta = np.where(lungs, 0, upsample(g, factor, image.shape))
    return np.clip(image.astype(np.int64) + delta, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else None
    key = os.urandom(32)
    eps = 8
    print(f"{'image':<10} {'PSNR(prot)':>10} {'payload':>9} {'codec':>10} {'passes':>6} {'restored':>9} {'ms':>6}")
    ok = True
    for seed in range(6):
        image, lungs = chest_phantom(seed)
        adv = synthetic_adversarial(image, lungs, eps, seed)
        t = time.perf_counter()
        protected, info = kernels.protect_array(image, adv, key, eps=eps)
        restored = kernels.restore_array(protected, key)
        ms = (time.perf_counter() - t) * 1e3
        exact = np.array_equal(restored, image)
        ok &= exact and not np.any(protected[lungs].astype(int) - image[lungs] > 2)
        print(f"phantom{seed:<3} {psnr(protected, image):>9.2f}  {info.payload_bits:>8}b {info.codec:>10} {info.passes:>6} {str(exact):>9} {ms:>6.1f}")
        if outdir is not None:
            from PIL import Image

            outdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(outdir / f"phantom{seed}_original.png")
            Image.fromarray(protected).save(outdir / f"phantom{seed}_protected.png")
    try:
        kernels.restore_array(protected, os.urandom(32))
        ok = False
    except kernels.KeyMismatchError as exc:
        print(f"wrong key → {type(exc).__name__}: {exc}")
    print("verify:", "all round trips bit-exact" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
