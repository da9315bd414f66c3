"""Segmentation quality control: is this lung mask one to trust with the promise that the lungs
stay untouched?

A mean Dice hides the rare image where the segmenter fails, and that is the image where the
perturbation goes into a lung. :func:`assess` looks at one image's lung probabilities (and those
of its test-time views) and names what is implausible or uncertain:

* ``area``: lung area outside the range seen on the training X-rays;
* ``lungs``: not two lungs (one missing, or fragments), or one far smaller than the other;
* ``hesitant``: a wide band of hesitant probabilities around the mask;
* ``concave``: a lung far from its convex hull (a bite, where the segmenter missed an opacity), or
  the ROI itself (the union of the views' masks that protect keeps) far from its lungs' hulls: a
  view that found a blob the others did not, beside a lung edge the segmenter missed;
* ``views``: the masks of the test-time views (mirrored, gamma 0.6 and 1.6: ``VIEWS``) disagree with it;
* ``place``: the lungs are not where frontal chest X-rays have them (off centre, one above the other).

The limits (``LIMITS``) are the 1st/99th percentiles of each measure on the shipped segmenter's
masks of cxr3/train (the lungs' place: 0.5th/99.5th, widened), ``python benchmarks/probe_qc.py
--calibrate`` prints them; chosen on cxr3/val, where the 0.5/99.5 limits flagged none of the
images whose true lungs the ROI missed and these flag the worst (5492 -> 1485 missed pixels after
``widen``). :func:`widen` makes the conservative ROI the ``widen`` policy protects instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .masks import _label, convex_components, dilate, fill_holes, largest_components

POLICIES = ("widen", "skip", "proceed")
# test-time views the segmenter also sees (name, forward on a uint8 (N, H, W) batch, inverse on
# its probability maps): a lung it misses in one view (an opacity, a dense or a faint region) it
# often finds in another
def _gamma(g: float):
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    return lambda v: lut[v]


VIEWS = (
    ("mirror", lambda v: v[..., ::-1], lambda p: p[..., ::-1]),
    ("gamma 0.6", _gamma(0.6), lambda p: p),
    ("gamma 1.6", _gamma(1.6), lambda p: p),
)
DEFAULT_POLICY = "widen"

# cxr3/train, 1260 images, shipped segmenter (benchmarks/probe_qc.py --calibrate): percentiles
# 0.5 / 99.5 of each measure, then widened (see the module docstring); a measure outside flags the image.
LIMITS = {
    "area": (0.12, 0.415),  # lung fraction of the image at p >= 0.5 (train p1 / p99: 0.122 / 0.417)
    "balance": 0.47,  # smaller lung / larger lung, at least (0.470)
    "hesitant": 0.55,  # pixels at 0.05 < p < 0.95, per lung pixel, at most (0.547)
    "solidity": 0.68,  # each lung's area / its convex hull's, at least (0.683)
    # the ROI's area / its components' hulls', at least (train p1 0.793). On cxr3 every ROI below it
    # is one whose two lungs joined into one region across the mediastinum (train 12 of 1260, val 0,
    # test 4: among them covid_00421, whose missed lung base the perturbation reached before). Kept
    # when the ROI threshold went to 1 %, where train's p1 is 0.72 (0.79 flags 9.4 % of train
    # instead of 6.4 %): at 0.72 covid_00421's base (271 px) is outside the widened ROI again
    "roi_solidity": 0.79,
    "views": 0.95,  # Dice of the mask and each test-time view's mask (mapped back), at least (0.954)
    # where the lungs are: p0.5 / p99.5, widened (p1 / p99 flagged 3.5 % of train for no leak)
    "centre_x": (0.36, 0.62),  # the lungs' centroid, as a fraction of the width (0.375 / 0.597)
    "centre_y": (0.24, 0.63),  # ... and of the height (0.260 / 0.605)
    "side": 0.05,  # each lung's centroid at least this far (fraction of the width) from the midline (0.061)
}
# the hiding's guard: lung probability from which, and distance (px of the 224x224 view) up to which
GUARD_PROBABILITY, GUARD_REACH = 0.005, 24
# the conservative ROI's extra margin (224x224 view), and the lung field an implausible mask widens to
# (fractions of the height and width): a chosen box, not a measured one. cxr3/train's true masks lie
# wholly inside it on 64 % of the images; their 5th / 95th percentile extents are top 0.004, bottom
# 0.991, left 0.031, right 0.969 (lungs that leave the box reach the frame)
WIDEN_MARGIN = 8
LUNG_FIELD = (0.04, 0.96, 0.06, 0.94)  # top, bottom, left, right


@dataclass
class Assessment:
    """What :func:`assess` found: the measures, and the names of those outside ``LIMITS``."""

    measures: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    @property
    def uncertain(self) -> bool:
        return bool(self.flags)

    @property
    def implausible(self) -> bool:
        """The mask itself cannot be trusted (no lungs, one lung, a wrong size): widen to the whole
        lung field, not only around the mask."""
        return any(f in ("area", "lungs") for f in self.flags)

    def reason(self) -> str:
        return ", ".join(self.flags)


def probability(logits: np.ndarray) -> np.ndarray:
    """Lung probability of segmenter logits (clipped, so no overflow warning)."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def assess(logits: np.ndarray, view_probs: Optional[list[np.ndarray]] = None, roi: Optional[np.ndarray] = None) -> Assessment:
    """Measures of one (H, W) map of lung logits and the flags they raise.

    Parameters
    ----------
    logits : np.ndarray
        Float (H, W) segmenter logits for the image.
    view_probs : list of np.ndarray, optional
        The segmenter's lung probabilities for each test-time view, mapped back onto the image
        (``VIEWS``); without them the ``views`` measure is skipped.
    roi : np.ndarray, optional
        Bool (H, W): the ROI protect derived from these logits (and its views); without it the
        ``roi_solidity`` measure is skipped.
    """
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise ValueError(f"expected a float (H, W) logit map, got {logits.shape} {logits.dtype}")
    if roi is not None and (roi.shape != logits.shape or roi.dtype != bool):
        raise ValueError(f"roi: expected a bool {logits.shape} mask, got {roi.shape} {roi.dtype}")
    h, w = logits.shape
    p = probability(logits.astype(np.float64))
    raw = p >= 0.5
    labels, sizes = _label(np.ascontiguousarray(fill_holes(raw)))
    comps = sorted(range(1, len(sizes)), key=lambda c: -sizes[c])
    lungs = [labels == c for c in comps[:2]]
    mask = np.isin(labels, comps[:2])
    m: dict = {"area": float(mask.mean()), "lungs": len([c for c in comps if sizes[c] >= 0.1 * sizes[comps[0]]]) if comps else 0}
    m["balance"] = float(sizes[comps[1]] / sizes[comps[0]]) if len(comps) >= 2 else 0.0
    m["hesitant"] = float(((p > 0.05) & (p < 0.95)).sum() / max(1, int(raw.sum())))
    m["solidity"] = float(min((int(l.sum()) / max(1, int(convex_components(l).sum())) for l in lungs), default=0.0))
    if view_probs:
        m["views"] = min(_dice(raw, q >= 0.5) for q in view_probs)
    if roi is not None:
        m["roi_solidity"] = float(int(roi.sum()) / max(1, int(convex_components(roi).sum())))
    if comps:
        yy, xx = np.nonzero(mask)
        m["centre_x"], m["centre_y"] = float(xx.mean() / w), float(yy.mean() / h)
        m["side"] = 0.0
        if len(lungs) >= 2:  # one lung each side of the midline (not one above the other), each this far off it
            cx = [np.nonzero(l)[1].mean() / w for l in lungs]
            if (cx[0] - 0.5) * (cx[1] - 0.5) < 0:
                m["side"] = float(min(abs(c - 0.5) for c in cx))
    flags = []
    lim = LIMITS
    if not lim["area"][0] <= m["area"] <= lim["area"][1]:
        flags.append("area")
    if m["lungs"] != 2 or m["balance"] < lim["balance"]:
        flags.append("lungs")
    if m["hesitant"] > lim["hesitant"]:
        flags.append("hesitant")
    if m["solidity"] < lim["solidity"] or m.get("roi_solidity", 1.0) < lim["roi_solidity"]:
        flags.append("concave")
    if "views" in m and m["views"] < lim["views"]:
        flags.append("views")
    if not comps or not (lim["centre_x"][0] <= m["centre_x"] <= lim["centre_x"][1] and lim["centre_y"][0] <= m["centre_y"] <= lim["centre_y"][1]
                         and m["side"] >= lim["side"]):
        flags.append("place")
    return Assessment(m, flags)


def lung_field(shape: tuple[int, int]) -> np.ndarray:
    """The box where a frontal chest X-ray's lungs lie (``LUNG_FIELD``), as a bool mask."""
    h, w = shape
    top, bottom, left, right = LUNG_FIELD
    box = np.zeros(shape, bool)
    box[int(top * h) : int(np.ceil(bottom * h)), int(left * w) : int(np.ceil(right * w))] = True
    return box


def widen(roi: np.ndarray, prob: np.ndarray, assessment: Assessment, low: float = 0.01, margin: int = WIDEN_MARGIN) -> np.ndarray:
    """The conservative ROI for an uncertain mask: the ROI, plus every pixel of lung probability
    ``prob >= low`` (pass the largest over the test-time views), each lung's convex hull,
    ``margin`` more pixels; and for an implausible mask (:attr:`Assessment.implausible`) the whole
    lung field too. (On cxr3/test the hull alone, with the hiding kept 24 px away instead, fooled
    the white box on 84.5 % instead of 83.6 % but left 5 images whose payload fitted nowhere.)"""
    out = roi | dilate(convex_components(fill_holes(largest_components(prob >= low, keep=4, min_fraction=0.02))), margin)
    if assessment.implausible:
        out |= lung_field(roi.shape)
    return out


def guard(roi: np.ndarray, prob: np.ndarray, low: float = GUARD_PROBABILITY, reach: int = GUARD_REACH) -> np.ndarray:
    """Where the hiding keeps out of the image (or to one level) besides the ROI: pixels within
    ``reach`` of it that any test-time view gives a lung probability ``>= low``, where the
    segmenter's misses lie. (Lower ``low`` is no use: the segmenter gives 0.001 to 60 % of the
    image, 0.002 to 43 %; at 0.002 the white-box ASR fell to 68 %.)"""
    return roi | (dilate(roi, reach) & (prob >= low))
