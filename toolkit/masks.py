"""Post-processing of predicted lung masks: largest components, holes filled, safety dilation."""
from __future__ import annotations

import numpy as np
from numba import njit


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


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a (2r+1)-square, as r rounds of a 3x3 max (exact and cheap for small r)."""
    if radius < 0:
        raise ValueError(f"dilation radius must be >= 0, got {radius}")
    out = mask.copy()
    for _ in range(radius):  # a 3x3 max is separable: along rows, then along columns
        p = np.pad(out, ((0, 0), (1, 1)))
        out = p[:, :-2] | p[:, 1:-1] | p[:, 2:]
        p = np.pad(out, ((1, 1), (0, 0)))
        out = p[:-2] | p[1:-1] | p[2:]
    return out


def postprocess(logits_or_mask: np.ndarray, dilation: int = 4, keep: int = 2, threshold: float = 0.5) -> np.ndarray:
    """Predicted lung mask → ROI: pixels of lung probability above ``threshold`` (float input:
    logits; other dtypes: a 0/1 mask), largest ``keep`` components, holes filled, dilated by
    ``dilation`` pixels (a safety margin: the ROI is never touched)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"ROI threshold must be a probability in (0, 1), got {threshold}")
    if logits_or_mask.dtype.kind == "f":
        m = logits_or_mask > np.log(threshold / (1.0 - threshold))
    else:
        m = logits_or_mask > 0.5
    return dilate(fill_holes(largest_components(m, keep)), dilation)
