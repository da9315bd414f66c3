"""Reversible data hiding: multi-pass embedding with side information kept in the image itself.

Layout (see docs/FORMAT.md, "RDH layer"):

* The first ``SIDE_BITS`` pixels of the border sequence (row 0, row H-1, column 0, column W-1)
  are *reserved*: no pass changes them and no PEE prediction reads them. After the last pass
  their LSBs are overwritten with the side information of that pass; their original LSBs travel
  inside the last pass's payload.
* Every pass after the first carries, at the start of its payload, the 96-bit record of the
  pass before it, so the decoder walks the chain backwards from the reserved LSBs alone.
* A *frozen* region (``embed(..., frozen=mask)``: protect passes the lungs) is never changed and
  never a PEE candidate; its block map (``kernels/regionmap.py``) follows the side information in
  the LSBs of the next border pixels, which are reserved too. With ``open_first=True`` the region
  is frozen only from the second group of passes on: the first group (PEE: both rhombus sets) may
  use it, which moves each of its pixels by at most one level, and the rest stays outside.
* A *band* of ``band`` blocks around the frozen region (``embed(..., band=D)``, ``D <= MAX_BAND``)
  is open to the first group of passes only, so its pixels move by at most one level too: where
  a segmenter that missed lung most often missed it, next to the lungs it found. It is derived
  from the block map (stored in the top bits of the map's block-side field), so it costs no bits.
* 16-bit images embed into the high part ``x >> s`` (the low ``s`` bits are untouched): their
  prediction errors are spread too wide for any bin to hold many bits, while ``x >> s`` behaves
  like an 8-bit image. ``s`` is the smallest shift whose capacity estimate fits the payload.
"""
from __future__ import annotations

import binascii
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Optional

import numpy as np

from . import _rdh_jit as jit
from . import regionmap
from ._bits import bits_to_bytes, bytes_to_bits
from ._registry import Registry, register
from .errors import CapacityError, NotProtectedError, PayloadError

SIGNATURE = 0xA7
RECORD_BITS = 96  # p1:16, p2:16, stop:32, nbits:32
SIDE_BITS = 8 + 4 + 4 + 8 + RECORD_BITS + 16  # signature, method, bit shift, pass count, record, CRC-16
MIN_SIDE = 8
MAX_PASSES = 255
FROZEN_FLAG = 0x80  # in the method byte: a frozen-region block map follows the side information
OPEN_FLAG = 0x40  # in the method byte, with FROZEN_FLAG: the first group of passes may use the frozen region
MAX_BAND = 15  # band width in blocks: the top 4 bits of the frozen-region header's block-side field
BLOCK_BITS = 12  # ... whose low 12 bits hold the block side
MAX_SHIFT = 8  # 16-bit images embed into x >> s, s <= MAX_SHIFT
SHIFT_GROUPS = 2  # passes' worth of groups the shift estimate allows for
DEFAULT_METHOD = "pee"

RDH_METHODS: Registry["RDHMethod"] = Registry("RDH method")


@dataclass(frozen=True)
class PassRecord:
    """Parameters of one embedding pass, as stored in the image."""

    p1: int
    p2: int
    stop: int
    nbits: int

    def to_bytes(self) -> bytes:
        return struct.pack(">HHII", self.p1, self.p2, self.stop, self.nbits)

    def to_bits(self) -> np.ndarray:
        return bytes_to_bits(self.to_bytes())

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> "PassRecord":
        return cls(*struct.unpack(">HHII", bits_to_bytes(bits)))


# ----------------------------------------------------------------------------------------------
# image checks and reserved pixels
# ----------------------------------------------------------------------------------------------


def check_image(image: np.ndarray, name: str = "image") -> int:
    """Validate a 2-D uint8/uint16 image and return its ceiling value (255 or 65535)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{name} must be uint8 or uint16, got dtype {image.dtype}")
    if image.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {image.shape}")
    h, w = image.shape
    if min(h, w) < MIN_SIDE or border_length((h, w)) < SIDE_BITS:
        raise ValueError(
            f"{name} of shape {image.shape} is too small: both sides must be >= {MIN_SIDE} "
            f"and the border must hold {SIDE_BITS} pixels (2*(H+W)-4 >= {SIDE_BITS}, e.g. 35x35)"
        )
    return 255 if image.dtype == np.uint8 else 65535


def value_ceiling(image: np.ndarray, ceiling: Optional[int] = None, name: str = "image") -> int:
    """Largest pixel value the marked image may hold: the dtype's, or ``2**b - 1`` for data of
    ``b`` significant bits in a wider container (DICOM BitsStored). Checks ``image`` stays under it."""
    top = check_image(image, name)
    if ceiling is None:
        return top
    ceiling = int(ceiling)
    if ceiling < 255 or ceiling > top or ceiling & (ceiling + 1):
        raise ValueError(f"ceiling must be 2**b - 1 with 8 <= b <= {top.bit_length()} bits, got {ceiling}")
    if image.size and int(image.max()) > ceiling:
        raise ValueError(f"{name} holds the value {int(image.max())}, above its ceiling {ceiling}")
    return ceiling


def reserved_indices(shape: tuple[int, int], count: int = SIDE_BITS) -> np.ndarray:
    """Flat indices of the first ``count`` pixels of the border sequence (row 0, row H-1,
    column 0, column W-1): the reserved pixels, in storage order."""
    h, w = shape
    rows = np.arange(w)
    seq = np.concatenate(
        [rows, (h - 1) * w + rows, np.arange(1, h - 1) * w, np.arange(1, h - 1) * w + (w - 1)]
    )
    return seq[:count].astype(np.int64)


def border_length(shape: tuple[int, int]) -> int:
    return 2 * (shape[0] + shape[1]) - 4


class _Layout(NamedTuple):
    """Where one image's side information goes: the kernels' ``reserved`` mask (reserved border
    pixels, plus the frozen blocks), the reserved pixels in storage order, and the bits stored
    after the side information (frozen-region header + block map; empty without one)."""

    reserved: np.ndarray
    res_idx: np.ndarray
    extra: np.ndarray
    frozen: Optional[np.ndarray] = None  # (H, W) bool: the frozen blocks' pixels (None: no region)
    open_reserved: Optional[np.ndarray] = None  # the first group's mask when it may use the region (reserved run only)
    band: Optional[np.ndarray] = None  # (H, W) bool: the band's pixels, open to the first group only (None: no band)
    later_reserved: Optional[np.ndarray] = None  # the mask of the passes after the first group when there is a band

    def reserved_for(self, k: int, group: int) -> np.ndarray:
        """The ``reserved`` mask of pass ``k``."""
        if k < group:
            return self.open_reserved if self.open_reserved is not None else self.reserved
        return self.later_reserved if self.later_reserved is not None else self.reserved


def _layout(shape: tuple[int, int], frozen: Optional[np.ndarray], open_first: bool = False, band: int = 0) -> _Layout:
    """The layout for ``frozen`` (None or all False: the plain border layout; ``open_first``: the
    first group of passes may use the region; ``band``: blocks around it open to the first group
    only). Blocks double in side until the map fits in the border; ``CapacityError`` if it never does."""
    if frozen is not None and (frozen.shape != tuple(shape) or frozen.dtype != np.bool_):
        raise ValueError(f"frozen must be a bool mask of the image's shape {tuple(shape)}, got {frozen.shape} {frozen.dtype}")
    if not 0 <= band <= MAX_BAND:
        raise ValueError(f"band must be 0..{MAX_BAND} blocks, got {band}")
    if frozen is None or not frozen.any():
        return _Layout(*_reserved(shape), np.empty(0, np.uint8))
    block = regionmap.block_size(shape)
    while True:
        blocks = regionmap.blocks_touching(frozen, block)
        code = regionmap.encode_blocks(blocks)
        count = SIDE_BITS + 2 * regionmap.LENGTH_BITS + code.size
        if count <= border_length(shape) and code.size < 1 << regionmap.LENGTH_BITS:
            break
        if block >= max(shape) or 2 * block >= 1 << BLOCK_BITS:
            raise CapacityError(f"the frozen region's block map ({code.size} bits) does not fit in the image border", count, 0)
        block *= 2
    head = struct.pack(">HH", band << BLOCK_BITS | block, code.size)
    return _layout_from(shape, blocks, block, np.concatenate([bytes_to_bits(head), code]), open_first, band)


def _frozen_anywhere(reserved: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether ``reserved`` holds more than the plain border run (a frozen region), so that PEE
    must test candidates in every row. Only a speed hint: the per-pixel test is right for any mask."""
    return reserved is not _reserved_mask(shape)


def _layout_from(shape: tuple[int, int], blocks: np.ndarray, block: int, extra: np.ndarray, open_first: bool = False,
                 band: int = 0) -> _Layout:
    res_idx = reserved_indices(shape, SIDE_BITS + extra.size)
    frozen = regionmap.pixel_mask(blocks, block, shape)
    reserved = frozen.ravel().astype(np.uint8)
    reserved[res_idx] = 1
    open_reserved = None
    if open_first:
        open_reserved = np.zeros(reserved.size, np.uint8)
        open_reserved[res_idx] = 1
    band_pixels = later = None
    if band:
        band_pixels = regionmap.pixel_mask(regionmap.dilate(blocks, band) & ~blocks, block, shape)
        later = reserved | band_pixels.ravel().astype(np.uint8)
    return _Layout(reserved, res_idx, extra, frozen, open_reserved, band_pixels, later)


@lru_cache(maxsize=16)
def _reserved(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read-only (flat mask, indices) of the reserved pixels, cached per shape."""
    idx = reserved_indices(shape)
    idx.flags.writeable = False
    return _reserved_mask(shape), idx


@lru_cache(maxsize=16)
def _reserved_mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    mask[reserved_indices(shape)] = 1
    mask.flags.writeable = False  # shared between calls
    return mask


_tls = threading.local()


def _workspace(n: int, hist_shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Per-thread scratch reused across calls: ``idx``, ``pred``, ``key``, ``bnd`` (length >= n),
    ``hist``, ``used`` (rows of ``hist`` that may be non-zero) and ``fast`` (zero between calls).

    Fresh ~1 MB temporaries on every call make glibc trim and re-fault the heap, which tripled
    the cost of a pass on a 224x224 image; one grown-on-demand set per thread avoids that.
    """
    ws = getattr(_tls, "ws", None)
    if ws is None or ws[0].size < n or ws[4].shape != hist_shape:
        hist = np.zeros(hist_shape, np.int64)
        fast = np.zeros(hist_shape[0] * jit.FAST_COLS, np.int32)
        ws = (np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int16), np.empty(n, np.int32), hist, np.array([hist_shape[0]]), fast)
        _tls.ws = ws
    return ws


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------


class RDHMethod:
    """One RDH algorithm, as a sequence of passes. Subclasses differ only in the pass kernels."""

    name: str = ""
    id: int = 0
    group: int = 1  # passes that share a payload evenly (PEE: the two rhombus sets)

    def begin(self, work: np.ndarray, reserved: np.ndarray, shape: tuple[int, int], k: int, maxv: int):
        """Per-pass state for pass ``k`` of the current image."""
        raise NotImplementedError

    def capacity(self, state, exclude: frozenset = frozenset()) -> int:
        """Largest content (bits) this pass can carry (without the ``exclude``d choices)."""
        raise NotImplementedError

    def try_embed(self, state, content: np.ndarray, exclude: frozenset = frozenset()) -> Optional[PassRecord]:
        """Embed ``content`` in this pass, or return None (image untouched) if it does not fit.
        ``exclude``: :meth:`choice` values of earlier tries this pass may not make again."""
        raise NotImplementedError

    def choice(self, rec: PassRecord):
        """What the embedder chose for a pass that another try could choose differently (PEE: its
        bin pair); None: nothing else to try (HS moves a pixel by one step at most anyway)."""
        return None

    def finish_early(self, state, final_bits: int, share_bits: int, left_in_group: int) -> bool:
        """Whether ending the group in this pass (``final_bits``) distorts less than sharing."""
        return False

    def extract(
        self, work: np.ndarray, reserved: np.ndarray, shape: tuple[int, int], k: int, maxv: int, rec: PassRecord
    ) -> np.ndarray:
        """Undo the pass in place; returns its content bits or raises ``PayloadError``."""
        raise NotImplementedError


@register(RDH_METHODS)
class HistogramShift(RDHMethod):
    """Histogram shifting, multi-layer (Ni et al. 2006; the paper's eq. 16-18).

    Each pass picks the peak bin ``a`` and the zero bin ``z`` that shifts the fewest pixels;
    pixels strictly between move one step towards ``z`` and pixels at ``a`` carry one bit each.
    When no empty bin exists the pixels that end on ``z`` carry a location map in the payload.
    """

    name = "hs"
    id = 1
    group = 1

    def begin(self, work, reserved, shape, k, maxv):
        hist = jit.hs_histogram(work, reserved, maxv + 1)
        a, z, has_lm, _ = jit.hs_choose(hist)
        a, z = int(a), int(z)
        lm = jit.hs_map(work, reserved, a, z) if (z >= 0 and has_lm) else np.empty(0, np.uint8)
        cap = int(hist[a]) - lm.size if z >= 0 else 0
        return work, reserved, a, z, lm, max(cap, 0)

    def capacity(self, state, exclude=frozenset()):
        return state[-1]

    def try_embed(self, state, content, exclude=frozenset()):
        work, reserved, a, z, lm, cap = state
        if z < 0 or content.size > cap:
            return None
        stream = np.concatenate([lm, content])
        jit.hs_embed(work, reserved, a, z, stream)
        # stop field: 1 when a location map leads the stream; nbits: whole stream length
        return PassRecord(a, z, int(lm.size > 0), int(stream.size))

    def extract(self, work, reserved, shape, k, maxv, rec):
        a, z, has_lm = rec.p1, rec.p2, rec.stop
        if not (0 <= a <= maxv and 0 <= z <= maxv and a != z and has_lm in (0, 1) and rec.nbits <= work.size):
            raise PayloadError(f"HS pass {k}: invalid parameters a={a} z={z}")
        bits, ok = jit.hs_extract(work, reserved, a, z, has_lm, rec.nbits)
        if not ok:
            raise PayloadError(f"HS pass {k}: marked pixels are inconsistent with the side information")
        return bits


class _PEEPass(NamedTuple):
    """One PEE pass of the current image: its candidates (``idx``, ``pred``, ``key``: first ``n``;
    boundary ones: ``bnd``, first ``nb``), their per-bucket statistics (``hist``, rows below
    ``used``), and the plans already computed from them, by payload size."""

    work: np.ndarray
    idx: np.ndarray
    pred: np.ndarray
    key: np.ndarray
    n: int
    hist: np.ndarray
    maxv: int
    used: int
    bnd: np.ndarray
    nb: int
    plans: dict


@register(RDH_METHODS)
class RhombusPEE(RDHMethod):
    """Prediction-error expansion with rhombus prediction and sorting (Sachnev et al. 2009).

    Pass ``k`` works on the rhombus set ``k % 2`` (cross, then dot). The payload goes into the
    smoothest candidates and stops there: the smallest prefix in (complexity, raster) order,
    stored as the bucket ``T`` where it ends and the count ``m`` of bucket-``T`` pixels used.
    The bin pair ``(a, a+1)`` with the least expected distortion for the needed bits is chosen
    per pass. Pixels at 0 or the ceiling that could overflow are moved one step in first; a
    location map of them travels at the head of the same pass.
    """

    name = "pee"
    id = 2
    group = 2
    A_MIN, N_PAIRS = -3, 6  # bin pairs (a, a+1) for a in -3..2

    def begin(self, work, reserved, shape, k, maxv):
        h, w = shape
        idx, pred, key, bnd, hist, used, fast = _workspace(((h - 2) * (w - 2)) // 2 + 1, (jit.N_KEYS, 4 * self.N_PAIRS + 4))
        n, nb = jit.pee_analyze(
            work, reserved, h, w, k % 2, self._key_shift(maxv), maxv, self.A_MIN, self.N_PAIRS, idx, pred, key, hist, used, fast, bnd,
            _frozen_anywhere(reserved, shape),
        )
        return _PEEPass(work, idx, pred, key, n, hist, maxv, int(used[0]), bnd, nb, {})

    @staticmethod
    def _key_shift(maxv: int) -> int:
        return max(0, int(maxv).bit_length() - 8)  # complexity buckets span the pixel range

    def _plan(self, state, need):
        plans = state.plans  # finish_early's plans are asked again by try_embed
        if need not in plans:
            plans[need] = jit.pee_plan(state.hist, self.N_PAIRS, need, state.used)
        return plans[need]

    def _allowed(self, exclude) -> np.ndarray:
        """(N_PAIRS,) bool: the bin pairs whose lower bin is not in ``exclude``."""
        return ~np.isin(self.A_MIN + np.arange(self.N_PAIRS), list(exclude))

    def capacity(self, state, exclude=frozenset()):
        return int(self._plan(state, np.int64(1) << 62)[0][self._allowed(exclude)].max(initial=0))

    def finish_early(self, state, final_bits, share_bits, left_in_group):
        # expected distortion of one pass holding everything vs. the even share in each pass
        _, t1, _, c1, _ = self._plan(state, final_bits)
        _, t2, _, c2, _ = self._plan(state, share_bits)
        if not (t1 >= 0).any():
            return False
        if not (t2 >= 0).any():
            return True
        return int(c1[t1 >= 0].min()) <= left_in_group * int(c2[t2 >= 0].min())

    def choice(self, rec):
        return rec.p2 - 32768  # the lower bin of the pair

    def try_embed(self, state, content, exclude=frozenset()):
        need = int(content.size)
        _, T, base, cost, maps = self._plan(state, need)
        fits = np.flatnonzero((T >= 0) & self._allowed(exclude))
        if fits.size == 0:
            return None
        q = int(fits[np.argmin(cost[fits])])
        a = self.A_MIN + q
        cands = (state.work, state.idx, state.pred, state.key, state.n, state.maxv, a, T[q])
        m = jit.pee_prefix_end(*cands, base[q], need)
        jit.pee_embed(*cands, m, content, maps[q] > 0, state.bnd, state.nb)
        return PassRecord(int(T[q]), a + 32768, int(m), need)

    def extract(self, work, reserved, shape, k, maxv, rec):
        a, T, m = rec.p2 - 32768, rec.p1, rec.stop
        h, w = shape
        if not (-maxv <= a <= maxv and T < jit.N_KEYS and m <= work.size and rec.nbits <= work.size):
            raise PayloadError(f"PEE pass {k}: invalid parameters a={a} T={T} m={m} nbits={rec.nbits}")
        bits, ok = jit.pee_extract(work, reserved, h, w, k % 2, self._key_shift(maxv), maxv, a, T, m, rec.nbits,
                                   _frozen_anywhere(reserved, shape))
        if not ok:
            raise PayloadError(f"PEE pass {k}: marked pixels are inconsistent with the side information")
        return bits


def _method(method: Optional[str]) -> RDHMethod:
    return RDH_METHODS.get(DEFAULT_METHOD if method is None else method)


# ----------------------------------------------------------------------------------------------
# side information in the reserved LSBs
# ----------------------------------------------------------------------------------------------


def _side_crc(body: bytes, extra: np.ndarray) -> int:
    """CRC-16 of the side information and what follows it (the frozen-region map, if any)."""
    return binascii.crc_hqx(body + (np.packbits(extra).tobytes() if extra.size else b""), 0xFFFF)


def _side_bits(method_id: int, shift: int, npasses: int, rec: PassRecord, layout: _Layout) -> np.ndarray:
    """Side information + the layout's extra bits: the LSBs of the reserved pixels, in their order."""
    extra = layout.extra
    flag = (FROZEN_FLAG | (OPEN_FLAG if layout.open_reserved is not None else 0)) if extra.size else 0
    body = struct.pack(">BBB", SIGNATURE, flag | (method_id << 4) | shift, npasses) + rec.to_bytes()
    return np.concatenate([bytes_to_bits(body + struct.pack(">H", _side_crc(body, extra))), extra])


def _read_layout(full: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, PassRecord, _Layout]:
    """Side information and layout from the reserved LSBs of a marked image (flat ``full``)."""
    not_protected = NotProtectedError("no medrae RDH side information in this image")
    lsbs = lambda run: (full[run] & 1).astype(np.uint8)  # noqa: E731
    raw = bits_to_bytes(lsbs(_reserved(shape)[1]))
    body, (crc,) = raw[:-2], struct.unpack(">H", raw[-2:])
    if body[0] != SIGNATURE:
        raise not_protected
    extra = np.empty(0, np.uint8)
    if body[1] & FROZEN_FLAG:
        run = reserved_indices(shape, border_length(shape))
        n = SIDE_BITS + 2 * regionmap.LENGTH_BITS
        if n > run.size:
            raise not_protected
        field, size = struct.unpack(">HH", bits_to_bytes(lsbs(run[SIDE_BITS:n])))
        block, band = field & ((1 << BLOCK_BITS) - 1), field >> BLOCK_BITS
        if block < 1 or n + size > run.size:
            raise NotProtectedError("no medrae RDH side information in this image (bad frozen-region header)")
        extra = lsbs(run[SIDE_BITS : n + size])
    if _side_crc(body, extra) != crc:
        raise not_protected
    method_id, shift, npasses = (body[1] & 0x30) >> 4, body[1] & 0xF, body[2]
    open_first = bool(body[1] & OPEN_FLAG)
    if not RDH_METHODS.has_id(method_id) or npasses < 1 or shift > MAX_SHIFT or (open_first and not extra.size):
        raise NotProtectedError(f"unknown RDH method id {method_id}, shift {shift}, pass count {npasses} or flags")
    layout = _Layout(*_reserved(shape), extra)
    if extra.size:
        try:
            blocks = regionmap.decode_blocks(extra[2 * regionmap.LENGTH_BITS :], regionmap.grid_of(shape, block))
        except ValueError:
            raise not_protected from None
        layout = _layout_from(shape, blocks, block, extra, open_first, band)
    return method_id, shift, npasses, PassRecord.from_bits(bytes_to_bits(body[3:])), layout


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def _shifts(image: np.ndarray, maxv: int, bits: int, method: RDHMethod, reserved: np.ndarray) -> list[int]:
    """Bit shifts to try, smallest first: 0 for 8-bit; for 16-bit from the smallest whose
    first pass, repeated over ``SHIFT_GROUPS`` groups, is estimated to hold ``bits`` (a few
    passes at a small shift change pixels less than one pass at a larger one)."""
    if maxv == 255:
        return [0]
    work = image.astype(np.int32).ravel()
    for s in range(MAX_SHIFT + 1):
        hi = work >> s
        state = method.begin(hi, reserved, image.shape, 0, maxv >> s)
        if method.capacity(state) * method.group * SHIFT_GROUPS >= bits or s == MAX_SHIFT:
            return list(range(s, MAX_SHIFT + 1))
    return [MAX_SHIFT]


def _run_embed(image: np.ndarray, data: np.ndarray, method: RDHMethod, ceiling: Optional[int] = None,
               frozen: Optional[np.ndarray] = None, open_first: bool = False, band: int = 0) -> tuple[np.ndarray, int]:
    """Embed the bit array ``data``; returns ``(marked, passes)`` or raises ``CapacityError``."""
    maxv = value_ceiling(image, ceiling)
    layout = _layout(image.shape, frozen, open_first, band)
    # the first group keeps the caller's own pixels to one step: not the whole blocks nor the band (a pixel at
    # black or white there is no lung a segmenter missed, and holding the blocks too refit 42 instead of 17
    # of cxr3/test's 270 without the pattern; the band too: 105 instead of 25 lost the band)
    watch = np.flatnonzero(frozen) if layout.open_reserved is not None else None
    error: Optional[CapacityError] = None
    for s in _shifts(image, maxv, data.size + layout.res_idx.size, method, layout.reserved_for(0, method.group)):
        try:
            return _embed_at_shift(image, data, method, s, maxv, layout, watch)
        except CapacityError as exc:
            error = exc
    assert error is not None
    raise error


def _try_one_step(method: RDHMethod, state, content: np.ndarray, work: np.ndarray, watch: Optional[np.ndarray],
                  excluded: set) -> Optional[PassRecord]:
    """``method.try_embed``; where ``watch`` (flat indices: the region a first-group pass may use)
    is given, a try that moves a watched pixel by more than one step (PEE: a pixel at 0 or the
    ceiling, moved in first, then expanded outwards) is undone and the pass tried again with another
    choice (bin pair), so that the region moves by one step at most; None if none is left. The choices
    found to do so are added to ``excluded`` (the pass's: its capacity is then asked without them)."""
    if watch is None:
        return method.try_embed(state, content)
    saved = work.copy()
    while True:
        rec = method.try_embed(state, content, frozenset(excluded))
        if rec is None or np.abs(work[watch] - saved[watch]).max(initial=0) <= 1:
            return rec
        work[:] = saved
        if method.choice(rec) is None:
            return None
        excluded.add(method.choice(rec))


def _embed_at_shift(image: np.ndarray, data: np.ndarray, method: RDHMethod, s: int, maxv: int, layout: _Layout,
                    watched: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
    """One try at bit shift ``s``; ``watched``: flat indices the first group moves by one step at most."""
    shape = image.shape
    full = image.astype(np.int32).ravel()  # a copy: the input is never written
    work = full >> s if s else full
    maxv >>= s
    res_idx = layout.res_idx
    lsbs = (full[res_idx] & 1).astype(np.uint8)
    total = data.size
    pos = 0
    head = np.empty(0, np.uint8)  # record of the previous pass
    for k in range(MAX_PASSES):
        state = method.begin(work, layout.reserved_for(k, method.group), shape, k, maxv)
        watch = watched if k < method.group else None  # later passes keep out of the region
        excluded: set = set()
        left_in_group = method.group - (k % method.group)
        final_bits = res_idx.size + head.size + (total - pos)
        # an even share of what is left over the rest of the group (each later pass adds a record)
        share_bits = -(-(final_bits + RECORD_BITS * (left_in_group - 1)) // left_in_group)
        if left_in_group == 1 or method.finish_early(state, final_bits, share_bits, left_in_group):
            rec = _try_one_step(method, state, np.concatenate([lsbs, head, data[pos:]]), work, watch, excluded)
            if rec is not None:
                if s:
                    work = (work << s) | (full & ((1 << s) - 1))
                work[res_idx] = (work[res_idx] & ~1) | _side_bits(method.id, s, k + 1, rec, layout)
                return work.reshape(shape).astype(image.dtype), k + 1
        target = method.capacity(state, frozenset(excluded)) if left_in_group == 1 else share_bits  # without what the early try excluded
        rec = None
        tried = set()
        while target not in tried:  # the even share, then the pass filled (again for each choice the region excludes)
            tried.add(target)
            chunk = max(0, min(total - pos, target - head.size))
            if chunk == 0 and left_in_group == 1:
                break  # a further pass could only carry its own header
            rec = _try_one_step(method, state, np.concatenate([head, data[pos : pos + chunk]]), work, watch, excluded)
            if rec is not None:
                break
            target = method.capacity(state, frozenset(excluded))  # the even share did not fit: fill this pass
        if rec is None:
            raise CapacityError(
                f"payload of {total} bits does not fit with RDH method {method.name!r} "
                f"({pos} bits placed after {k} passes)",
                total,
                pos,
            )
        head = rec.to_bits()
        pos += chunk
    raise CapacityError(f"payload needs more than {MAX_PASSES} passes", total, pos)


def embed(image: np.ndarray, payload: bytes, method: Optional[str] = None, ceiling: Optional[int] = None,
          frozen: Optional[np.ndarray] = None, open_first: bool = False, band: int = 0) -> np.ndarray:
    """Hide ``payload`` in ``image`` reversibly.

    Parameters
    ----------
    image : np.ndarray
        2-D ``uint8`` or ``uint16`` grayscale image (never modified).
    payload : bytes
        Data to hide.
    method : str, optional
        ``"pee"`` (default: rhombus prediction-error expansion) or ``"hs"`` (histogram shift).
    ceiling : int, optional
        Largest value a marked pixel may take, ``2**b - 1`` (default: the dtype's maximum). For
        ``b``-bit data in 16-bit words (DICOM BitsStored); :func:`extract` needs the same value.
    frozen : np.ndarray, optional
        ``bool`` mask of the image's shape: pixels the hiding must leave bit-exact (protect
        passes the lungs). Whole blocks that touch it are left alone (their map is stored in the
        border, so :func:`extract` needs nothing); only reserved border pixels' LSBs may change.
    open_first : bool
        With ``frozen``: the first group of passes (PEE: both rhombus sets; HS: one pass) may use
        the region too, changing each pixel of ``frozen`` by at most one level (of ``x >> s`` for
        16-bit; at black or white too: a PEE pass that would move one there by two is made again with
        another bin pair); later passes keep out of it. More capacity at a bounded cost to the region.
    band : int
        With ``frozen``: the blocks within ``band`` blocks of the region (0..``MAX_BAND``) are open
        to the first group of passes only, so they too move by at most one level (a margin for a
        region drawn too tight, e.g. lungs the segmenter partly missed). Derived from the stored
        block map: it costs capacity, not bits.

    Returns
    -------
    np.ndarray
        Marked image, same shape and dtype.

    Raises
    ------
    CapacityError
        The payload does not fit; nothing is returned or written.
    """
    return embed_counted(image, payload, method, ceiling, frozen, open_first, band)[0]


def embed_counted(image: np.ndarray, payload: bytes, method: Optional[str] = None, ceiling: Optional[int] = None,
                  frozen: Optional[np.ndarray] = None, open_first: bool = False, band: int = 0) -> tuple[np.ndarray, int]:
    """:func:`embed`, also returning how many passes it took."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return _run_embed(image, bytes_to_bits(bytes(payload)), _method(method), ceiling, frozen, open_first, band)


def extract(marked: np.ndarray, ceiling: Optional[int] = None) -> tuple[np.ndarray, bytes]:
    """Recover ``(image, payload)`` from a marked image, bit for bit.

    Raises
    ------
    NotProtectedError
        The image carries no readable RDH side information.
    PayloadError
        The side information is readable but the marked pixels do not decode consistently.
    """
    image, payload, _ = extract_with_method(marked, ceiling=ceiling)
    return image, payload


def extract_with_method(marked: np.ndarray, impl: Optional[RDHMethod] = None, ceiling: Optional[int] = None) -> tuple[np.ndarray, bytes, str]:
    """:func:`extract`, also returning the name of the RDH method found in the image.

    ``impl`` replaces the registered implementation of that method (the NumPy reference);
    ``ceiling`` is the one given to :func:`embed`.
    """
    try:
        maxv = value_ceiling(marked, ceiling, "marked")
    except ValueError as exc:
        if "above its ceiling" in str(exc):
            raise NotProtectedError(str(exc)) from None
        raise
    shape = marked.shape
    full = marked.astype(np.int32).ravel()
    method_id, s, npasses, rec, layout = _read_layout(full, shape)
    res_idx = layout.res_idx
    if s and maxv == 255:
        raise NotProtectedError("side information names a bit shift for an 8-bit image")
    method = RDH_METHODS.by_id(method_id)
    if impl is not None:
        if impl.id != method_id:
            raise ValueError(f"impl is for method id {impl.id}, image uses {method_id}")
        method = impl
    work = full >> s if s else full
    maxv >>= s
    chunks = []
    lsbs = None
    for k in range(npasses - 1, -1, -1):
        bits = method.extract(work, layout.reserved_for(k, method.group), shape, k, maxv, rec)
        if k == npasses - 1:
            if bits.size < res_idx.size:
                raise PayloadError("last pass is too short to hold the reserved pixels' LSBs")
            lsbs, bits = bits[: res_idx.size], bits[res_idx.size :]
        if k > 0:
            if bits.size < RECORD_BITS:
                raise PayloadError(f"pass {k} is too short to hold the previous pass's record")
            rec, bits = PassRecord.from_bits(bits[:RECORD_BITS]), bits[RECORD_BITS:]
        chunks.append(bits)
    data = np.concatenate(chunks[::-1]) if chunks else np.empty(0, np.uint8)
    if data.size % 8:
        raise PayloadError(f"extracted {data.size} bits, not a whole number of bytes")
    if s:
        work = (work << s) | (full & ((1 << s) - 1))
    work[res_idx] = (work[res_idx] & ~1) | lsbs
    return work.reshape(shape).astype(marked.dtype), bits_to_bytes(data), method.name


def _side_information(marked: np.ndarray) -> tuple[int, int, int, PassRecord, _Layout]:
    """:func:`_read_layout` of a marked image, after checking it (no key, no extraction)."""
    check_image(marked, "marked")
    return _read_layout(marked.astype(np.int32).ravel(), marked.shape)


def frozen_region(marked: np.ndarray) -> Optional[np.ndarray]:
    """The pixels the hiding kept out of (``embed(frozen=...)``: every block touching the mask
    given then, e.g. the lungs; on the image border only the reserved pixels' LSBs may differ;
    with ``open_first`` the first group of passes moved them by at most one step,
    :func:`hiding_bounds`), as a ``bool`` mask of the image's shape; None when the payload may
    have used the whole image. :func:`band_region`: the band around it.
    Reads only the side information (no key, no extraction).

    Raises
    ------
    NotProtectedError
        The image carries no readable RDH side information.
    """
    return _side_information(marked)[-1].frozen


def band_region(marked: np.ndarray) -> Optional[np.ndarray]:
    """The band around the frozen region (``embed(band=...)``), pixels only the first group of
    passes could use, so moved by one step at most; as :func:`frozen_region` (None: no band)."""
    return _side_information(marked)[-1].band


def hiding_bounds(marked: np.ndarray) -> dict:
    """What the side information promises about the hiding's changes, without a key: the share of
    pixels in the frozen region (0.0: none) and in its band, and the largest change the hiding made
    inside that region, in its band and anywhere, in native pixel units (each group of passes moves
    a pixel by at most one step of ``x >> s``, i.e. ``2**s`` units). Inside the region: 0 when it
    was frozen for every pass, one step when the first group could use it; ``None`` when there is
    no region. In the band: one step (``None``: no band). One step holds for every pixel of the mask
    given to :func:`embed`; a pixel at 0 or the ceiling elsewhere in its blocks or in the band may
    move by two (PEE moves it one step in first).

    Raises
    ------
    NotProtectedError
        The image carries no readable RDH side information.
    """
    method_id, s, npasses, _, layout = _side_information(marked)
    group = RDH_METHODS.by_id(method_id).group
    step = 1 << s
    inside = None
    if layout.frozen is not None:
        inside = step if layout.open_reserved is not None else 0
    most = step * -(-npasses // group)
    return {"frozen_fraction": float(layout.frozen.mean()) if layout.frozen is not None else 0.0,
            "band_fraction": float(layout.band.mean()) if layout.band is not None else 0.0,
            "region_max_change": inside, "band_max_change": min(step, most) if layout.band is not None else None,
            "max_change": most, "passes": npasses}


def capacity(image: np.ndarray, method: Optional[str] = None, ceiling: Optional[int] = None,
             frozen: Optional[np.ndarray] = None, open_first: bool = False, band: int = 0) -> int:
    """Payload bits that fit into ``image`` (a whole number of bytes).

    Computed by filling every pass to its capacity with pseudo-random (encrypted-like) bits, for
    16-bit images at the largest bit shift :func:`embed` would try. The capacity of passes after
    the first depends slightly on the bits themselves, so a payload at the very limit may still
    raise ``CapacityError`` in :func:`embed`; it never yields a wrong image.
    """
    maxv = value_ceiling(image, ceiling)
    m = _method(method)
    s = 0 if maxv == 255 else MAX_SHIFT
    work = image.astype(np.int32).ravel() >> s
    maxv >>= s
    layout = _layout(image.shape, frozen, open_first, band)
    side = layout.res_idx.size
    rng = np.random.default_rng(0)
    best = 0
    placed = 0
    for k in range(MAX_PASSES):
        state = m.begin(work, layout.reserved_for(k, m.group), image.shape, k, maxv)
        cap = m.capacity(state)
        head = RECORD_BITS if k > 0 else 0
        if cap < head:
            break
        # if this pass were the last one it would also carry the reserved LSBs
        best = max(best, placed + cap - head - side)
        if cap - head <= RECORD_BITS:
            break  # further passes cost more than they add
        m.try_embed(state, rng.integers(0, 2, cap, dtype=np.uint8))
        placed += cap - head
    return max(0, best) // 8 * 8
