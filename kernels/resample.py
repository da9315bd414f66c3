"""Integer-exact resampling of perturbation grids.

A generator may emit its perturbation on a coarse grid; restore must rebuild the same
full-resolution perturbation with no float and no network. These functions use integer
arithmetic only, so encoder and decoder agree on every platform.
"""
from __future__ import annotations

import numpy as np

MODES = ("nearest", "linear")
MAX_FACTOR = 64  # the largest cell side the grid and pattern codecs accept (docs/FORMAT.md)


def _check_grid(grid: np.ndarray, factor: int) -> np.ndarray:
    if not isinstance(grid, np.ndarray) or grid.ndim != 2 or not np.issubdtype(grid.dtype, np.integer):
        raise TypeError(f"grid must be a 2-D integer array, got {getattr(grid, 'dtype', type(grid))} {getattr(grid, 'shape', '')}")
    if not isinstance(factor, (int, np.integer)) or not 1 <= factor <= MAX_FACTOR:
        raise ValueError(f"factor must be an integer in 1..{MAX_FACTOR}, got {factor!r}")
    return grid.astype(np.int64)


def grid_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """Coarse grid shape covering ``shape``: ``ceil(H / factor), ceil(W / factor)``."""
    return -(-shape[0] // factor), -(-shape[1] // factor)


def _linear_weights(n_coarse: int, factor: int, n_fine: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fine index: left coarse index, right coarse index, right weight out of 2*factor.

    Half-pixel centres (like ``align_corners=False``): fine x sits at coarse (2x + 1 - f) / 2f,
    clamped at the edges.
    """
    num = 2 * np.arange(n_fine, dtype=np.int64) + 1 - factor
    i0 = np.floor_divide(num, 2 * factor)
    frac = num - i0 * 2 * factor
    i1 = np.clip(i0 + 1, 0, n_coarse - 1)
    i0c = np.clip(i0, 0, n_coarse - 1)
    return i0c, i1, frac


def upsample(grid: np.ndarray, factor: int, shape: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """Coarse integer grid → full-resolution int64 plane of ``shape``.

    Parameters
    ----------
    grid : np.ndarray
        2-D integer array of shape at least ``grid_shape(shape, factor)``.
    factor : int
        Upsampling factor (1..64).
    shape : tuple of int
        Output (H, W).
    mode : {"nearest", "linear"}
        ``nearest`` repeats each cell; ``linear`` interpolates bilinearly with half-pixel centres
        and rounds half up, all in integers (weights sum to ``(2 factor)**2``).
    """
    g = _check_grid(grid, factor)
    h, w = shape
    gh, gw = grid_shape(shape, factor)
    if g.shape[0] < gh or g.shape[1] < gw:
        raise ValueError(f"grid of shape {g.shape} does not cover {shape} at factor {factor}")
    if mode == "nearest":
        return np.repeat(np.repeat(g, factor, axis=0), factor, axis=1)[:h, :w]
    if mode != "linear":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    g = g[:gh, :gw]
    d = 2 * factor
    r0, r1, fy = _linear_weights(gh, factor, h)
    c0, c1, fx = _linear_weights(gw, factor, w)
    rows = g[r0, :] * (d - fy)[:, None] + g[r1, :] * fy[:, None]  # (h, gw), scaled by d
    acc = rows[:, c0] * (d - fx)[None, :] + rows[:, c1] * fx[None, :]  # scaled by d*d
    return np.floor_divide(acc + (d * d) // 2, d * d)


def downsample(plane: np.ndarray, factor: int) -> np.ndarray:
    """Block means (rounded half up) of an integer plane; partial edge blocks use their own size."""
    p = _check_grid(plane, factor)
    h, w = p.shape
    gh, gw = grid_shape((h, w), factor)
    pad = np.zeros((gh * factor, gw * factor), dtype=np.int64)
    pad[:h, :w] = p
    sums = pad.reshape(gh, factor, gw, factor).sum(axis=(1, 3))
    ones = np.zeros_like(pad)
    ones[:h, :w] = 1
    counts = ones.reshape(gh, factor, gw, factor).sum(axis=(1, 3))
    return np.floor_divide(2 * sums + counts, 2 * counts)
