"""Plain-NumPy reference of the rhombus PEE method (same algorithm, same bits, no Numba).

Used by ``benchmarks/bench_kernels.py`` for the speed ratio and by the tests, which require it to
produce exactly the marked image the Numba kernels produce.
"""
from __future__ import annotations

import numpy as np

from . import _rdh_jit as jit
from .rdh import PassRecord, RhombusPEE, _run_embed, extract_with_method
from .errors import PayloadError


def _key(c: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(c, 256 + np.maximum((c - 256) >> 3, 0)), jit.N_KEYS - 1)


def _narrow(x, e, a, maxv):
    up = (x == 0) & (e <= a)
    down = (x == maxv) & (e >= a + 1)
    return x + up - down, e + up - down, up | down


def _in_map(v, ev, a, maxv):
    return ((v == maxv - 1) & (ev >= a)) | ((v == 1) & (ev <= a + 1))


def analyze(work, reserved, shape, parity, key_shift):
    """Raster-order candidates of one rhombus set: flat index, prediction, complexity bucket."""
    h, w = shape
    img = work.reshape(h, w).astype(np.int64)
    res = reserved.reshape(h, w).astype(bool)
    n, s, wv, ev = img[:-2, 1:-1], img[2:, 1:-1], img[1:-1, :-2], img[1:-1, 2:]
    tot = n + s + wv + ev
    comp = (np.abs(4 * n - tot) + np.abs(4 * s - tot) + np.abs(4 * wv - tot) + np.abs(4 * ev - tot)) >> key_shift
    ii, jj = np.mgrid[1 : h - 1, 1 : w - 1]
    blocked = res[1:-1, 1:-1] | res[:-2, 1:-1] | res[2:, 1:-1] | res[1:-1, :-2] | res[1:-1, 2:]
    cand = (((ii + jj) & 1) == parity) & ~blocked
    return (ii * w + jj)[cand], (tot[cand] + 2) >> 2, _key(comp[cand])


class NumpyPEE(RhombusPEE):
    """:class:`kernels.rdh.RhombusPEE` with every kernel written as vectorised NumPy.

    ``capacity`` and ``finish_early`` are inherited: they only call ``_plan``.
    """

    def begin(self, work, reserved, shape, k, maxv):
        idx, pred, key = analyze(work, reserved, shape, k % 2, self._key_shift(maxv))
        x = work[idx].astype(np.int64)
        e = x - pred
        P = self.N_PAIRS
        # per pair q: expandable, map and narrowed counts per bucket (boundary pixels included)
        nemb = np.zeros((P, jit.N_KEYS), np.int64)
        nlm = np.zeros((P, jit.N_KEYS), np.int64)
        nnar = np.zeros((P, jit.N_KEYS), np.int64)
        for q in range(P):
            a = self.A_MIN + q
            v, ev, nar = _narrow(x, e, a, maxv)
            nemb[q] = np.bincount(key, weights=(ev == a) | (ev == a + 1), minlength=jit.N_KEYS)
            nlm[q] = np.bincount(key, weights=_in_map(v, ev, a, maxv), minlength=jit.N_KEYS)
            nnar[q] = np.bincount(key, weights=nar, minlength=jit.N_KEYS)
        count = np.bincount(key, minlength=jit.N_KEYS)
        return work, idx, pred, key, maxv, (count, nemb, nlm, nnar)

    def _plan(self, state, need):
        count, nemb, nlm, nnar = state[-1]
        got = np.cumsum(nemb - nlm, axis=1)
        cap = got.max(axis=1).clip(0)
        reach = got >= need
        T = np.where(reach.any(axis=1), reach.argmax(axis=1), -1)
        if need == 0:
            T[:] = 0
        rows = np.arange(self.N_PAIRS)
        Tc = T.clip(0)
        base = np.where(Tc > 0, got[rows, Tc - 1], 0)
        cost = 2 * np.cumsum(count)[Tc] - np.cumsum(nemb, axis=1)[rows, Tc] + 2 * np.cumsum(nnar, axis=1)[rows, Tc]
        maps = np.cumsum(nlm, axis=1)[rows, Tc]
        unset = (T < 0) | (need == 0)  # no prefix (or an empty one): nothing to cost
        return cap, T, np.where(unset, 0, base), np.where(unset, 0, cost), np.where(unset, 0, maps)

    def try_embed(self, state, content, exclude=frozenset()):
        work, idx, pred, key, maxv, _ = state
        need = int(content.size)
        _, T, base, cost, _ = self._plan(state, need)
        fits = np.flatnonzero((T >= 0) & self._allowed(exclude))
        if fits.size == 0:
            return None
        q = int(fits[np.argmin(cost[fits])])
        a, T = self.A_MIN + q, int(T[q])
        x = work[idx].astype(np.int64)
        v, ev, nar = _narrow(x, x - pred, a, maxv)
        emb = (ev == a) | (ev == a + 1)
        dom = _in_map(v, ev, a, maxv)
        # bucket-T pixels in raster order until the content is complete
        inT = key == T
        gain = (emb.astype(np.int64) - dom)[inT]
        m = 0 if base[q] >= need else int(np.argmax(base[q] + np.cumsum(gain) >= need)) + 1
        member = (key < T) | (inT & (np.cumsum(inT) <= m))
        stream = np.concatenate([nar[member & dom].astype(np.uint8), content, np.zeros(1, np.uint8)])
        slot = np.cumsum(member & emb) - 1
        bit = np.where(member & emb, stream[slot.clip(0)].astype(np.int64), 0)
        delta = np.where(ev == a + 1, bit, 0) - np.where(ev == a, bit, 0) + (ev > a + 1) - (ev < a)
        work[idx] = np.where(member, v + delta, x)
        return PassRecord(T, a + 32768, m, need)

    def extract(self, work, reserved, shape, k, maxv, rec):
        a, T, m = rec.p2 - 32768, rec.p1, rec.stop
        idx, pred, key = analyze(work, reserved, shape, k % 2, self._key_shift(maxv))
        inT = key == T
        member = (key < T) | (inT & (np.cumsum(inT) <= m))
        y = work[idx].astype(np.int64)
        e = y - pred
        inb = (e == a + 1) | (e == a + 2)
        ina = (e == a) | (e == a - 1)
        bit = np.where(inb, e - a - 1, 0) + np.where(ina, a - e, 0)
        v = y + member * (ina * bit - inb * bit - (e > a + 2) + (e < a - 1))
        stream = bit[member & (ina | inb)].astype(np.uint8)
        dom = member & _in_map(v, v - pred, a, maxv)
        nd = int(dom.sum())
        if inT.sum() < m or stream.size != nd + rec.nbits or v.min(initial=0) < 0 or v.max(initial=0) > maxv:
            raise PayloadError(f"PEE pass {k}: marked pixels are inconsistent with the side information")
        lm = stream[:nd].astype(bool)
        v[np.flatnonzero(dom)[lm]] = np.where(v[dom][lm] == maxv - 1, maxv, 0)
        work[idx] = v
        return stream[nd:]


REFERENCE = NumpyPEE()


def embed(image: np.ndarray, payload: bytes, frozen: np.ndarray | None = None, open_first: bool = False) -> np.ndarray:
    """:func:`kernels.embed` with ``method="pee"`` on the NumPy reference kernels."""
    return _run_embed(image, np.unpackbits(np.frombuffer(payload, np.uint8)), REFERENCE, frozen=frozen, open_first=open_first)[0]


def extract(marked: np.ndarray) -> tuple[np.ndarray, bytes]:
    """:func:`kernels.extract` on the NumPy reference kernels."""
    image, payload, _ = extract_with_method(marked, impl=REFERENCE)
    return image, payload
