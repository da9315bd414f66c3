"""Adaptive attacks: what a party with medrae installed but without the key can do to a protected
file before its own model reads it (``medrae evaluate --frontier``, docs/STRENGTH.md).

Each attack takes the saved (N, 224, 224) uint8 files and the attacker's own lung mask (the
shipped segmenter on the protected file: medrae is public) and returns the files as the attacker
passes them on. Only pixels outside the mask, widened by :data:`KEEP_OUT` px, are touched: the
lungs are what the attacker wants to read, and the protection never moves them.

* ``public``: subtract the shipped pattern of every class where it was trained (the public
  placement), keeping the class that leaves the least total variation outside the lungs.
* ``matched``: estimate the placement too: the file's cell means, high-passed, correlated with
  every class's pattern at every mirror and cyclic shift (a matched filter, one FFT per class and
  mirror), for the whole pattern or, where protect keys each square of cells apart, per square of
  the same size (the attacker knows the block size: it is public); subtract the best match.
* ``median5`` / ``gauss2``: denoise outside the lungs (a 5x5 median; a Gaussian of sigma 2 px).
* ``replay``: where protect runs the transfer stage (public models, no key), run it again on the
  file for every class it could have pushed away from and subtract it, keeping the class that
  leaves the least total variation: an estimate of the stage's output from the file instead of the
  original the attacker lacks. Not applicable (None) where protect has no transfer stage.

Every attack takes ``protector`` (the :class:`~medrae.toolkit.protect.Protector` that made the
files: its public parts only, never the key).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from medrae.kernels import patterns
from medrae.toolkit.datasets import CLASSES
from medrae.toolkit.masks import dilate

KEEP_OUT = 6  # px (224x224 view) around the attacker's lung mask left as they are
CELL = 4  # px per pattern cell on the 224x224 view (the shipped patterns: 56 x 56 cells)


def _free_cells(masks: np.ndarray, g: int) -> np.ndarray:
    """(N, g, g) bool: pattern cells with no pixel in the widened masks."""
    n, f = len(masks), masks.shape[-1] // g
    wide = np.stack([dilate(m, KEEP_OUT) for m in masks])
    return ~wide.reshape(n, g, f, g, f).any(axis=(2, 4))


def _tv(x: np.ndarray, region: np.ndarray) -> float:
    x = x.astype(np.float64)
    dy = np.abs(np.diff(x, axis=0))[region[1:] & region[:-1]]
    dx = np.abs(np.diff(x, axis=1))[region[:, 1:] & region[:, :-1]]
    return float(dy.sum() + dx.sum())


def _subtract(x: np.ndarray, cells: np.ndarray, free: np.ndarray) -> np.ndarray:
    f = x.shape[-1] // cells.shape[-1]
    d = np.repeat(np.repeat(cells * free, f, 0), f, 1)
    return np.clip(x.astype(np.int64) - d, 0, 255).astype(np.uint8)


def _least_tv(x: np.ndarray, candidates: list[np.ndarray], free: np.ndarray, region: np.ndarray) -> np.ndarray:
    outs = [_subtract(x, c, free) for c in candidates]
    return outs[int(np.argmin([_tv(o, region) for o in outs]))]


def subtract_public(files: np.ndarray, masks: np.ndarray, amplitude: int, pattern_id: int = patterns.DEFAULT_PATTERN, block: int = 0,
                    protector=None) -> np.ndarray:
    """Every class's pattern at its public placement, clipped to ``amplitude``; least TV wins."""
    p = patterns.load(pattern_id)
    free = _free_cells(masks, p.shape[-1])
    out = files.copy()
    for k, x in enumerate(files):
        region = np.repeat(np.repeat(free[k], CELL, 0), CELL, 1)
        cands = [patterns.placed(pattern_id, c, clip=amplitude) for c in range(p.shape[0])]
        out[k] = _least_tv(x, cands, free[k], region)
    return out


def _cell_means(x: np.ndarray, g: int) -> np.ndarray:
    f = x.shape[-1] // g
    return x.astype(np.float64).reshape(g, f, g, f).mean(axis=(1, 3))


def _highpass(m: np.ndarray) -> np.ndarray:
    """Cell means minus their 3x3 neighbourhood mean (the anatomy is smooth at this scale, the pattern is not)."""
    pad = np.pad(m, 1, mode="edge")
    box = sum(pad[i : i + m.shape[0], j : j + m.shape[1]] for i in range(3) for j in range(3)) / 9.0
    return m - box


def _match(r: np.ndarray, templates: list[tuple[int, bool, np.ndarray]]) -> tuple[float, int, bool, int, int]:
    """The best (score, class, mirror, shift_y, shift_x) of ``templates`` rolled over ``r``
    (circular cross-correlation by FFT: ``corr[s] = sum_u r[u] q[u - s]``)."""
    fr = np.fft.fft2(r)
    best = (-np.inf, 0, False, 0, 0)
    for c, mirror, fq in templates:
        corr = np.real(np.fft.ifft2(fr * np.conj(fq)))
        s = np.unravel_index(int(np.argmax(corr)), corr.shape)
        if corr[s] > best[0]:
            best = (float(corr[s]), c, mirror, int(s[0]), int(s[1]))
    return best


def matched_estimate(x: np.ndarray, free: np.ndarray, pattern_id: int, amplitude: int, block: int = 0) -> np.ndarray:
    """The attacker's estimate of the pattern in ``x`` (on its ``G x G`` cells): for the whole
    pattern (``block`` 0) or each ``block x block`` square of cells, the class, mirror and cyclic
    shift whose pattern correlates best with the file's high-passed cell means outside the lungs."""
    p = patterns.load(pattern_id)
    g = p.shape[-1]
    r = _highpass(_cell_means(x, g)) * free
    templates = [(c, m, np.fft.fft2(_highpass(patterns.moved(np.clip(p[c], -amplitude, amplitude), 0, 0, m).astype(np.float64))))
                 for c in range(p.shape[0]) for m in (False, True)]
    b = block or g
    est = np.zeros((g, g), np.int64)
    for y0 in range(0, g, b):
        for x0 in range(0, g, b):
            window = np.zeros((g, g))
            window[y0 : y0 + b, x0 : x0 + b] = 1
            if not (free * window).any():
                continue
            _, c, m, sy, sx = _match(r * window, templates)
            est[y0 : y0 + b, x0 : x0 + b] = patterns.moved(np.clip(p[c], -amplitude, amplitude), sy, sx, m)[y0 : y0 + b, x0 : x0 + b]
    return est


def subtract_matched(files: np.ndarray, masks: np.ndarray, amplitude: int, pattern_id: int = patterns.DEFAULT_PATTERN,
                     block: int = 0, protector=None) -> np.ndarray:
    """The best-matching pattern (:func:`matched_estimate`) subtracted outside the lungs."""
    g = patterns.load(pattern_id).shape[-1]
    free = _free_cells(masks, g)
    return np.stack([_subtract(x, matched_estimate(x, free[k], pattern_id, amplitude, block), free[k]) for k, x in enumerate(files)])


def _outside(files: np.ndarray, masks: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = files.copy()
    for k, x in enumerate(files):
        keep = dilate(masks[k], KEEP_OUT)
        y = f(x)
        out[k] = np.where(keep, x, y)
    return out


def median5(files: np.ndarray, masks: np.ndarray, amplitude: int = 0, pattern_id: int = 0, block: int = 0, protector=None) -> np.ndarray:
    """A 5x5 median filter outside the lungs."""
    from PIL import Image, ImageFilter

    return _outside(files, masks, lambda x: np.asarray(Image.fromarray(x).filter(ImageFilter.MedianFilter(5))))


def gauss2(files: np.ndarray, masks: np.ndarray, amplitude: int = 0, pattern_id: int = 0, block: int = 0, protector=None) -> np.ndarray:
    """A Gaussian blur of sigma 2 px outside the lungs."""
    from PIL import Image, ImageFilter

    return _outside(files, masks, lambda x: np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(2))))


def replay(files: np.ndarray, masks: np.ndarray, amplitude: int = 0, pattern_id: int = 0, block: int = 0,
           protector=None) -> Optional[np.ndarray]:
    """Protect's transfer stage run again on the files, once per class, subtracted outside the
    lungs; the class leaving the least total variation wins. None without a transfer stage."""
    stage = getattr(protector, "transfer", None)
    if stage is None:
        return None
    g = files.shape[-1] // stage.settings.factor
    free = _free_cells(masks, g)
    cands = [stage.run(files, free, protector.eps, labels=np.full(len(files), c)) for c in range(len(CLASSES))]
    out = files.copy()
    for k, x in enumerate(files):
        region = np.repeat(np.repeat(free[k], stage.settings.factor, 0), stage.settings.factor, 1)
        out[k] = _least_tv(x, [c[k] for c in cands], free[k], region)
    return out


ATTACKS: dict[str, Callable[..., Optional[np.ndarray]]] = {
    "public": subtract_public, "matched": subtract_matched, "median5": median5, "gauss2": gauss2, "replay": replay}
