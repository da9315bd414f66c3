"""Synthetic chest-radiograph phantoms with lung masks, for the demo and tests (no real data needed)."""
from __future__ import annotations

import numpy as np


def chest_phantom(
    seed: int = 0, shape: tuple[int, int] = (224, 224), dtype: type = np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """A frontal-chest-like image and its lung mask.

    Parameters
    ----------
    seed : int
        Seed of the random shape, rib and noise parameters.
    shape : tuple of int
        (H, W), at least 32x32.
    dtype : {np.uint8, np.uint16}
        Pixel type; uint16 uses the full 16-bit range.

    Returns
    -------
    image : np.ndarray
        2-D ``dtype`` image: bright body and mediastinum, darker lungs with ribs, dark border.
    mask : np.ndarray
        2-D bool, True inside the two lungs.
    """
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be 2-D and at least 32x32, got {shape}")
    if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise TypeError(f"dtype must be uint8 or uint16, got {np.dtype(dtype)}")
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y /= h
    x /= w
    body = ((x - 0.5) / rng.uniform(0.40, 0.46)) ** 2 + ((y - 0.55) / rng.uniform(0.48, 0.55)) ** 2 < 1
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.16, 0.2)
        cy = rng.uniform(0.45, 0.52)
        lungs |= ((x - cx) / rng.uniform(0.12, 0.15)) ** 2 + ((y - cy) / rng.uniform(0.26, 0.32)) ** 2 < 1
    img = 0.08 + 0.62 * body + 0.12 * np.exp(-(((x - 0.5) / 0.08) ** 2))  # soft tissue + mediastinum
    ribs = 0.06 * (np.sin(2 * np.pi * (y * rng.uniform(9, 12) + 0.3 * np.abs(x - 0.5))) > 0.6)
    img = np.where(lungs, 0.28 + ribs + 0.05 * y, img)
    img += 0.04 * (y - 0.5)  # exposure gradient
    kernel = np.ones(5) / 5  # mild blur, like a detector's point-spread
    img = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, img)
    img = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, img)
    img += rng.normal(0, 0.01, shape)
    top = np.iinfo(dtype).max
    return np.clip(np.round(img * top), 0, top).astype(dtype), lungs
