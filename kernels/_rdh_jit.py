"""Numba kernels of the two RDH methods (one embedding pass each; the driver in ``rdh.py`` chains them).

All kernels work in place on a flat ``int32`` copy of the image and take the pixel ceiling
``maxv`` (255 or 65535). Pixels flagged in ``reserved`` (flat ``uint8``) are never touched and,
for PEE, never used as predictors.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# ----------------------------------------------------------------------------------------------
# Histogram shifting (Ni et al. 2006; the reference paper's eq. 16-18)
# ----------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def hs_histogram(work, reserved, nbins):
    hist = np.zeros(nbins, dtype=np.int64)
    for k in range(work.size):
        if reserved[k] == 0:
            hist[work[k]] += 1
    return hist


@njit(cache=True, nogil=True)
def _rice_param(k, d):
    r = 0
    while k > 0 and (k << (r + 1)) <= d:
        r += 1
    return r


@njit(cache=True, nogil=True)
def lm_cost(k, d):
    """Bits of a Rice-coded location map of ``k`` ones among ``d`` positions."""
    if k == 0:
        return 37
    r = _rice_param(k, d)
    return 37 + k * (r + 1) + (d >> r) + 1


@njit(cache=True, nogil=True)
def rice_encode_map(flags):
    """``flags`` (0/1) → [k:32][r:5] then the k gaps between ones, Rice-coded with parameter r."""
    d = flags.size
    k = 0
    for t in range(d):
        k += flags[t]
    r = _rice_param(k, d)
    out = np.empty(lm_cost(k, d) + 64, dtype=np.uint8)
    n = 0
    for s in range(31, -1, -1):
        out[n] = (k >> s) & 1
        n += 1
    for s in range(4, -1, -1):
        out[n] = (r >> s) & 1
        n += 1
    last = -1
    for t in range(d):
        if flags[t]:
            gap = t - last - 1
            last = t
            q = gap >> r
            if n + q + 1 + r > out.size:
                grown = np.empty(2 * out.size + q + r + 1, dtype=np.uint8)
                grown[:n] = out[:n]
                out = grown
            for _ in range(q):
                out[n] = 1
                n += 1
            out[n] = 0
            n += 1
            for s in range(r - 1, -1, -1):
                out[n] = (gap >> s) & 1
                n += 1
    return out[:n].copy()


@njit(cache=True, nogil=True)
def rice_decode_map(stream, d):
    """Inverse of :func:`rice_encode_map` over ``d`` positions: ``(flags, bits read, ok)``."""
    flags = np.zeros(d, dtype=np.uint8)
    if stream.size < 37:
        return flags, 0, False
    k = 0
    for t in range(32):
        k = (k << 1) | stream[t]
    r = 0
    for t in range(32, 37):
        r = (r << 1) | stream[t]
    n = 37
    last = -1
    for _ in range(k):
        q = 0
        while n < stream.size and stream[n] == 1:
            q += 1
            n += 1
        n += 1
        if n + r > stream.size:
            return flags, n, False
        rem = 0
        for _ in range(r):
            rem = (rem << 1) | stream[n]
            n += 1
        pos = last + 1 + (q << r) + rem
        if pos >= d:
            return flags, n, False
        flags[pos] = 1
        last = pos
    return flags, n, True


@njit(cache=True, nogil=True)
def hs_choose(hist):
    """Peak ``a`` and zero bin ``z`` that shift the fewest pixels per payload bit.

    Returns ``(a, z, has_lm, capacity)``. When bin ``z`` is not empty (``has_lm`` = 1) the
    pixels that end on ``z`` need a location map, Rice-coded in the payload, whose size is
    subtracted from ``capacity``. ``z`` is -1 when no layer is possible.
    """
    nb = hist.size
    a = 0
    for v in range(nb):
        if hist[v] > hist[a]:
            a = v
    best_z = -1
    best_lm = 0
    best_cap = 0
    best_shift = 0
    for direction in (1, -1):
        shifted = 0  # pixels strictly between a and v
        v = a + direction
        while 0 <= v < nb:
            if hist[v] == 0:
                cand_lm, cap = 0, hist[a]
            elif v - direction != a:
                cand_lm, cap = 1, hist[a] - lm_cost(hist[v], hist[v] + hist[v - direction])
            else:
                cand_lm, cap = 1, 0  # a non-empty z next to the peak cannot be told apart
            # minimise shifted / cap, i.e. compare shifted * best_cap < best_shift * cap
            if cap > 0 and (best_z < 0 or shifted * best_cap < best_shift * cap):
                best_z, best_lm, best_cap, best_shift = v, cand_lm, cap, shifted
            if hist[v] == 0:
                break  # bins further out only shift more pixels for the same capacity
            shifted += hist[v]
            v += direction
    return a, best_z, best_lm, best_cap


@njit(cache=True, nogil=True)
def hs_map(work, reserved, a, z):
    """Location map of one HS layer: over the pixels that will end on ``z``, 1 = originally ``z``."""
    d = 1 if z > a else -1
    cnt = 0
    for k in range(work.size):
        if reserved[k] == 0 and (work[k] == z or work[k] == z - d):
            cnt += 1
    flags = np.empty(cnt, dtype=np.uint8)
    j = 0
    for k in range(work.size):
        if reserved[k] == 0 and (work[k] == z or work[k] == z - d):
            flags[j] = 1 if work[k] == z else 0
            j += 1
    return rice_encode_map(flags)


@njit(cache=True, nogil=True)
def hs_embed(work, reserved, a, z, stream):
    """Embed ``stream`` (location map + content) in one HS layer, in raster order."""
    d = 1 if z > a else -1
    total = stream.size
    pos = 0
    lo = min(a, z)
    hi = max(a, z)
    for k in range(work.size):
        if reserved[k]:
            continue
        x = work[k]
        if x == a:
            if pos < total:
                work[k] = x + d * stream[pos]
                pos += 1
        elif lo < x < hi:
            work[k] = x + d
    return pos


@njit(cache=True, nogil=True)
def hs_extract(work, reserved, a, z, has_lm, total):
    """Invert one HS layer in place. Returns ``(stream after the map, ok)``."""
    d = 1 if z > a else -1
    n = work.size
    ndom = 0
    if has_lm:
        for k in range(n):
            if reserved[k] == 0 and work[k] == z:
                ndom += 1
    stream = np.empty(total, dtype=np.uint8)
    dom = np.empty(ndom, dtype=np.int64)
    pos = 0
    j = 0
    for k in range(n):
        if reserved[k]:
            continue
        y = work[k]
        if has_lm and y == z:
            dom[j] = k
            j += 1
        if y == a:
            if pos < total:
                stream[pos] = 0
                pos += 1
        elif y == a + d:
            if pos >= total:
                return np.empty(0, dtype=np.uint8), False
            stream[pos] = 1
            pos += 1
            work[k] = a
        elif (d == 1 and a + d < y <= z) or (d == -1 and z <= y < a + d):
            work[k] = y - d
    if pos != total:
        return np.empty(0, dtype=np.uint8), False
    if not has_lm:
        return stream, True
    flags, used, ok = rice_decode_map(stream, ndom)
    if not ok:
        return np.empty(0, dtype=np.uint8), False
    for t in range(ndom):
        if flags[t]:
            work[dom[t]] = z
    return stream[used:].copy(), True


# ----------------------------------------------------------------------------------------------
# Prediction-error expansion with rhombus prediction and sorting (Sachnev et al. 2009)
# ----------------------------------------------------------------------------------------------

N_KEYS = 640  # complexity buckets; see _key


@njit(cache=True, nogil=True, inline="always")
def _key(c):
    """Complexity → bucket: exact below 256, then steps of 8 (8-bit range ends at bucket 606).

    Branch-free (min/max): complexities are irregular, and a branch here mispredicts.
    """
    return min(min(c, 256 + max((c - 256) >> 3, 0)), N_KEYS - 1)


@njit(cache=True, nogil=True, inline="always")
def _pee_narrow(x, e, a, maxv):
    """Overflow-safe value before embedding: pixels that could leave [0, maxv] move one step in."""
    b = a + 1
    if x == maxv and e >= b:
        return x - 1, e - 1, 1
    if x == 0 and e <= a:
        return x + 1, e + 1, 1
    return x, e, 0


@njit(cache=True, nogil=True, inline="always")
def _pee_in_map(v, ev, a, maxv):
    """Whether a (narrowed) value needs a location-map bit: the decoder asks this after restoring."""
    b = a + 1
    return (v == maxv - 1 and ev >= b - 1) or (v == 1 and ev <= a + 1)


@njit(cache=True, nogil=True, inline="always")
def _is_candidate(reserved, k, W):
    """Whether neither pixel ``k`` nor a neighbour is reserved (asked near the border, and
    everywhere when a frozen region is reserved too)."""
    return (reserved[k] | reserved[k - W] | reserved[k + W] | reserved[k - 1] | reserved[k + 1]) == 0


@njit(cache=True, nogil=True, inline="always")
def _rhombus(up, mid, dn, j, key_shift):
    """Complexity ``sum |4 v_k - S| >> key_shift`` and prediction ``round(S / 4)`` of pixel ``j`` of
    row ``mid`` from its four neighbours (sum ``S``). Inlined into row loops over contiguous int32
    slices, which LLVM vectorises (|4 v - S| < 2**20 even for 16-bit pixels)."""
    vn = up[j]
    vs = dn[j]
    vw = mid[j - 1]
    ve = mid[j + 1]
    s = vn + vs + vw + ve
    return (abs(4 * vn - s) + abs(4 * vs - s) + abs(4 * vw - s) + abs(4 * ve - s)) >> key_shift, (s + 2) >> 2


FAST_COLS = 16  # columns per bucket of the pass-local histogram of interior (non-boundary) pixels


@njit(cache=True, nogil=True)
def _row_keys(work, base, W, key_shift, a_min, npairs, KC, PR):
    """Bucket and error column (``KC = bucket * FAST_COLS + column``) and prediction ``PR`` of
    every interior pixel of one row, as if it were a candidate. Branch-free int32 lanes, so LLVM
    vectorises it; the candidate loop then only gathers every other entry."""
    up = work[base - W : base]
    mid = work[base : base + W]
    dn = work[base + W : base + 2 * W]
    last = npairs + 2
    for j in range(1, W - 1):
        c, p = _rhombus(up, mid, dn, j, key_shift)
        PR[j] = p
        KC[j] = _key(c) * FAST_COLS + min(max(mid[j] - p - a_min + 1, 0), last)


@njit(cache=True, nogil=True, inline="always")
def _row_span(reserved, base, W, j0, edge_row):
    """Column range of a row's candidates: ``range(js, je, 2)``. Reserved pixels lie on the
    border, so in an interior row only the end candidates can have one as a neighbour (columns 0
    and W-1); edge rows (1 and H-2) check every candidate with :func:`_is_candidate`."""
    js = j0
    je = W - 1
    if not edge_row:
        if js == 1 and reserved[base] != 0:
            js = 3
        if (W - 2 - j0) % 2 == 0 and reserved[base + W - 1] != 0:
            je = W - 2
    return js, je


@njit(cache=True, nogil=True)
def _boundary_counts(hist, c, x, e, a_min, P, maxv):
    """Columns ``P+3 ..`` of ``hist[c]`` for a pixel at 0, 1, maxv-1 or maxv (see pee_analyze)."""
    hist[c, P + 3] += 1
    for q in range(P):
        a = a_min + q
        v, ev, narrowed = _pee_narrow(x, e, a, maxv)
        if ev == a or ev == a + 1:
            hist[c, P + 4 + q] += 1
        if _pee_in_map(v, ev, a, maxv):
            hist[c, 2 * P + 4 + q] += 1
        hist[c, 3 * P + 4 + q] += narrowed


@njit(cache=True, nogil=True, inline="always")
def _count(x, kc, p, t, hist, fast, bnd, nb, top, a_min, P, maxv):
    """Histogram update for candidate number ``t`` (value ``x``, ``kc`` as in :func:`_row_keys`,
    prediction ``p``). Returns the updated highest bucket and boundary count."""
    c = kc // FAST_COLS
    if 1 < x < maxv - 1:
        fast[kc] += 1
    else:
        bnd[nb] = t
        nb += 1
        _boundary_counts(hist, c, np.int64(x), np.int64(x) - p, a_min, P, maxv)
    return max(top, c), nb


@njit(cache=True, nogil=True)
def pee_analyze(work, reserved, H, W, parity, key_shift, maxv, a_min, npairs, idx, pred, key, hist, used, fast, bnd, general):
    """Candidates of one rhombus set in raster order, and their statistics per complexity bucket.

    A candidate is an interior pixel with ``(i + j) % 2 == parity`` which is not reserved and none
    of whose four neighbours is. ``general``: reserved pixels may lie anywhere (a frozen region),
    not only on the border, so every row is checked pixel by pixel. Its prediction is the rounded mean of its four neighbours, which belong to the
    other set and so do not change in this pass; its complexity is ``sum |4 v_k - S|``, so the
    decoder recomputes both. Writes ``idx``, ``pred``, ``key`` (first ``n`` entries), the
    candidate numbers of the boundary pixels (0, 1, maxv-1, maxv) in ``bnd`` (first ``nb``) and
    fills ``hist[bucket]``: columns ``0 .. P+2`` count pixels away from 0/maxv by error
    ``e - a_min + 1`` clamped to that range; column ``P+3`` counts the boundary pixels; then per
    bin pair ``(a, a+1)``, ``a = a_min + q``, the boundary pixels' expandable count,
    location-map bits and narrowings (``P`` columns each). ``used[0]`` is one more than the
    highest bucket written (rows from it up are zero): read to clear only dirty rows, then
    updated. ``fast`` (``N_KEYS * FAST_COLS``, zero on entry and on return) holds the first
    ``P+3`` columns while the pass runs: 64 B a bucket keeps the counts of the common buckets in
    L1. Returns ``(n, nb)``.
    """
    P = npairs
    hist[: used[0], :] = 0  # rows from used[0] up are still zero from the last call
    top = 0
    KC = np.empty(W, np.int32)
    PR = np.empty(W, np.int32)
    n = 0
    nb = 0
    for i in range(1, H - 1):
        base = i * W
        _row_keys(work, base, W, key_shift, a_min, P, KC, PR)
        j0 = 1 if ((i + 1) & 1) == parity else 2
        edge_row = general or i == 1 or i == H - 2
        js, je = _row_span(reserved, base, W, j0, edge_row)
        if edge_row:  # candidate by candidate: a neighbour may be reserved
            for j in range(js, je, 2):
                k = base + j
                if not _is_candidate(reserved, k, W):
                    continue
                idx[n] = k
                pred[n] = PR[j]
                key[n] = KC[j] // FAST_COLS
                top, nb = _count(work[k], KC[j], PR[j], n, hist, fast, bnd, nb, top, a_min, P, maxv)
                n += 1
            continue
        # Interior rows: the copies first, then only the histogram updates are sequential; a row
        # with a pixel at 0, 1, maxv-1 or maxv (rare) takes the slow path. Slices and unsigned
        # indices throughout: Numba tests every signed index for negative wraparound, and those
        # tests were a fifth of this function's time (the same holds in pee_embed / pee_extract).
        cnt = (je - js + 1) // 2
        low = maxv
        d_idx = idx[n:]
        d_pred = pred[n:]
        d_key = key[n:]
        s_kc = KC[js:]
        s_pr = PR[js:]
        s_x = work[base + js :]
        k0 = base + js
        for u in range(cnt):
            d_idx[u] = k0 + 2 * u
            d_pred[u] = s_pr[2 * u]
            c = s_kc[2 * u] >> 4  # // FAST_COLS; a literal shift is faster here than either
            d_key[u] = c
            top = max(top, c)
            x = s_x[2 * u]
            low = min(low, min(x - 2, maxv - 2 - x))
        if low >= 0:
            for u in range(cnt):
                fast[np.uint64(s_kc[2 * u])] += 1
        else:  # _count's body inlined: calling it here made the whole function 2.2x slower
            for u in range(cnt):
                x = s_x[2 * u]
                if 1 < x < maxv - 1:
                    fast[np.uint64(s_kc[2 * u])] += 1
                else:
                    bnd[nb] = n + u
                    nb += 1
                    _boundary_counts(hist, s_kc[2 * u] // FAST_COLS, np.int64(x), np.int64(x) - s_pr[2 * u], a_min, P, maxv)
        n += cnt
    for c in range(top + 1 if n else 0):
        for col in range(P + 3):
            hist[c, col] += fast[c * FAST_COLS + col]
            fast[c * FAST_COLS + col] = 0
    used[0] = top + 1 if n else 0
    return n, nb


@njit(cache=True, nogil=True)
def pee_plan(hist, npairs, need, used):
    """Smallest bucket prefix holding ``need`` content bits, per bin pair.

    Returns ``cap`` (largest content any bucket prefix holds), ``T`` (the bucket in which the
    payload ends, -1 if it does not fit), ``base`` (content held by buckets below ``T``),
    ``cost`` (expected squared distortion in half-units up to the end of bucket ``T``) and
    ``maps`` (location-map pixels up to the end of bucket ``T``).
    """
    P = npairs
    K = used  # rows at and above ``used`` are empty
    cap = np.zeros(P, dtype=np.int64)
    T = np.full(P, -1, dtype=np.int64)
    base = np.zeros(P, dtype=np.int64)
    cost = np.zeros(P, dtype=np.int64)
    maps = np.zeros(P, dtype=np.int64)
    rows = np.zeros(K, dtype=np.int64)
    for c in range(K):
        for col in range(P + 4):
            rows[c] += hist[c, col]
    for q in range(P):
        if need == 0:
            T[q] = 0
        cnt = 0
        nemb = 0
        nlm = 0
        nnar = 0
        for c in range(K):
            prev = nemb - nlm
            cnt += rows[c]
            # fast columns: e == a is column q + 1, e == a + 1 is column q + 2
            nemb += hist[c, q + 1] + hist[c, q + 2] + hist[c, P + 4 + q]
            nlm += hist[c, 2 * P + 4 + q]
            nnar += hist[c, 3 * P + 4 + q]
            got = nemb - nlm
            if got > cap[q]:
                cap[q] = got
            if T[q] < 0 and got >= need:
                T[q] = c
                base[q] = prev
                cost[q] = 2 * cnt - nemb + 2 * nnar
                maps[q] = nlm
    return cap, T, base, cost, maps


@njit(cache=True, nogil=True)
def pee_prefix_end(work, idx, pred, key, n, maxv, a, T, base, need):
    """How many bucket-``T`` pixels (in raster order) complete ``need`` content bits."""
    got = base
    m = 0
    if got >= need:
        return 0
    for t in range(n):
        if key[t] != T:
            continue
        x = np.int64(work[np.uint64(idx[t])])
        v, ev, _ = _pee_narrow(x, x - pred[t], a, maxv)
        if ev == a or ev == a + 1:
            got += 1
        if _pee_in_map(v, ev, a, maxv):
            got -= 1
        m += 1
        if got >= need:
            return m
    return -1


@njit(cache=True, nogil=True, inline="always")
def _pee_member(c, T, seen, m):
    """Whether a candidate in bucket ``c`` belongs to the pass's prefix (buckets below ``T``, then
    the first ``m`` of bucket ``T`` in raster order), and the updated count of bucket-``T`` members."""
    if c > T:  # tested first: the usual case for a light payload
        return False, seen
    if c < T:
        return True, seen
    return seen < m, seen + (seen < m)


@njit(cache=True, nogil=True)
def _map_bits(work, idx, pred, key, maxv, a, T, m, bnd, nb):
    """Location-map bits of the pass's prefix: over its boundary candidates (``bnd``) in raster
    order, 1 where the pixel was narrowed. Bucket-``T`` boundary candidates belong to the prefix
    while fewer than ``m`` bucket-``T`` candidates precede them."""
    bits = np.empty(nb, np.uint8)
    nlm = 0
    seen = 0  # bucket-T candidates before ``scanned``
    scanned = 0
    for r in range(nb):
        t = bnd[r]
        c = key[t]
        if c > T:
            continue
        if c == T:
            for u in range(scanned, t):  # vectorised count
                seen += key[u] == T
            scanned = t
            if seen >= m:
                continue
        x = np.int64(work[idx[t]])
        v, ev, narrowed = _pee_narrow(x, x - pred[t], a, maxv)
        if _pee_in_map(v, ev, a, maxv):
            bits[nlm] = narrowed
            nlm += 1
    return bits[:nlm]


@njit(cache=True, nogil=True)
def _stream(head, content):
    out = np.empty(head.size + content.size + 1, np.uint8)  # + a zero read past the last bit
    out[: head.size] = head
    out[head.size : head.size + content.size] = content
    out[-1] = 0
    return out


@njit(cache=True, nogil=True)
def pee_embed(work, idx, pred, key, n, maxv, a, T, m, content, with_map, bnd, nb):
    """Embed location map + ``content`` into the prefix (buckets < T, first m of bucket T).

    ``with_map`` may be False only when the prefix holds no location-map pixel (from the plan).
    """
    b = a + 1
    if with_map:
        stream = _stream(_map_bits(work, idx, pred, key, maxv, a, T, m, bnd, nb), content)
    else:
        stream = _stream(np.empty(0, np.uint8), content)
    pos = 0
    seen = 0
    for t in range(n):
        member, seen = _pee_member(key[t], T, seen, m)
        if not member:  # unchanged (most of a light payload's candidates)
            continue
        k = np.uint64(idx[t])  # unsigned: no wraparound test (see pee_analyze)
        x = np.int64(work[k])
        v, ev, _ = _pee_narrow(x, x - pred[t], a, maxv)
        isb = np.int64(ev == b)
        isa = np.int64(ev == a)
        bit = np.int64(stream[np.uint64(pos)])
        work[k] = v + (isb - isa) * bit + np.int64(ev > b) - np.int64(ev < a)
        pos += isa | isb
    return pos


@njit(cache=True, nogil=True)
def _row_decode(work, base, W, key_shift, a, K, P, D):
    """For every interior pixel of a row, as if it were a pass member (vectorises): bucket ``K``,
    prediction ``P`` and ``D`` = (change + 1) | expandable << 2 | carried bit << 3, packed so
    the sequential candidate loop reads one word."""
    up = work[base - W : base]
    mid = work[base : base + W]
    dn = work[base + W : base + 2 * W]
    b = a + 1
    for j in range(1, W - 1):
        c, p = _rhombus(up, mid, dn, j, key_shift)
        K[j] = _key(c)
        P[j] = p
        e = mid[j] - p
        inb = np.int32((e == b) | (e == b + 1))
        ina = np.int32((e == a) | (e == a - 1))
        bit = inb * (e - b) + ina * (a - e)
        change = ina * bit - inb * bit - np.int32(e > b + 1) + np.int32(e < a - 1)
        D[j] = (change + 1) | ((inb | ina) << 2) | (bit << 3)


@njit(cache=True, nogil=True)
def pee_extract(work, reserved, H, W, parity, key_shift, maxv, a, T, m, nbits, general):
    """Invert one PEE pass in place. Returns ``(content bits, ok)``.

    Recomputes predictions and complexities row by row (the other set is unchanged by the pass)
    and visits the candidates in the same raster order as :func:`pee_analyze`.
    """
    stream = np.empty((H * W) // 2 + 1, dtype=np.uint8)
    dom = np.empty(64, dtype=np.int64)
    K = np.empty(W, np.int32)
    P = np.empty(W, np.int32)
    D = np.empty(W, np.int32)
    a32 = np.int32(a)
    pos = 0
    nd = 0
    seen = 0
    bad = False
    for i in range(1, H - 1):
        base = i * W
        _row_decode(work, base, W, key_shift, a32, K, P, D)
        j0 = 1 if ((i + 1) & 1) == parity else 2
        edge_row = general or i == 1 or i == H - 2
        js, je = _row_span(reserved, base, W, j0, edge_row)
        for j in range(js, je, 2):
            k = base + j
            if edge_row and not _is_candidate(reserved, k, W):
                continue
            ju = np.uint64(j)  # unsigned: no wraparound test (see pee_analyze)
            member, seen = _pee_member(K[ju], T, seen, m)
            if not member:  # unchanged (most of a light payload's candidates)
                continue
            code = D[ju]
            stream[np.uint64(pos)] = code >> 3
            pos += (code >> 2) & 1
            ku = np.uint64(k)
            v = np.int64(work[ku]) + (code & 3) - 1
            bad |= (v < 0) | (v > maxv)
            work[ku] = v
            if 1 < v < maxv - 1:  # almost always true
                continue
            if _pee_in_map(v, v - P[j], a, maxv):
                if nd == dom.size:
                    grown = np.empty(2 * nd, dtype=np.int64)
                    grown[:nd] = dom
                    dom = grown
                dom[nd] = k
                nd += 1
    if bad or min(seen, m) != m or pos != nd + nbits:
        return np.empty(0, dtype=np.uint8), False
    for t in range(nd):
        if stream[t]:
            k = dom[t]
            work[k] = maxv if work[k] == maxv - 1 else 0
    return stream[nd:pos].copy(), True
