"""Lossless codecs for the integer perturbation that protect applied.

Every encoded perturbation is self-describing (see docs/FORMAT.md, "Coded perturbation"):
``codec id (1 byte) | varint H | varint W | varint scale | body``; the body codes ``p / scale``
where ``scale`` is the gcd of the values (a 16-bit perturbation made on the 8-bit scale and
multiplied by 257 then costs what the 8-bit one does). Codecs are interchangeable parts in a
registry; ``auto`` (the default) tries the context coder on the full plane and on coarse grids
and keeps the smallest.
"""
from __future__ import annotations

import lzma
import zlib
from typing import NamedTuple, Optional

import numpy as np
from numba import njit

from . import _rangecoder as rc
from ._registry import Registry, register
from .errors import PayloadError
from .resample import MAX_FACTOR, MODES, downsample, grid_shape, upsample
from . import patterns

CODECS: Registry["Codec"] = Registry("perturbation codec")


class PatternHint(NamedTuple):
    """What protect tells the ``pattern`` codec: the shipped pattern it added (``kernels.patterns``),
    the class whose pattern it was, the cells (of the coarse grid) it covers, and the native units
    of one level (negative for an inverted image, e.g. 257 for a 16-bit image that fills its range)."""

    pattern_id: int
    cls: int
    cover: np.ndarray  # bool, the coarse grid's shape
    unit: int
    placement: patterns.Placement = patterns.IDENTITY  # secret (key-drawn) placement: coded by ``keyed_pattern``
    clip: int = 0  # the pattern's levels clipped to -clip..clip (0: as trained)
    gain: int = 1  # the pattern's levels multiplied by this before the clip

    @property
    def codec(self) -> str:
        """The codec that carries this hint: ``pattern`` as published, ``keyed_pattern`` placed, scaled or clipped."""
        return "pattern" if self.placement == patterns.IDENTITY and not self.clip and self.gain == 1 else "keyed_pattern"
DEFAULT_CODEC = "auto"
MAX_PIXELS = 1 << 28  # refuse to allocate planes larger than this from a header
VALUE_LIMIT = 32767  # int16


# ---------------------------------------------------------------------------------------------
# varints (LEB128)
# ---------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise PayloadError("truncated or malformed varint in coded perturbation")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


@njit(cache=True, nogil=True)
def _varints(values):
    """LEB128 of every (non-negative) value, concatenated."""
    out = np.empty(values.size * 10 + 1, dtype=np.uint8)
    n = 0
    for t in range(values.size):
        v = values[t]
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                out[n] = byte | 0x80
                n += 1
            else:
                out[n] = byte
                n += 1
                break
    return out[:n].copy()


@njit(cache=True, nogil=True)
def _read_varints(data, start, count):
    """``count`` LEB128 values from ``data[start:]``: (values, end, ok)."""
    vals = np.empty(count, dtype=np.int64)
    pos = start
    for t in range(count):
        v = 0
        shift = 0
        while True:
            if pos >= data.size or shift > 56:
                return vals, pos, False
            byte = np.int64(data[pos])
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        vals[t] = v
    return vals, pos, True


# ---------------------------------------------------------------------------------------------
# codec base and the public functions
# ---------------------------------------------------------------------------------------------


class Codec:
    """A lossless integer-plane codec. Subclasses differ only in ``encode_body``/``decode_body``."""

    name: str = ""
    id: int = 0

    def encode_body(self, p: np.ndarray, **hints) -> bytes:
        raise NotImplementedError

    def decode_body(self, body: bytes, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError


def _check_perturbation(p: np.ndarray) -> np.ndarray:
    if not isinstance(p, np.ndarray):
        raise TypeError(f"perturbation must be a numpy array, got {type(p).__name__}")
    if p.ndim != 2:
        raise ValueError(f"perturbation must be 2-D (H, W), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise TypeError(f"perturbation must be an integer array (int16), got dtype {p.dtype}")
    if p.size == 0:
        raise ValueError(f"perturbation must not be empty, got shape {p.shape}")
    q = p.astype(np.int64)
    if q.size and (q.min() < -VALUE_LIMIT or q.max() > VALUE_LIMIT):
        raise ValueError(f"perturbation values must fit int16, got range [{q.min()}, {q.max()}]")
    return q


def encode_perturbation(p: np.ndarray, codec: Optional[str] = None, **hints) -> bytes:
    """Losslessly encode an integer perturbation.

    Parameters
    ----------
    p : np.ndarray
        2-D integer array (int16 range), typically in ``[-eps, eps]`` and 0 inside the ROI.
    codec : str, optional
        One of ``kernels.CODECS.names()``; default ``"auto"`` keeps the smallest of the context
        coder on the full plane and on coarse grids.
    **hints
        ``grid``, ``factor``, ``mode`` for the ``grid`` codec: the coarse grid a generator
        emitted and how it was upsampled, so that only the grid and the sparse exceptions
        (ROI, clipping) are coded.

    Returns
    -------
    bytes
        Self-describing code: ``decode_perturbation`` needs nothing else.
    """
    q = _check_perturbation(p)
    c = CODECS.get(DEFAULT_CODEC if codec is None else codec)
    h, w = q.shape
    scale = max(1, int(np.gcd.reduce(np.abs(q), axis=None)))
    pat = hints.get("pattern")
    if pat is not None and hints.get("grid") is not None:  # the grid and the pattern's unit must divide too
        scale = max(1, int(np.gcd.reduce([scale, abs(int(pat.unit)), int(np.gcd.reduce(np.abs(np.asarray(hints["grid"], np.int64)), axis=None))])))
    if scale > 1:
        q = q // scale
        if "grid" in hints and hints["grid"] is not None:
            g = np.asarray(hints["grid"], dtype=np.int64)
            hints = dict(hints, grid=g // scale if not (g % scale).any() else None)
            if hints["grid"] is None:
                hints.pop("grid")
                hints.pop("factor", None)
        if pat is not None:
            hints = dict(hints, pattern=pat._replace(unit=pat.unit // scale))
    if hints.get("pattern") is not None and "grid" not in hints:
        hints = dict(hints, pattern=None)
    return bytes([c.id]) + _varint(h) + _varint(w) + _varint(scale) + c.encode_body(q, **hints)


def decode_perturbation(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_perturbation`: the int16 perturbation, or ``PayloadError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise PayloadError("empty coded perturbation")
    if not CODECS.has_id(data[0]):
        raise PayloadError(f"unknown perturbation codec id {data[0]}")
    c = CODECS.by_id(data[0])
    h, pos = _read_varint(data, 1)
    w, pos = _read_varint(data, pos)
    scale, pos = _read_varint(data, pos)
    if h < 1 or w < 1 or h * w > MAX_PIXELS:
        raise PayloadError(f"implausible perturbation shape {h}x{w}")
    if not 1 <= scale <= VALUE_LIMIT:
        raise PayloadError(f"implausible perturbation scale {scale}")
    out = c.decode_body(data[pos:], (h, w)) * scale
    if out.shape != (h, w):
        raise PayloadError(f"{c.name}: decoded shape {out.shape} != header shape {(h, w)}")
    if out.size and np.abs(out).max() > VALUE_LIMIT:
        raise PayloadError(f"{c.name}: decoded perturbation leaves the int16 range")
    return out.astype(np.int16)


def codec_name(data: bytes) -> str:
    """Name of the codec that produced ``data`` (``auto:<inner>`` for auto), for reports."""
    if not data or not CODECS.has_id(data[0]):
        raise PayloadError("unknown perturbation codec")
    name = CODECS.by_id(data[0]).name
    if name == "auto":
        _, pos = _read_varint(data, 1)
        _, pos = _read_varint(data, pos)
        _, pos = _read_varint(data, pos)
        if pos < len(data) and CODECS.has_id(data[pos]):
            name += ":" + CODECS.by_id(data[pos]).name
    return name


# ---------------------------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------------------------


def _ac_encode(planes: list[np.ndarray]) -> bytes:
    st = rc.enc_init()
    out = np.empty(1024, dtype=np.uint8)
    for plane in planes:
        out = rc.encode_plane(np.ascontiguousarray(plane, dtype=np.int64), st, out, rc.new_models())
    return rc.enc_finish(st, out).tobytes()


def _ac_decode(body: bytes, shapes: list[tuple[int, int]], name: str) -> list[np.ndarray]:
    data = np.frombuffer(body, dtype=np.uint8)
    st = rc.dec_init(data, 0)
    planes = []
    for shape in shapes:
        vals = np.zeros(shape, dtype=np.int64)
        if not rc.decode_plane(vals, st, data, rc.new_models()):
            raise PayloadError(f"{name}: malformed range-coded stream")
        if np.abs(vals).max(initial=0) > 2 * VALUE_LIMIT:  # a grid residual spans twice int16
            raise PayloadError(f"{name}: decoded value out of range")
        planes.append(vals)
    if st[2] > data.size + 8:
        raise PayloadError(f"{name}: stream shorter than its planes")
    return planes


@register(CODECS)
class ContextArithmetic(Codec):
    """Context-adaptive binary range coder on the full-resolution plane (contexts: W, N, NW, NE)."""

    name = "ac"
    id = 1

    def encode_body(self, p, **hints):
        return _ac_encode([p])

    def decode_body(self, body, shape):
        return _ac_decode(body, [shape], self.name)[0]


@register(CODECS)
class CoarseGrid(Codec):
    """Coarse grid, upsampled with the integer rule of ``kernels.resample``, plus a sparse residual.

    Body: ``factor (1 byte) | mode (1 byte) | range-coded grid then residual``. The residual
    ``p - upsample(grid)`` is zero except where the ROI mask or clipping changed the applied value,
    so it costs little. Without a ``grid`` hint the grid is the rounded block mean of ``p``; without
    a ``factor`` hint the best of 2, 4 and 8 is kept.
    """

    name = "grid"
    id = 2
    FACTORS = (2, 4, 8)

    def encode_body(self, p, grid=None, factor=None, mode="nearest", **hints):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if grid is not None and factor is None:
            raise ValueError("a grid hint needs its factor")
        best = None
        for f in (factor,) if factor is not None else self.FACTORS:
            g = downsample(p, f) if grid is None else np.asarray(grid, dtype=np.int64)
            gh, gw = grid_shape(p.shape, f)
            if g.shape != (gh, gw):
                raise ValueError(f"grid shape {g.shape} != {(gh, gw)} for {p.shape} at factor {f}")
            residual = p - upsample(g, f, p.shape, mode)
            body = bytes([f, MODES.index(mode)]) + _ac_encode([g, residual])
            if best is None or len(body) < len(best):
                best = body
        return best

    def decode_body(self, body, shape):
        if len(body) < 2 or not 1 <= body[0] <= MAX_FACTOR or body[1] >= len(MODES):
            raise PayloadError("grid: bad factor or mode")
        f, mode = body[0], MODES[body[1]]
        gshape = grid_shape(shape, f)
        g, residual = _ac_decode(body[2:], [gshape, shape], self.name)
        return upsample(g, f, shape, mode) + residual


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


@register(CODECS)
class Pattern(Codec):
    """A shipped transfer pattern (``kernels.patterns``) on the cells it covers, plus what protect
    changed beyond it: the coarse grid is ``unit * pattern[cls] * cover + residual grid``.

    Body: ``pattern id u8 | class u8 | factor u8 | varint zigzag(unit)`` then, range-coded, the
    ``cover`` plane (0/1), the grid residual and the pixel residual ``p - upsample(grid)`` (ROI
    edges, clipping). The pattern itself is not coded: a dense pattern costs what its cover's outline
    and the refinement's sparse changes cost.
    """

    name = "pattern"
    id = 7

    def _head(self, pattern: PatternHint) -> bytes:
        return b""

    def _read_head(self, body: bytes, pos: int) -> tuple[patterns.Placement, int, int, int]:
        return patterns.IDENTITY, 0, 1, pos

    def encode_body(self, p, grid=None, factor=None, pattern=None, **hints):
        if grid is None or factor is None or pattern is None:
            raise ValueError(f"the {self.name} codec needs the grid, factor and pattern hints")
        g = np.asarray(grid, dtype=np.int64)
        if g.shape != grid_shape(p.shape, factor):
            raise ValueError(f"grid shape {g.shape} != {grid_shape(p.shape, factor)} for {p.shape} at factor {factor}")
        cover = np.asarray(pattern.cover, dtype=bool)
        if cover.shape != g.shape:
            raise ValueError(f"pattern cover shape {cover.shape} != grid shape {g.shape}")
        if self.name == "pattern" and pattern.codec != "pattern":
            raise ValueError("the pattern codec carries a pattern as published: a placed, scaled or clipped one needs keyed_pattern")
        base = patterns.on_grid(pattern.pattern_id, pattern.cls, g.shape, pattern.placement, pattern.clip, pattern.gain) * pattern.unit * cover
        head = bytes([pattern.pattern_id, pattern.cls, factor]) + self._head(pattern) + _varint(_zigzag(int(pattern.unit)))
        return head + _ac_encode([cover.astype(np.int64), g - base, p - upsample(g, factor, p.shape)])

    def decode_body(self, body, shape):
        if len(body) < 4 or not 1 <= body[2] <= MAX_FACTOR:
            raise PayloadError(f"{self.name}: bad header")
        pid, cls, f = body[0], body[1], body[2]
        placement, clip, gain, pos = self._read_head(body, 3)
        unit_z, pos = _read_varint(body, pos)
        unit = _unzigzag(unit_z)
        if not 1 <= abs(unit) <= VALUE_LIMIT:
            raise PayloadError(f"{self.name}: implausible unit {unit}")
        gshape = grid_shape(shape, f)
        cover, rgrid, rpix = _ac_decode(body[pos:], [gshape, gshape, shape], self.name)
        if cover.min(initial=0) < 0 or cover.max(initial=0) > 1:
            raise PayloadError(f"{self.name}: cover plane is not 0/1")
        g = patterns.on_grid(pid, cls, gshape, placement, clip, gain) * unit * cover + rgrid
        if np.abs(g).max(initial=0) > 2 * VALUE_LIMIT:
            raise PayloadError(f"{self.name}: decoded grid out of range")
        return upsample(g, f, shape) + rpix


@register(CODECS)
class KeyedPattern(Pattern):
    """A shipped transfer pattern placed where the key put it (:class:`kernels.patterns.Placement`)
    and clipped to protect's level for it; otherwise as ``pattern``. The placement is part of the
    coded perturbation, so it is encrypted with it: only the key's holder learns it.

    Body: ``pattern id u8 | class u8 | factor u8 | keyed u8 (0/1) | seed 16 bytes | varint block |
    varint clip | varint gain | varint zigzag(unit)`` then the planes of ``pattern``.
    """

    name = "keyed_pattern"
    id = 8

    def _head(self, pattern: PatternHint) -> bytes:
        pl = pattern.placement
        seed = pl.seed or bytes(patterns.SEED_BYTES)
        return bytes([1 if pl.seed else 0]) + seed + _varint(int(pl.block)) + _varint(int(pattern.clip)) + _varint(int(pattern.gain))

    def _read_head(self, body: bytes, pos: int) -> tuple[patterns.Placement, int, int, int]:
        if pos >= len(body) or body[pos] > 1:
            raise PayloadError(f"{self.name}: bad placement flag")
        keyed = bool(body[pos])
        seed = body[pos + 1 : pos + 1 + patterns.SEED_BYTES]
        if len(seed) != patterns.SEED_BYTES:
            raise PayloadError(f"{self.name}: truncated placement seed")
        block, pos = _read_varint(body, pos + 1 + patterns.SEED_BYTES)
        clip, pos = _read_varint(body, pos)
        gain, pos = _read_varint(body, pos)
        if block > 255 or clip > VALUE_LIMIT or not 1 <= gain <= 64 or (not keyed and (any(seed) or block)):
            raise PayloadError(f"{self.name}: implausible placement, clip or gain")
        return (patterns.Placement(seed, block) if keyed else patterns.IDENTITY), clip, gain, pos


@register(CODECS)
class RunLength(Codec):
    """The reference paper's §2.5: |P| and the sign array Q run-length coded separately.

    Body: ``varint len(A) | A | B`` with A = (value, run) varint pairs over |P| in raster order
    and B = alternating run lengths of Q (sign bit: 1 where P < 0), starting with a 0-run.
    """

    name = "rle"
    id = 3

    @staticmethod
    def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        change = np.flatnonzero(np.diff(x)) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [x.size]]))
        return x[starts], lengths

    def encode_body(self, p, **hints):
        flat = p.ravel()
        values, lengths = self._runs(np.abs(flat))
        a = _varints(np.stack([values, lengths], axis=1).ravel().astype(np.int64)).tobytes()
        sign = (flat < 0).astype(np.int64)
        sv, sl = self._runs(sign)
        if sv[0] == 1:  # B starts with a (possibly empty) run of zeros
            sl = np.concatenate([[0], sl])
        b = _varints(sl.astype(np.int64)).tobytes()
        return _varint(len(a)) + a + b

    def decode_body(self, body, shape):
        n = shape[0] * shape[1]
        la, pos = _read_varint(body, 0)
        data = np.frombuffer(body, dtype=np.uint8)
        if pos + la > len(body):
            raise PayloadError("rle: truncated magnitude runs")
        mags = self._expand_pairs(data[pos : pos + la], n)
        signs = self._expand_alternating(data[pos + la :], n)
        return np.where(signs == 1, -mags, mags).reshape(shape)

    @staticmethod
    def _expand_pairs(a: np.ndarray, n: int) -> np.ndarray:
        count = int(np.count_nonzero(a < 0x80))
        vals, end, ok = _read_varints(a, 0, count)
        if not ok or count % 2 or end != a.size:
            raise PayloadError("rle: malformed magnitude runs")
        values, lengths = vals[0::2], vals[1::2]
        if lengths.sum() != n or (values > VALUE_LIMIT).any():
            raise PayloadError("rle: magnitude runs do not cover the image")
        return np.repeat(values, lengths)

    @staticmethod
    def _expand_alternating(b: np.ndarray, n: int) -> np.ndarray:
        count = int(np.count_nonzero(b < 0x80))
        lengths, end, ok = _read_varints(b, 0, count)
        if not ok or end != b.size or lengths.sum() != n:
            raise PayloadError("rle: sign runs do not cover the image")
        return np.repeat(np.arange(lengths.size) % 2, lengths)


class _StdlibCodec(Codec):
    """Baseline: a standard-library compressor over the raw int8/int16 plane."""

    def _compress(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def _decompress(self, body: bytes) -> bytes:
        raise NotImplementedError

    def encode_body(self, p, **hints):
        narrow = p.min() >= -128 and p.max() <= 127
        raw = p.astype(np.int8 if narrow else "<i2").tobytes()
        return bytes([1 if narrow else 2]) + self._compress(raw)

    def decode_body(self, body, shape):
        if not body or body[0] not in (1, 2):
            raise PayloadError(f"{self.name}: bad sample width")
        try:
            raw = self._decompress(body[1:])
        except (lzma.LZMAError, zlib.error, EOFError) as exc:
            raise PayloadError(f"{self.name}: {exc}") from None
        dtype = np.int8 if body[0] == 1 else np.dtype("<i2")
        if len(raw) != shape[0] * shape[1] * np.dtype(dtype).itemsize:
            raise PayloadError(f"{self.name}: decompressed size does not match the shape")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.int64)


@register(CODECS)
class Lzma(_StdlibCodec):
    """lzma (raw LZMA2, preset 9 | extreme): the standard-library baseline."""

    name = "lzma"
    id = 4
    _FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

    def _compress(self, raw):
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=self._FILTERS)

    def _decompress(self, body):
        return lzma.decompress(body, format=lzma.FORMAT_RAW, filters=self._FILTERS)


@register(CODECS)
class Zlib(_StdlibCodec):
    """zlib level 9: the other standard-library baseline."""

    name = "zlib"
    id = 5

    def _compress(self, raw):
        return zlib.compress(raw, 9)

    def _decompress(self, body):
        d = zlib.decompressobj()
        out = d.decompress(body)
        if not d.eof or d.unused_data:
            raise zlib.error("truncated or trailing data")
        return out


@register(CODECS)
class Auto(Codec):
    """Smallest of ``ac`` and ``grid`` (the body starts with the id of the codec that won); with a
    grid hint, ``grid`` on it, or ``pattern`` when that is smaller and protect added a pattern.

    Grid factors whose block-mean fit leaves more than a quarter of the pixels as exceptions are
    not tried: such a grid codes worse than ``ac`` anyway.
    """

    name = "auto"
    id = 6

    GRID_EXCEPTIONS = 0.25  # try a grid factor only if its nearest fit leaves fewer exceptions

    def encode_body(self, p, **hints):
        if "grid" in hints:
            pattern = hints.pop("pattern", None)
            best = bytes([CODECS.get("grid").id]) + CODECS.get("grid").encode_body(p, **hints)
            if pattern is not None:
                codec = CODECS.get(pattern.codec)
                body = bytes([codec.id]) + codec.encode_body(p, pattern=pattern, **hints)
                best = body if len(body) < len(best) else best
            return best
        hints.pop("pattern", None)
        best = bytes([CODECS.get("ac").id]) + CODECS.get("ac").encode_body(p)
        grid = CODECS.get("grid")
        for f in grid.FACTORS:
            g = downsample(p, f)
            if np.mean(upsample(g, f, p.shape) != p) > self.GRID_EXCEPTIONS:
                continue  # not grid-shaped at this factor: coding it would only cost time
            body = bytes([grid.id]) + grid.encode_body(p, grid=g, factor=f)
            if len(body) < len(best):
                best = body
        return best

    def decode_body(self, body, shape):
        if not body or not CODECS.has_id(body[0]) or body[0] == self.id:
            raise PayloadError("auto: unknown inner codec")
        return CODECS.by_id(body[0]).decode_body(body[1:], shape)
