"""Numba context-adaptive binary range coder for integer planes (perturbations, residuals).

The coder is the LZMA range coder (32-bit range, carry propagation through a cached byte) with
15-bit probabilities. Each context keeps a fast and a slow adaptive estimate whose mean codes the
bit; both adapt quickly while a context is young. Each row is cut into segments of
``SEG`` pixels with an "all zero" flag; in a nonzero segment a value ``v`` is binarised as
zero flag → sign → unary magnitude (capped, then Exp-Golomb in bypass bits); every binary
decision is coded in a context drawn from the already-coded causal neighbours W, N, NW, NE.
"""
from __future__ import annotations

import numpy as np
from numba import njit

PROB_BITS = 15
PROB_ONE = 1 << PROB_BITS
TOP = 1 << 24
MASK32 = (1 << 32) - 1

UNARY = 18  # magnitude bins coded with contexts before the Exp-Golomb escape
SEG = 16  # row segment with an "all zero" flag: zeros inside the ROI cost one decision per segment
N_SUM = 9
CTX_ZERO = 0  # 5 (nonzero neighbours) x 9 (neighbour magnitude bucket)
CTX_SIGN = CTX_ZERO + 5 * N_SUM  # 27 (sign of W, N, NW+NE)
CTX_MAG = CTX_SIGN + 27  # 16 (predicted magnitude) x UNARY
CTX_SEG = CTX_MAG + 16 * UNARY  # 4 (segment above / to the left nonzero)
N_CTX = CTX_SEG + 4

_SUM_BUCKET = np.array([0, 1, 2, 3, 4, 4, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# adaptive probability models
# ---------------------------------------------------------------------------------------------


def new_models(n: int = N_CTX) -> np.ndarray:
    """(n, 3) int64: fast estimate, slow estimate (P(bit = 0) in 1/2**15), update count."""
    m = np.empty((n, 3), dtype=np.int64)
    m[:, 0] = PROB_ONE // 2
    m[:, 1] = PROB_ONE // 2
    m[:, 2] = 0
    return m


@njit(cache=True, nogil=True, inline="always")
def _p0(models, ctx):
    p = (models[ctx, 0] + models[ctx, 1]) >> 1
    return min(max(p, 31), PROB_ONE - 31)


@njit(cache=True, nogil=True, inline="always")
def _update(models, ctx, bit):
    n = models[ctx, 2]
    rf = min(n + 1, 4)
    rs = min(n + 1, 7)
    if bit == 0:
        models[ctx, 0] += (PROB_ONE - models[ctx, 0]) >> rf
        models[ctx, 1] += (PROB_ONE - models[ctx, 1]) >> rs
    else:
        models[ctx, 0] -= models[ctx, 0] >> rf
        models[ctx, 1] -= models[ctx, 1] >> rs
    models[ctx, 2] = min(n + 1, 255)


# ---------------------------------------------------------------------------------------------
# encoder: state = [low, range, cache, cache_size, out_pos]
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def enc_init():
    st = np.zeros(5, dtype=np.int64)
    st[1] = MASK32
    st[3] = 1
    return st


@njit(cache=True, nogil=True)
def _ensure(out, pos, extra):
    if pos + extra <= out.size:
        return out
    grown = np.empty(2 * out.size + extra, dtype=np.uint8)
    grown[:pos] = out[:pos]
    return grown


@njit(cache=True, nogil=True)
def _shift_low(st, out):
    low = st[0]
    if low < 0xFF000000 or low > MASK32:
        carry = low >> 32
        temp = st[2]
        while True:
            out = _ensure(out, st[4], 1)
            out[st[4]] = (temp + carry) & 0xFF
            st[4] += 1
            temp = 0xFF
            st[3] -= 1
            if st[3] == 0:
                break
        st[2] = (low >> 24) & 0xFF
    st[3] += 1
    st[0] = (low & 0x00FFFFFF) << 8
    return out


@njit(cache=True, nogil=True, inline="always")
def enc_bit(st, out, models, ctx, bit):
    bound = (st[1] >> PROB_BITS) * _p0(models, ctx)
    if bit == 0:
        st[1] = bound
    else:
        st[0] += bound
        st[1] -= bound
    _update(models, ctx, bit)
    while st[1] < TOP:
        st[1] = (st[1] << 8) & MASK32
        out = _shift_low(st, out)
    return out


@njit(cache=True, nogil=True, inline="always")
def enc_direct(st, out, value, nbits):
    for s in range(nbits - 1, -1, -1):
        st[1] >>= 1
        if (value >> s) & 1:
            st[0] += st[1]
        while st[1] < TOP:
            st[1] = (st[1] << 8) & MASK32
            out = _shift_low(st, out)
    return out


@njit(cache=True, nogil=True)
def enc_finish(st, out):
    for _ in range(5):
        out = _shift_low(st, out)
    return out[: st[4]].copy()


# ---------------------------------------------------------------------------------------------
# decoder: state = [code, range, in_pos]
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _next_byte(st, data):
    p = st[2]
    st[2] = p + 1
    return np.int64(data[p]) if p < data.size else 0


@njit(cache=True, nogil=True)
def dec_init(data, start):
    st = np.zeros(3, dtype=np.int64)
    st[1] = MASK32
    st[2] = start
    for _ in range(5):
        st[0] = ((st[0] << 8) | _next_byte(st, data)) & MASK32
    return st


@njit(cache=True, nogil=True, inline="always")
def dec_bit(st, data, models, ctx):
    bound = (st[1] >> PROB_BITS) * _p0(models, ctx)
    if st[0] < bound:
        st[1] = bound
        bit = 0
    else:
        st[0] -= bound
        st[1] -= bound
        bit = 1
    _update(models, ctx, bit)
    while st[1] < TOP:
        st[1] = (st[1] << 8) & MASK32
        st[0] = ((st[0] << 8) | _next_byte(st, data)) & MASK32
    return bit


@njit(cache=True, nogil=True, inline="always")
def dec_direct(st, data, nbits):
    value = 0
    for _ in range(nbits):
        st[1] >>= 1
        bit = 0
        if st[0] >= st[1]:
            st[0] -= st[1]
            bit = 1
        value = (value << 1) | bit
        while st[1] < TOP:
            st[1] = (st[1] << 8) & MASK32
            st[0] = ((st[0] << 8) | _next_byte(st, data)) & MASK32
    return value


# ---------------------------------------------------------------------------------------------
# integer planes
# ---------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _sgn(v):
    return (v > 0) - (v < 0)


@njit(cache=True, nogil=True, inline="always")
def _contexts(vals, i, j):
    """Zero, sign and magnitude-row contexts of (i, j) from its causal neighbours."""
    h, w = vals.shape
    vw = vals[i, j - 1] if j > 0 else 0
    vn = vals[i - 1, j] if i > 0 else 0
    vnw = vals[i - 1, j - 1] if (i > 0 and j > 0) else 0
    vne = vals[i - 1, j + 1] if (i > 0 and j < w - 1) else 0
    nz = np.int64(vw != 0) + np.int64(vn != 0) + np.int64(vnw != 0) + np.int64(vne != 0)
    s = abs(vw) + abs(vn) + ((abs(vnw) + abs(vne)) >> 1)
    zero_ctx = CTX_ZERO + nz * N_SUM + (_SUM_BUCKET[s] if s < _SUM_BUCKET.size else N_SUM - 1)
    sign_ctx = CTX_SIGN + (_sgn(vw) + 1) * 9 + (_sgn(vn) + 1) * 3 + (_sgn(vnw + vne) + 1)
    mp = min(max(abs(vw), abs(vn)), 15)
    return zero_ctx, sign_ctx, CTX_MAG + mp * UNARY


@njit(cache=True, nogil=True, inline="always")
def _seg_ctx(flags, i, s):
    above = flags[i - 1, s] if i > 0 else 0
    left = flags[i, s - 1] if s > 0 else 0
    return CTX_SEG + 2 * above + left


@njit(cache=True, nogil=True)
def encode_plane(vals, st, out, models):
    """Append the int plane ``vals`` (2-D int64) to the range-coder stream."""
    h, w = vals.shape
    nseg = (w + SEG - 1) // SEG
    flags = np.zeros((h, nseg), dtype=np.int64)
    for i in range(h):
        for s in range(nseg):
            j0 = s * SEG
            j1 = min(j0 + SEG, w)
            nz = 0
            for j in range(j0, j1):
                nz |= vals[i, j] != 0
            flags[i, s] = nz
            out = enc_bit(st, out, models, _seg_ctx(flags, i, s), nz)
            if nz == 0:
                continue
            for j in range(j0, j1):
                v = vals[i, j]
                zc, sc, mc = _contexts(vals, i, j)
                out = enc_bit(st, out, models, zc, np.int64(v != 0))
                if v == 0:
                    continue
                out = enc_bit(st, out, models, sc, np.int64(v < 0))
                r = abs(v) - 1
                k = 0
                while k < UNARY:
                    more = np.int64(r > k)
                    out = enc_bit(st, out, models, mc + k, more)
                    if more == 0:
                        break
                    k += 1
                if k == UNARY:  # escape: Exp-Golomb order 0 of r - UNARY in bypass bits
                    u = r - UNARY + 1
                    nb = 0
                    while (u >> nb) > 1:
                        nb += 1
                    out = enc_direct(st, out, 0, nb)
                    out = enc_direct(st, out, u, nb + 1)
    return out


@njit(cache=True, nogil=True)
def decode_plane(vals, st, data, models):
    """Fill ``vals`` (2-D int64, zeros) from the stream; returns False on a malformed stream."""
    h, w = vals.shape
    nseg = (w + SEG - 1) // SEG
    flags = np.zeros((h, nseg), dtype=np.int64)
    for i in range(h):
        for s in range(nseg):
            nz = dec_bit(st, data, models, _seg_ctx(flags, i, s))
            flags[i, s] = nz
            if nz == 0:
                continue
            j0 = s * SEG
            j1 = min(j0 + SEG, w)
            for j in range(j0, j1):
                zc, sc, mc = _contexts(vals, i, j)
                if dec_bit(st, data, models, zc) == 0:
                    continue
                neg = dec_bit(st, data, models, sc)
                k = 0
                while k < UNARY:
                    if dec_bit(st, data, models, mc + k) == 0:
                        break
                    k += 1
                r = k
                if k == UNARY:
                    nb = 0
                    while dec_direct(st, data, 1) == 0:
                        nb += 1
                        if nb > 30:
                            return False
                    u = (1 << nb) | dec_direct(st, data, nb)
                    r = UNARY + u - 1
                vals[i, j] = -(r + 1) if neg else r + 1
            if st[2] > data.size + 8:
                return False  # ran far past the end: not a stream of this shape
    return True
