"""Post-processing of predicted lung masks: largest components, holes filled, each lung's convex
hull, safety dilation."""
from __future__ import annotations

import numpy as np
from numba import njit

from medrae.kernels.regionmap import dilate  # one square dilation for pixel masks and the RDH's block maps


@njit(cache=True, nogil=True)
def _label(mask):
    """4-connected component labels (1..n) and their sizes, by an explicit-stack flood fill."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    sizes = [0]
    stack = np.empty(h * w, dtype=np.int64)
    n = 0
    for i0 in range(h):
        for j0 in range(w):
            if not mask[i0, j0] or labels[i0, j0]:
                continue
            n += 1
            size = 0
            top = 0
            stack[top] = i0 * w + j0
            top += 1
            labels[i0, j0] = n
            while top:
                top -= 1
                k = stack[top]
                i, j = k // w, k % w
                size += 1
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and mask[a, b] and not labels[a, b]:
                        labels[a, b] = n
                        stack[top] = a * w + b
                        top += 1
            sizes.append(size)
    return labels, np.array(sizes)


def largest_components(mask: np.ndarray, keep: int = 2, min_fraction: float = 0.1) -> np.ndarray:
    """Keep the ``keep`` largest 4-connected components, dropping any below ``min_fraction`` of the largest."""
    labels, sizes = _label(np.ascontiguousarray(mask, dtype=np.bool_))
    if len(sizes) <= 1:
        return np.zeros(mask.shape, bool)
    order = np.argsort(sizes[1:])[::-1][:keep] + 1
    order = [c for c in order if sizes[c] >= min_fraction * sizes[order[0]]]
    return np.isin(labels, order)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not connected to the image border becomes foreground."""
    bg_labels, _ = _label(np.ascontiguousarray(~mask))
    border = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    return mask | ~np.isin(bg_labels, border[border > 0])


@njit(cache=True, nogil=True)
def _monotone_chain(points):
    """Convex hull (Andrew's monotone chain), counter-clockwise, of lexicographically sorted, unique
    (x, y) integer points (N, 2); collinear points are dropped."""
    n = points.shape[0]
    hull = np.empty((2 * n + 1, 2), np.int64)
    k = 0
    for half in range(2):  # the lower chain left to right, then the upper one back
        floor = 2 if half == 0 else k + 1
        for i in range(n) if half == 0 else range(n - 2, -1, -1):
            x, y = points[i, 0], points[i, 1]
            while k >= floor and ((hull[k - 1, 0] - hull[k - 2, 0]) * (y - hull[k - 2, 1])
                                  - (hull[k - 1, 1] - hull[k - 2, 1]) * (x - hull[k - 2, 0])) <= 0:
                k -= 1
            hull[k, 0], hull[k, 1] = x, y
            k += 1
    return hull[: max(k - 1, 0)]


@njit(cache=True, nogil=True)
def _fill_hull(out, hull, r0, r1, c0, c1):
    """Set each pixel of ``out[r0:r1, c0:c1]`` whose centre (doubled coordinates) is left of every
    edge of the counter-clockwise ``hull``."""
    m = hull.shape[0]
    for r in range(r0, r1):
        cy = 2 * r + 1
        for c in range(c0, c1):
            if out[r, c]:
                continue
            cx = 2 * c + 1
            inside = True
            for e in range(m):
                ax, ay = hull[e, 0], hull[e, 1]
                bx, by = hull[(e + 1) % m, 0], hull[(e + 1) % m, 1]
                if (bx - ax) * (cy - ay) - (by - ay) * (cx - ax) < 0:
                    inside = False
                    break
            if inside:
                out[r, c] = True


def convex_fill(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every pixel whose centre lies in the convex hull of its pixels, each pixel
    taken as the four midpoints of its edges (scikit-image's ``convex_hull_image`` convention).

    A row's two end pixels decide the hull, so only their points enter the chain; coordinates are
    doubled so that the test is exact integer arithmetic (both loops JIT-compiled: in Python they
    were a third of quality control's time)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    r2, l2, e2 = 2 * rows, 2 * left, 2 * right
    xs = np.concatenate([l2 + 1, l2, l2 + 1, e2 + 1, e2 + 2, e2 + 1])
    ys = np.concatenate([r2, r2 + 1, r2 + 2, r2, r2 + 1, r2 + 2])
    hull = _monotone_chain(np.ascontiguousarray(np.unique(np.stack([xs, ys], axis=1).astype(np.int64), axis=0)))
    out = np.array(mask, dtype=np.bool_, copy=True)
    if len(hull) < 3:
        return out
    _fill_hull(out, hull, int(rows[0]), int(rows[-1]) + 1, int(left.min()), int(right.max()) + 1)
    return out


def convex_components(mask: np.ndarray) -> np.ndarray:
    """Each 4-connected component replaced by its :func:`convex_fill` (one hull per lung)."""
    labels, sizes = _label(np.ascontiguousarray(mask, dtype=np.bool_))
    out = mask.copy()
    for c in range(1, len(sizes)):
        out |= convex_fill(labels == c)
    return out


def postprocess(logits_or_mask: np.ndarray, dilation: int = 4, keep: int = 2, threshold: float = 0.5,
                convex: bool = False) -> np.ndarray:
    """Predicted lung mask → ROI: pixels of lung probability above ``threshold`` (float input:
    logits; other dtypes: a 0/1 mask), largest ``keep`` components, holes filled, each replaced
    by its convex hull if ``convex`` (a lung the segmenter only partly found, e.g. around an
    opacity, usually leaves a concave bite), dilated by ``dilation`` pixels (a safety margin: the
    ROI is never touched)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"ROI threshold must be a probability in (0, 1), got {threshold}")
    if logits_or_mask.dtype.kind == "f":
        m = logits_or_mask > np.log(threshold / (1.0 - threshold))
    else:
        m = logits_or_mask > 0.5
    m = fill_holes(largest_components(m, keep))
    return dilate(convex_components(m) if convex else m, dilation)
