"""Post-processing of predicted lung masks: largest components, holes filled, each lung's convex
hull, safety dilation."""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.regionmap import dilate  # one square dilation for pixel masks and the RDH's block maps


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


def _monotone_chain(points: list) -> list:
    """Convex hull (Andrew's monotone chain) of lexicographically sorted, unique (x, y) points."""

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in points:
        while len(lower) >= 2 and turn(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(points):
        while len(upper) >= 2 and turn(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def convex_fill(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every pixel whose centre lies in the convex hull of its pixels, each pixel
    taken as the four midpoints of its edges (scikit-image's ``convex_hull_image`` convention).

    A row's two end pixels decide the hull, so only their points enter the chain; coordinates are
    doubled so that the test is exact integer arithmetic."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    left = mask[rows].argmax(axis=1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    r2, l2, e2 = 2 * rows, 2 * left, 2 * right
    xs = np.concatenate([l2 + 1, l2, l2 + 1, e2 + 1, e2 + 2, e2 + 1])
    ys = np.concatenate([r2, r2 + 1, r2 + 2, r2, r2 + 1, r2 + 2])
    hull = _monotone_chain(np.unique(np.stack([xs, ys], axis=1), axis=0).tolist())
    out = mask.copy()
    if len(hull) < 3:
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, int(left.min()), int(right.max()) + 1
    cy, cx = np.mgrid[r0:r1, c0:c1] * 2 + 1
    inside = np.ones(cy.shape, dtype=bool)
    for a, b in zip(hull, hull[1:] + hull[:1]):  # counter-clockwise: inside is left of every edge
        inside &= (b[0] - a[0]) * (cy - a[1]) - (b[1] - a[1]) * (cx - a[0]) >= 0
    out[r0:r1, c0:c1] |= inside
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
