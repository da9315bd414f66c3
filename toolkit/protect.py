"""Protect on the shipped ONNX models: segment → ROI → perturbation grid → exact integer
perturbation → reversible embedding (kernels). No PyTorch at run time.

The grid comes from one of two sources (:class:`Protector`): by default the sparse gradient
refinement on the white-box classifier (:mod:`toolkit.refine`, needs ``gradient_<arch>.onnx``);
with ``refine_steps=0`` the NROI-AdvGAN generator alone (one forward pass: faster, far weaker).

The networks see a 224x224 8-bit view of each image (through its display window: the DICOM VOI
window, or the image's own range for deeper images without one, :mod:`toolkit.display`; inverted
for DICOM MONOCHROME1; area-resized). Their outputs come back to the image's own resolution with
integer-exact rules: the ROI mask by nearest-neighbour index mapping, the generator's coarse grid
by index mapping onto a grid of ``f``-pixel cells (``f = min(H, W) // grid side``), upsampled by
cell repetition exactly as ``kernels.resample.upsample`` does, so the codec stores just that grid.
One perturbation level is 1/255 of the display window in native units (1 for 8-bit, 257 for a
16-bit image that fills its range), so eps means the same change in every image's view.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from medrae import kernels
from medrae.kernels import patterns as transfer_patterns
from medrae.kernels.codecs import PatternHint
from medrae.kernels.resample import MAX_FACTOR, grid_shape, upsample

from .display import level_size, to_view
from .imageio import Image
from . import diversity, headers, qc
from .masks import dilate, postprocess
from .ort import ModelsError, file_sha256, normalize, require_file, session  # noqa: F401  (normalize: protect's network input, re-exported)
from .refine import Refiner, RefineSettings, TransferSettings, TransferStage, spare_flat, upsample_cells

NET_SIZE = 224
log = logging.getLogger("medrae")
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each of ``n_out`` samples resampled from ``n_in`` (integer-exact)."""
    return (np.arange(n_out, dtype=np.int64) * n_in) // n_out


def resize_nearest(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return plane[nearest_index(shape[0], plane.shape[0])][:, nearest_index(shape[1], plane.shape[1])]


def cells_touching(mask: np.ndarray, factor: int) -> np.ndarray:
    """True for each ``factor x factor`` cell (partial edge cells included) holding any mask pixel;
    ``mask`` is (..., H, W), e.g. a batch of masks."""
    *lead, h, w = mask.shape
    gh, gw = grid_shape((h, w), factor)
    pad = np.zeros((*lead, gh * factor, gw * factor), dtype=bool)
    pad[..., :h, :w] = mask
    return pad.reshape(*lead, gh, factor, gw, factor).any(axis=(-3, -1))


def network_view(image: Image) -> np.ndarray:
    """The 224x224 uint8 image the networks see (through its display window, MONOCHROME1
    inverted, area resize; :mod:`toolkit.display`)."""
    from PIL import Image as PILImage

    x = to_view(image)
    if x.shape != (NET_SIZE, NET_SIZE):
        x = np.asarray(PILImage.fromarray(x).resize((NET_SIZE, NET_SIZE), PILImage.BOX))
    return np.ascontiguousarray(x, dtype=np.uint8)


@dataclass(frozen=True)
class PatternUse:
    """The shipped transfer pattern protect added to one image (``kernels.patterns``): its id, the
    class whose pattern it is (the white box's clean prediction) and the cells of the perturbation
    grid it covers (bool, the grid's shape)."""

    pattern_id: int
    cls: int
    cover: np.ndarray
    placement: transfer_patterns.Placement = transfer_patterns.IDENTITY  # drawn from the key (secret)
    clip: int = 0  # the pattern's levels clipped to -clip..clip (0: as trained)
    gain: int = 1  # the pattern's levels multiplied by this before the clip

    def coarser(self, level: int) -> "PatternUse":
        """The same on the grid subsampled ``2**level`` times (as protect_with_fallback coarsens)."""
        return replace(self, cover=self.cover[:: 1 << level, :: 1 << level])


# Blocks (8 px of the 224x224 view each) around the hiding's region that only the first group of
# passes may use (kernels.embed(band=...)): a lung the segmenter and every test-time view missed
# lies next to the lungs it found, so the hiding changes it by one level at most, never two.
HIDING_BAND = 1


@dataclass
class Plan:
    """The exact perturbation for one image at its own resolution, and what the codec is told."""

    adversarial: np.ndarray
    roi: np.ndarray  # bool, the image's own resolution
    eps: int  # native units
    hints: dict
    guard: Optional[np.ndarray] = None  # bool, the region the hiding keeps out of (or to one level in); None: ``roi``
    band: int = HIDING_BAND  # blocks around the hiding region that the hiding moves by one level at most (0: none)
    level: int = 0  # the strength level's id, recorded in the payload's public header (0: none)

    @property
    def hiding_region(self) -> np.ndarray:
        return self.roi if self.guard is None else self.guard


def plan_perturbation(image: Image, roi: np.ndarray, grid: np.ndarray, eps: int, guard: Optional[np.ndarray] = None,
                      pattern: Optional[PatternUse] = None) -> Plan:
    """Map a 224x224 ROI and the generator's integer grid (levels in ``-eps..eps``) onto ``image``.

    ``grid`` is either a coarse grid (side < 224) or a dense 224x224 perturbation. ``guard``: a
    mask of ``roi``'s shape, the region the hiding keeps out of (or to one level in) besides the
    ROI: where a segmenter that missed part of a lung most often missed it (:func:`toolkit.qc.guard`).
    ``pattern``: the transfer pattern ``grid`` contains (its cover on ``grid``'s cells), told to
    the codec so that it codes only what differs from the pattern.
    """
    h, w = image.pixels.shape
    step = level_size(image)
    sign = -1 if image.monochrome1 else 1
    roi_full = resize_nearest(roi, (h, w)) if roi.shape != (h, w) else roi
    side = grid.shape[0]
    # cells of factor x factor pixels; beyond MAX_FACTOR (a large image, or a grid coarsened for
    # capacity) the grid is resampled onto more, smaller cells, which the codec's format carries
    factor = max(1, min(MAX_FACTOR, min(h, w) // side))
    g = resize_nearest(grid, grid_shape((h, w), factor)).astype(np.int64)
    g[cells_touching(roi_full, factor)] = 0  # no change on any cell the ROI touches
    g *= step * sign
    delta = upsample(g, factor, (h, w)) if factor > 1 else g
    x = image.pixels.astype(np.int64)
    # clipped by whole levels, so every applied change stays a multiple of ``step``: the codec
    # divides the perturbation by the gcd of its values, and one odd clipped pixel near black or
    # white made it code raw native units (a 16-bit phantom's payload: 15 kbit -> 137 kbit)
    levels = np.clip(delta // step, -(x // step), (image.ceiling - x) // step)
    adv = (x + levels * step).astype(image.pixels.dtype)
    hints = {"grid": g, "factor": factor} if side < NET_SIZE and factor > 1 else {}
    if hints and pattern is not None:
        if pattern.cover.shape != grid.shape:
            raise ValueError(f"pattern cover {pattern.cover.shape} != grid {grid.shape}")
        cover = resize_nearest(pattern.cover, g.shape) & ~cells_touching(roi_full, factor)
        hints["pattern"] = PatternHint(pattern.pattern_id, pattern.cls, cover, step * sign, pattern.placement, pattern.clip, pattern.gain)
    if guard is not None:
        guard = roi_full | (resize_nearest(guard, (h, w)) if guard.shape != (h, w) else guard)
    return Plan(adv, roi_full, eps * step, hints, guard)


# Where the hiding may go, most protective first (protect_with_fallback tries them in this order).
# "frozen": outside the ROI only (the lungs stay bit-exact); "open1": the first group of passes
# also uses the ROI (each ROI pixel moves by at most one level), the rest keeps out of it;
# "anywhere": every pass may use the ROI (explicit opt-in, --rdh-in-roi: several levels there).
HIDING_MODES = ("frozen", "open1", "anywhere")


def protect_planned(image: Image, plan: Plan, key: Optional[bytes], method: Optional[str] = None,
                    codec: Optional[str] = None, check: bool = True, hiding: str = "frozen",
                    metadata: Optional[bytes] = None) -> tuple[np.ndarray, kernels.ProtectInfo]:
    """Embed the plan's exact perturbation; raises ``kernels.CapacityError`` when it does not fit.
    ``hiding``: one of ``HIDING_MODES`` (``frozen``: the lungs of the protected image are the
    original's, ``kernels.embed(frozen=...)``). ``check=False`` only where the caller restores
    the encoded file itself (batch does). ``metadata``: the image's header record
    (:func:`medrae.toolkit.headers.record`), made here when not given."""
    if hiding not in HIDING_MODES:
        raise ValueError(f"hiding must be one of {', '.join(HIDING_MODES)}, got {hiding!r}")
    frozen = plan.hiding_region if hiding != "anywhere" and plan.roi.any() else None
    return kernels.protect_array(image.pixels, plan.adversarial, key, eps=plan.eps, method=method, codec=codec, check=check,
                                 ceiling=image.kernel_ceiling, frozen=frozen, open_first=hiding == "open1" and frozen is not None,
                                 band=plan.band, metadata=headers.record(image) if metadata is None else metadata, level=plan.level,
                                 **plan.hints)


# A payload that does not fit is retried with the generator's grid subsampled 2x per level (a
# quarter of the payload each time): a coarser, still adversarial perturbation beats no protection.
MAX_COARSENING = 2
MIN_GRID = 28


def rdh_change(info: kernels.ProtectInfo) -> int:
    """Largest change the RDH made to any pixel (of ``x >> s`` for 16-bit): each group of passes
    (PEE: the two rhombus sets) moves a pixel by at most one level."""
    group = kernels.RDH_METHODS.get(info.method).group
    return -(-info.passes // group)


def hiding_modes(max_roi_change: Optional[int]) -> tuple[str, ...]:
    """The hiding modes to try, in order, for a bound on the change inside the ROI (levels;
    None: no bound, the payload may use the ROI in every pass)."""
    if max_roi_change is None:
        return ("anywhere",)
    if max_roi_change < 0:
        raise ValueError(f"max_roi_change must be >= 0 or None, got {max_roi_change}")
    return ("frozen", "open1") if max_roi_change >= 1 else ("frozen",)


class RetryWithoutHead(Exception):
    """The payload of a grid started from a head (the transfer pattern or the transfer stage's) fits
    only on a coarser grid (:func:`protect_with_fallback` with ``head_retry``): the caller refines
    the image again without the head (:meth:`Protector.refine_without_pattern`) and fits that grid instead."""


def protect_with_fallback(image: Image, roi: np.ndarray, grid: np.ndarray, eps: int, key: Optional[bytes],
                          method: Optional[str] = None, codec: Optional[str] = None, check: bool = True,
                          max_rdh_change: int = 0, max_roi_change: Optional[int] = 1, guard: Optional[np.ndarray] = None,
                          pattern: Optional[PatternUse] = None, head_retry: bool = False,
                          strength_id: int = 0) -> tuple[np.ndarray, kernels.ProtectInfo, Plan, int, str]:
    """:func:`protect_planned` on the full grid, then on 2x coarser grids while the payload does
    not fit, or (``max_rdh_change > 0``) while hiding it changes some pixel by more than
    ``max_rdh_change`` levels; the coarsest grid's result is kept even if it still does. Each grid
    tries :func:`hiding_modes` in turn: first outside the ROI only, then (``max_roi_change >= 1``,
    the default) with the ROI open to the first group of passes, one level at most there (the
    lungs are the X-ray's smoothest, most capacious part: ±1 there costs less than a coarser,
    weaker perturbation); each mode first with a band of ``HIDING_BAND`` blocks around the hiding
    region moved by one level at most (``plan.band``), then without. ``max_roi_change=None``: the
    payload may use the ROI in every pass. ``head_retry`` (the grid started from a head: the
    transfer ``pattern`` or the transfer stage): raise :class:`RetryWithoutHead` where the full
    grid does not fit, instead of coarsening it.
    ``strength_id``: the strength level recorded in the payload's public header (0: none).
    Returns ``(marked, info, plan, coarsening level, hiding mode)`` or raises the last ``CapacityError``."""
    modes = hiding_modes(max_roi_change)
    record = headers.record(image)  # once: a DICOM's header record is the same for every try below
    level = 0
    # the band first, both modes; then without it, before a coarser (weaker) perturbation: on cxr3/test
    # coarsening instead cost 6.6 points of white-box ASR (81.2 -> 74.6 %); without it 19 of 268 images
    steps = [(mode, band) for band in dict.fromkeys((HIDING_BAND, 0)) for mode in modes if not (band and mode == "anywhere")]
    while True:
        last = level == MAX_COARSENING or grid.shape[0] >> (level + 1) < MIN_GRID or grid.shape[0] >= NET_SIZE
        plan = plan_perturbation(image, roi, grid[:: 1 << level, :: 1 << level], eps, guard, pattern.coarser(level) if pattern else None)
        plan.level = strength_id
        tried = steps if plan.roi.any() else [("anywhere", 0)]
        for mode, band in tried:
            plan.band = band
            try:
                marked, info = protect_planned(image, plan, key, method, codec, check, mode, record)
                # measured, not assumed: the embedder keeps the region to one step of x >> s (black and white
                # included), but for a deep image one such step can be more than one display level
                if mode == "open1" and roi_change(image, marked, plan) > max_roi_change:
                    raise kernels.CapacityError(f"hiding it with one pass group in the ROI would change the ROI by more than "
                                                f"{max_roi_change} level (one step of the hiding's bit shift is coarser than a "
                                                f"display level)", info.payload_bits, info.payload_bits)
            except kernels.CapacityError:
                if (mode, band) != tried[-1]:
                    continue
                if head_retry and level == 0:
                    # a coarsened refined grid fooled the white box on 0 of 11 cxr3/test images; the
                    # same image refined without the pattern fit at full resolution on 10 of 17; with the
                    # transfer stage's head, white box 82.7 -> 91.4 % on cxr3/val (docs/STRENGTH.md)
                    raise RetryWithoutHead() from None
                if last:
                    raise
                continue
            if last or not max_rdh_change or rdh_change(info) <= max_rdh_change:
                return marked, info, plan, level, mode
        level += 1


def roi_change(image: Image, marked: np.ndarray, plan: Plan) -> int:
    """Largest change the hiding made inside the plan's hiding region (the ROI and its guard), in
    levels (1/255 of the display window), rounded up; inside the ROI that is the whole change (the
    perturbation never touches it)."""
    d = np.abs(marked.astype(np.int64) - plan.adversarial.astype(np.int64))[plan.hiding_region].max(initial=0)
    return int(-(-int(d) // level_size(image)))


@dataclass
class Fitted:
    """One view's fitted protection (:func:`fit_analysed`)."""

    marked: np.ndarray
    info: kernels.ProtectInfo
    plan: Plan
    level: int  # coarsening level
    hiding: str  # HIDING_MODES
    pattern: bool  # the transfer pattern is in it (False: refined again without it, or none was used)


def fit_analysed(prot: "Protector", views: np.ndarray, a: "Analysis", key: Optional[bytes], eps: Optional[int] = None,
                 **fallback) -> list:
    """:func:`protect_with_fallback` for each 224x224 view of an analysed batch, as ``medrae protect``
    does: a view whose payload with the transfer pattern (or the transfer stage's head) fits only
    coarser is refined again without it and fitted from that grid (its ``a.grids``/``a.margins``/``a.steps`` entries are
    replaced). Returns per view a :class:`Fitted`, the ``kernels.CapacityError`` that refused it,
    or None where QC skips it. ``fallback``: protect_with_fallback's keyword options."""
    eps = prot.eps if eps is None else eps

    def fit(k: int, grid: np.ndarray, pattern: Optional[PatternUse], head: bool):
        guard = a.guards[k] if a.guards is not None else None
        try:
            return Fitted(*protect_with_fallback(Image(views[k], 255, "png"), a.rois[k], grid, eps, key, guard=guard, pattern=pattern,
                                                 strength_id=getattr(prot, "strength_id", 0),
                                                 head_retry=head, **fallback), pattern is not None)
        except kernels.CapacityError as exc:
            return exc

    out: list = []
    retry: list[int] = []
    for k in range(len(views)):
        use = a.pattern(k)
        try:
            out.append(None if a.skip is not None and a.skip[k] else
                       fit(k, a.grids[k], use, use is not None or getattr(prot, "transfer", None) is not None))
        except RetryWithoutHead:
            out.append(None)
            retry.append(k)
    if retry:
        r = prot.refine_without_pattern(views[retry], a.rois[retry], eps)
        for j, k in enumerate(retry):
            a.grids[k], a.margins[k], a.steps[k] = r.grids[j], r.margins[j], r.steps[j]
            out[k] = fit(k, r.grids[j], None, False)
    return out


@dataclass
class Protected:
    """One image's result: ``marked``/``info`` are None and ``error`` says why when it was refused."""

    marked: Optional[np.ndarray]
    roi: np.ndarray
    adversarial: np.ndarray
    info: Optional[kernels.ProtectInfo]
    error: Optional[str] = None
    hiding: Optional[str] = None  # where the payload went (HIDING_MODES)


def uncertain_reason(assessment: "qc.Assessment") -> str:
    return f"uncertain lung segmentation ({assessment.reason()}); not protected (--on-uncertain-roi skip)"


def capacity_reason(exc: kernels.CapacityError) -> str:
    short = exc.needed_bits - exc.capacity_bits
    return f"payload does not fit: {exc}" + (f" (short by {short} bits)" if short > 0 else "")


@dataclass
class Segmentation:
    """The ROIs of a batch of 224x224 views, and what quality control made of them."""

    rois: np.ndarray  # (N, 224, 224) bool: what is protected (widened where QC flagged and the policy is widen)
    plain: np.ndarray  # (N, 224, 224) bool: the ROI rule's output before QC
    assessments: list  # toolkit.qc.Assessment per view
    skip: np.ndarray  # (N,) bool: flagged and the policy is skip (nothing is written for these)
    guards: np.ndarray  # (N, 224, 224) bool: the hiding's region (toolkit.qc.guard), a superset of rois


@dataclass
class Analysis:
    """What the networks decided for a batch of 224x224 views."""

    rois: np.ndarray  # (N, 224, 224) bool
    grids: np.ndarray  # (N, g, g) int64 levels in -eps..eps, zero on ROI cells
    margins: np.ndarray  # (N,) white-box margin of the clean prediction after refinement (NaN: not refined)
    steps: np.ndarray  # (N,) refinement steps taken
    assessments: list = field(default_factory=list)  # toolkit.qc.Assessment per view (empty: no segmentation)
    skip: Optional[np.ndarray] = None  # (N,) bool: QC flagged the ROI and the policy is skip
    guards: Optional[np.ndarray] = None  # (N, 224, 224) bool: the hiding's region (None: the ROI)
    patterns: Optional[list] = None  # PatternUse per view (None: no transfer pattern)

    def pattern(self, k: int) -> Optional[PatternUse]:
        return self.patterns[k] if self.patterns else None


DEFAULT_GRADIENT = "gradient_resnet18.onnx"
# the transfer stage's surrogates (--transfer-steps; models/zoo.py: trained independently of the white box and of the
# held-out targets; none shares a family with a target)
DEFAULT_SURROGATES = ("gradient_s_resnet10_128.onnx", "gradient_s_vgg11_150.onnx")
# A pixel is ROI from a 5 % lung probability, not the segmenter's 50 %: where the segmenter hesitates
# is where it misses lung. On cxr3 val (benchmarks/probe_refine.py --all, ROI margin 4 px) true-lung pixels
# fell outside the protected cells on 24.1 % of images at 50 % and 4.4 % at 5 %, for 3 points more
# protected area (36.3 % of the image instead of 33.1 %); a 8 px margin at 50 % leaked on 6.3 %
# with 41.1 % protected. Since 2026-12-06 (2026-12-06) 1 %: the 5 % contour left the perturbation
# 1-3 px into true lung on 2 cxr3/test X-rays that QC could not flag, and on 6 of val; at 1 % none on
# test and 4 on val (benchmarks/probe_lungs.py), for ~1.5 points of white-box ASR (README, "The
# lungs' promise"). Below 0.5 % the segmenter's output is its floor (at 0.1 % the ROI is 97 % of the image).
ROI_THRESHOLD = 0.01
# Each lung's convex hull (--roi-convex) covers most of what the segmenter misses (the leaks sit at
# the cardiac border and the bases), but that is where the attack works best. cxr3 val, 270 images
# (benchmarks/probe_refine.py --all [--roi-convex] [--roi-margin M] resnet18:1:0:0.05:2:40): images
# with true-lung pixels outside the protected cells / such pixels per image / white-box ASR: plain
# ROI 4.4 % / 23.5 / 91.4 %; hull 3.7 % / 9.9 / 86.3 %; hull + 3 px margin 5.6 % / 11.0 / 89.8 %.
ROI_CONVEX = False
# test-time views whose lungs join the ROI (toolkit.qc.VIEWS); all of them always shape the hiding's guard and QC
# cxr3/test, 270 images (Protector(roi_views=...) through a script not kept, before spare_flat): images whose perturbation reached
# true-lung pixels / white-box ASR: own view 11 / 85.6 %, + mirror 5 / 85.2 %, + both gammas too 5 / 84.1 %
ROI_VIEWS: tuple[str, ...] = ("mirror",)
# The transfer pattern keeps this many more px (224x224 view) from the ROI than the refinement does.
# Every test X-ray whose perturbation reached true lung (5 of 270, at most 34 px, each within 3 px
# of the ROI) had it on pattern cells. cxr3/test (benchmarks/probe_lungs.py --list with this
# constant set): 0 -> 2 px: reached 5 -> 2 images (22 px), white-box 81.96 -> 82.28 %;
# val 9 -> 6, 85.26 % both. medrae evaluate --transfer, two runs each: held-out median 14.5 / 13.7 ->
# 11.6 / 12.0 % (Xception-150's), mean unchanged (12.0 / 11.9 -> 12.0 / 12.1 %), the weakest target up
# 1.3 points. The refinement's own cells near the ROI are where the attack works (a 2 px keep-out for
# the refinement too cost 3.5 points white-box and 2.9 held-out median).
# At the 1 % ROI (cxr3/val, benchmarks/probe_transfer.py --variant default with this constant patched):
# 0 vs 2 px gave the same held-out median (11.4 %), PSNR 34.45 vs 34.71: the 1 % ROI, not this, cost the median.
PATTERN_KEEP_OUT = 2
# cells per independently keyed square of the pattern: a single placement for the whole pattern is
# found by a matched filter on 53.5 % of its cells, one per 8x8-cell square on 21.8 % (cxr3/val, 30
# X-rays, benchmarks/probe_placement.py; docs/STRENGTH.md)
PATTERN_BLOCK = 8


class Protector:
    """Holds the segmenter, generator and margin-gradient sessions and turns network views into
    ROIs and perturbation grids.

    ``refine_steps``: None refines with the default settings when ``models_dir`` holds ``gradient``
    (else the generator alone, logged); 0 uses the generator alone; N > 0 refines with at most N steps.
    ``gradient``: one gradient model file, or several (an ensemble of white boxes).
    ``robust``: refine so that the classifier is also fooled after a half-size-and-back resize.
    ``margin``: the logit margin by which the classifier(s) must be wrong (default 1; larger
    transfers a little better to unseen models, at a larger, more visible perturbation).
    ``roi_threshold``: lung probability from which a pixel is ROI (default ``ROI_THRESHOLD``).
    ``roi_convex``: each lung of the ROI widened to its convex hull before the margin (see ``ROI_CONVEX``).
    ``on_uncertain_roi``: what to do with a lung mask that quality control (:mod:`toolkit.qc`) flags:
    ``widen`` (default) protects a conservative ROI instead, ``skip`` protects nothing (the file is
    reported), ``proceed`` uses the mask as it is.
    """

    def __init__(self, models_dir: Path | str = MODELS_DIR, device: str = "auto", eps: Optional[int] = None,
                 dilation: Optional[int] = None, segmenter: str = "segmenter.onnx", generator: str = "generator.onnx",
                 refine_steps: Optional[int] = None, gradient: str | list[str] = DEFAULT_GRADIENT, robust: bool = False,
                 margin: Optional[float] = None, roi_threshold: Optional[float] = None, roi_convex: bool = ROI_CONVEX,
                 surrogates: Optional[list[str]] = None, transfer_steps: Optional[int] = None,
                 transfer_settings: Optional[TransferSettings] = None, on_uncertain_roi: str = qc.DEFAULT_POLICY,
                 roi_views: tuple[str, ...] = ROI_VIEWS, pattern: Optional[int] = None, pattern_eps: Optional[int] = None,
                 keyed_pattern: bool = True, pattern_block: int = PATTERN_BLOCK, pattern_spare_flat: float = 0.0,
                 pattern_gain: int = 1, give_up: bool = True):
        models_dir = Path(models_dir)
        if on_uncertain_roi not in qc.POLICIES:
            raise ValueError(f"on_uncertain_roi must be one of {', '.join(qc.POLICIES)}, got {on_uncertain_roi!r}")
        self.on_uncertain_roi = on_uncertain_roi
        unknown = set(roi_views) - {name for name, _, _ in qc.VIEWS}
        if unknown:
            raise ValueError(f"roi_views: unknown test-time view(s) {sorted(unknown)}; known: {[v[0] for v in qc.VIEWS]}")
        self.roi_views = tuple(roi_views)
        for name in (segmenter, generator):
            require_file(models_dir / name)
        card = require_file((models_dir / generator).with_suffix(".json"), "model card")
        try:
            self.gen_card = json.loads(card.read_text())
        except (OSError, ValueError) as exc:
            raise ModelsError(f"{card}: unreadable model card ({exc})") from None
        self.seg = session(models_dir / segmenter, device)
        self.model_files = {segmenter: file_sha256(models_dir / segmenter)}  # provenance: file -> SHA-256
        self.eps = int(eps if eps is not None else round(self.gen_card["eps"]))  # 1/255 units
        if not 1 <= self.eps <= 16:
            raise ValueError(f"eps must be 1..16 (in 1/255 units), got {self.eps}")
        if refine_steps is not None and refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        self.refiner: Optional[Refiner] = None
        gradients = [gradient] if isinstance(gradient, str) else list(gradient)
        if refine_steps != 0 and (refine_steps or all((models_dir / g).is_file() for g in gradients)):
            settings = RefineSettings(robust=robust)
            if not give_up:  # every image gets every step (slower; a few more fooled)
                settings = replace(settings, give_up=())
            if refine_steps is not None:
                settings = replace(settings, steps=refine_steps)
            if margin is not None:
                if margin < 0:
                    raise ValueError(f"margin must be >= 0, got {margin}")
                settings = replace(settings, margin=float(margin))
            self.refiner = Refiner([models_dir / g for g in gradients], device, settings)
        elif robust:
            raise ValueError("robust protection needs the gradient refinement (refine_steps > 0 and a gradient model)")
        elif refine_steps is None:
            log.warning("%s: no %s; perturbations come from the generator alone (weaker)", models_dir, ", ".join(gradients))
        # the transfer stage (before the refinement), opt-in: it doubles the payload, which then fits
        # outside the ROI less often (README "Transfer to unseen models")
        self.transfer: Optional[TransferStage] = None
        if transfer_steps is not None and transfer_steps < 0:
            raise ValueError(f"transfer_steps must be >= 0, got {transfer_steps}")
        if transfer_steps or surrogates or transfer_settings:
            if not self.refiner:
                raise ValueError("the transfer stage needs the gradient refinement (refine_steps > 0 and a gradient model)")
            chosen = list(surrogates or DEFAULT_SURROGATES)
            missing = [g for g in chosen if not (models_dir / g).is_file()]
            if missing:
                raise ModelsError(f"{models_dir / missing[0]}: surrogate gradient model not found (--models DIR)")
            ts = transfer_settings or TransferSettings()
            ts = replace(ts, steps=transfer_steps) if transfer_steps else ts
            self.transfer = TransferStage([models_dir / g for g in chosen], device, ts)
        # the transfer pattern (kernels.patterns), added before the refinement; off with the generator
        # alone and with the transfer stage, which makes its own dense head
        self.pattern_id = transfer_patterns.DEFAULT_PATTERN if pattern is None else int(pattern)
        if self.pattern_id and (not self.refiner or self.transfer):
            if pattern is not None:
                raise ValueError("the transfer pattern needs the gradient refinement and excludes the transfer stage (--pattern none)")
            self.pattern_id = 0
        self.pattern_grid = transfer_patterns.load(self.pattern_id) if self.pattern_id else None
        if pattern_eps is not None and not 1 <= pattern_eps <= 16:
            raise ValueError(f"pattern_eps must be 1..16 (in 1/255 units), got {pattern_eps}")
        self.pattern_eps = pattern_eps  # the pattern's amplitude (None: eps)
        self.keyed_pattern = bool(keyed_pattern)  # each file's placement drawn from the key (kernels.patterns.draw_placement)
        if self.pattern_grid is not None and not 0 <= pattern_block <= self.pattern_grid.shape[-1]:
            raise ValueError(f"pattern_block must be 0..{self.pattern_grid.shape[-1]} cells, got {pattern_block}")
        self.pattern_block = int(pattern_block)  # cells per independently placed square (0: one placement for the whole pattern)
        if not 0.0 <= pattern_spare_flat < 1.0:
            raise ValueError(f"pattern_spare_flat must be a fraction in [0, 1), got {pattern_spare_flat}")
        # the flattest free cells the pattern leaves out: a keyed placement lays strong values on flat
        # background too, where SSIM's windows have no texture to hide them in
        self.pattern_spare_flat = float(pattern_spare_flat)
        if not 1 <= pattern_gain <= 8:
            raise ValueError(f"pattern_gain must be 1..8, got {pattern_gain}")
        self.pattern_gain = int(pattern_gain)  # the pattern's levels multiplied by this, then clipped to its amplitude
        self.gen = None if self.refiner else session(models_dir / generator, device)
        self.model_files.update(self.refiner.files if self.refiner else {generator: file_sha256(models_dir / generator)})
        if self.transfer:
            self.model_files.update(self.transfer.files)
        if self.pattern_id:
            name, sha = transfer_patterns.PATTERNS[self.pattern_id]
            self.model_files[f"kernels/patterns/{name}.npy"] = sha
        self.factor = self.refiner.settings.factor if self.refiner else int(self.gen_card.get("grid_factor", 1))
        self.dilation = int(dilation if dilation is not None else self.gen_card.get("roi_dilation_px", 4))
        self.roi_threshold = float(ROI_THRESHOLD if roi_threshold is None else roi_threshold)
        self.roi_convex = bool(roi_convex)
        if not 0.0 < self.roi_threshold < 1.0:
            raise ValueError(f"roi_threshold must be a lung probability in (0, 1), got {self.roi_threshold}")

    @property
    def mode(self) -> str:
        if not self.refiner:
            return "generator"
        robust = ", robust to resizing" if self.refiner.settings.robust else ""
        stage = f"transfer stage on {' + '.join(self.transfer.architectures)}, then " if self.transfer else ""
        if self.pattern_id:
            amp = (f" x{self.pattern_gain}" if self.pattern_gain != 1 else "") + (f" at {self.pattern_eps}" if self.pattern_eps else "")
            keyed = (f", placed by the key ({self.pattern_block}-cell blocks)" if self.pattern_block else ", placed by the key") if self.keyed_pattern else ""
            stage = f"transfer pattern {transfer_patterns.PATTERNS[self.pattern_id][0]}{amp}{keyed}, then "
        return f"{stage}refine (white box {' + '.join(self.refiner.architectures)}{robust})"

    @property
    def roi_rule(self) -> str:
        hull = ", each lung's convex hull" if self.roi_convex else ""
        return (f"lung probability >= {self.roi_threshold:g}{hull}, widened by {self.dilation} px (224x224 view); "
                f"uncertain masks: {self.on_uncertain_roi}")

    def segment(self, views: np.ndarray) -> Segmentation:
        """ROIs of (N, 224, 224) uint8 views. The segmenter also sees each view's test-time
        variants (:data:`toolkit.qc.VIEWS`); a pixel is ROI where any of them gives the ROI rule's
        lung probability. Quality control (:func:`toolkit.qc.assess`) checks each mask and
        ``on_uncertain_roi`` acts on it."""
        n = len(views)
        batch = np.concatenate([views] + [fwd(views) for _, fwd, _ in qc.VIEWS])
        logits = self.seg.run(None, {"image": normalize(batch)})[0][:, 0]
        own = logits[:n]
        back = [inv(logits[(k + 1) * n : (k + 2) * n]) for k, (_, _, inv) in enumerate(qc.VIEWS)]
        most = np.maximum.reduce([own] + back)  # the most lung-like logit over the views
        # each view's ROI on its own (its two lungs), then their union: one view's spurious blob
        # cannot push a lung out of the largest components
        joined = [own] + [b for (name, _, _), b in zip(qc.VIEWS, back) if name in self.roi_views]
        plain = np.stack([np.logical_or.reduce([postprocess(v[k], self.dilation, threshold=self.roi_threshold, convex=self.roi_convex)
                                                for v in joined]) for k in range(n)])
        probs = [qc.probability(b) for b in back]
        assessments = [qc.assess(own[k], [q[k] for q in probs], plain[k]) for k in range(n)]
        p_most = qc.probability(most)
        rois = plain.copy()
        if self.on_uncertain_roi == "widen":
            for k, a in enumerate(assessments):
                if a.uncertain:
                    rois[k] = qc.widen(plain[k], p_most[k], a)
        guards = np.stack([qc.guard(r, q) for r, q in zip(rois, p_most)])
        skip = np.array([a.uncertain and self.on_uncertain_roi == "skip" for a in assessments], bool)
        return Segmentation(rois, plain, assessments, skip, guards)

    def _pattern_cover(self, views: np.ndarray, free: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The free cells the pattern goes on: not where it would clip at black or white (each
        clipped pixel is an exception the codec pays for). Sparing the flattest cells too, as the
        refinement does, transferred worse (10 or 25 % of them, val)."""
        n, g = free.shape[0], free.shape[-1]
        f = NET_SIZE // g
        cells = views.reshape(n, g, f, g, f)
        lo, hi = cells.min(axis=(2, 4)).astype(np.int64), cells.max(axis=(2, 4)).astype(np.int64)
        return free & (lo + values >= 0) & (hi + values <= 255)

    def analyse(self, views: np.ndarray, eps: Optional[int] = None, region: bool = True, key: Optional[bytes] = None) -> Analysis:
        """ROIs and integer grids for (N, 224, 224) uint8 ``views`` at ``eps`` (default: the
        protector's). ``region=False``: no segmentation, an empty ROI (the whole image may change).
        ``key``: the transfer pattern goes where the key puts it on each view (a secret placement,
        :func:`kernels.patterns.draw_placement`); None (a keyless file): where it was trained."""
        if views.dtype != np.uint8 or views.ndim != 3 or views.shape[1:] != (NET_SIZE, NET_SIZE):
            raise ValueError(f"expected (N, {NET_SIZE}, {NET_SIZE}) uint8 views, got {views.shape} {views.dtype}")
        eps = self.eps if eps is None else eps
        seg = self.segment(views) if region else Segmentation(*(np.zeros(views.shape, bool),) * 2, [], np.zeros(len(views), bool), np.zeros(views.shape, bool))
        rois = seg.rois.copy()
        rois[seg.skip] = True  # nothing to perturb on a skipped view (it is not written)
        n = len(views)
        if self.refiner:
            r, uses = self._refine(views, rois, eps, with_head=True, key=key)
            return Analysis(rois, r.grids, r.margins, r.steps, seg.assessments, seg.skip, seg.guards, uses)
        raw = self.gen.run(None, {"image": normalize(views), "mask": rois[:, None].astype(np.float32)})[0][:, 0]
        grids = np.clip(np.round(raw * eps), -eps, eps).astype(np.int64)  # raw is in [-1, 1]
        if grids.shape[-1] < NET_SIZE:  # the generator zeroes ROI cells itself; this keeps it exact
            grids[cells_touching(rois, self.factor)] = 0
        return Analysis(rois, grids, np.full(n, np.nan), np.zeros(n, np.int64), seg.assessments, seg.skip, seg.guards)

    def refine_without_pattern(self, views: np.ndarray, rois: np.ndarray, eps: Optional[int] = None):
        """The refinement of (N, 224, 224) ``views`` outside ``rois`` from a zero grid, without the
        transfer pattern or stage (:func:`fit_analysed`: where their payload fits only coarser);
        returns the refiner's result (``grids``, ``margins``, ``steps``)."""
        if not self.refiner:
            raise ValueError("refine_without_pattern needs the gradient refinement")
        return self._refine(views, rois, self.eps if eps is None else eps, with_head=False)[0]

    def placements(self, views: np.ndarray, key: Optional[bytes]) -> list:
        """Each view's pattern placement: drawn from ``key`` and the view's pixels, or the
        trained one without a key (nothing secret to draw from) or with ``keyed_pattern`` off."""
        if key is None or not self.keyed_pattern or not self.pattern_id:
            return [transfer_patterns.IDENTITY] * len(views)
        return [transfer_patterns.draw_placement(key, hashlib.sha256(np.ascontiguousarray(v).tobytes()).digest(), self.pattern_block) for v in views]

    def transfer_starts(self, views: np.ndarray, key: Optional[bytes]) -> Optional[np.ndarray]:
        """The transfer stage's starting cells (N, g, g) in [-s, s], ``s`` its ``keyed_start``: drawn
        from ``key`` and each view's pixels (HMAC-SHA256), or None (zero) without a key. Nothing
        needs them again: the payload carries the cells the stage ended at."""
        s = self.transfer.settings.keyed_start if self.transfer else 0.0
        if key is None or not s:
            return None
        g = NET_SIZE // self.transfer.settings.factor
        return np.stack([s * r.uniform(-1.0, 1.0, (g, g)) for r in diversity.view_rngs(views, key, b"medrae transfer start v1")])

    def _refine(self, views: np.ndarray, rois: np.ndarray, eps: int, with_head: bool, key: Optional[bytes] = None):
        n = len(views)
        head, uses, clean = None, None, None
        free = ~cells_touching(rois, self.factor)
        if self.transfer and with_head:  # a coarse pattern that fools the surrogates; the refinement starts from it
            f = self.transfer.settings.factor
            rngs = diversity.rngs(views, key) if self.transfer.settings.diversity else None
            coarse = self.transfer.run(views, ~cells_touching(rois, f), eps, start=self.transfer_starts(views, key), rngs=rngs)
            head = upsample_cells(coarse, f // self.factor)
        elif self.pattern_id and with_head:  # the shipped universal pattern of the white box's clean prediction
            # every classifier's clean prediction, once: the refinement of the head start needs them too
            clean = self.refiner.margins(views, np.full((len(self.refiner.sessions), n), -1, np.int64))[1]
            labels = clean[0]
            per = (NET_SIZE // self.factor) // self.pattern_grid.shape[-1]
            amp = min(eps, self.pattern_eps or eps)
            gain = self.pattern_gain
            clip = amp if amp < gain * int(np.abs(self.pattern_grid).max()) else 0  # 0: no clip needed
            where = self.placements(views, key)
            placed = np.stack([transfer_patterns.placed(self.pattern_id, int(c), pl, clip, gain) for c, pl in zip(labels, where)])
            values = upsample_cells(placed, per)
            near = cells_touching(np.stack([dilate(r, PATTERN_KEEP_OUT) for r in rois]), self.factor)
            cover = self._pattern_cover(views, spare_flat(views, free & ~near, self.pattern_spare_flat), values)
            head = values * cover
            uses = [PatternUse(self.pattern_id, int(c), cover[k], where[k], clip, gain) for k, c in enumerate(labels)]
        spared = spare_flat(views, free, self.refiner.settings.spare_flat)
        if uses:  # the pattern's cells stay in the grid (the refinement zeroes cells it may not move)
            spared |= head != 0
        return self.refiner.refine(views, spared, eps, grids=head, labels=clean), uses

    def protect(self, images: np.ndarray, key: Optional[bytes], method: Optional[str] = None) -> list[Protected]:
        """Protect a batch (N, 224, 224) uint8 as ``medrae protect`` does (with its fallbacks);
        each result has been checked to restore, or carries the reason it was refused (payload
        does not fit), and nothing was produced for it."""
        a = self.analyse(images, key=key)
        out = []
        for k, fit in enumerate(fit_analysed(self, images, a, key, method=method)):
            roi = a.rois[k]
            if fit is None:
                out.append(Protected(None, roi, images[k], None, uncertain_reason(a.assessments[k])))
            elif isinstance(fit, kernels.CapacityError):
                out.append(Protected(None, roi, plan_perturbation(Image(images[k], 255, "png"), roi, a.grids[k], self.eps).adversarial, None,
                                     capacity_reason(fit)))
            else:
                out.append(Protected(fit.marked, roi, fit.plan.adversarial, fit.info, hiding=fit.hiding))
        return out
