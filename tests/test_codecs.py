"""Perturbation codecs and integer resampling: lossless on every input, errors on bad data."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medrae import kernels
from medrae.kernels.codecs import CODECS
from medrae.kernels.resample import downsample, grid_shape, upsample
from medrae.toolkit.phantoms import chest_phantom

ALL = [c for c in CODECS.names() if c not in ("pattern", "keyed_pattern")]  # the pattern codecs need protect's hints: tested below and in test_strength


def lung_mask(shape):
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    return ((x - 0.3 * w) / (0.18 * w)) ** 2 + ((y - 0.5 * h) / (0.35 * h)) ** 2 < 1


def realistic(shape, eps=8, factor=4, seed=0, mode="nearest"):
    """What protect applies: a coarse grid that is zero on cells touching the lungs, upsampled,
    masked again at full resolution (linear upsampling leaks across cell borders) and clipped
    at the cover image's 0/255."""
    rng = np.random.default_rng(seed)
    mask = lung_mask(shape)
    g = rng.integers(-eps, eps + 1, grid_shape(shape, factor))
    g[downsample(mask.astype(np.int64), factor) > 0] = 0
    g[np.pad(mask, ((0, -shape[0] % factor), (0, -shape[1] % factor))).reshape(g.shape[0], factor, g.shape[1], factor).any(axis=(1, 3))] = 0
    p = np.where(mask, 0, upsample(g, factor, shape, mode))
    image = chest_phantom(seed, shape)[0].astype(np.int64) if min(shape) >= 32 else rng.integers(0, 256, shape)
    return (np.clip(image + p, 0, 255) - image).astype(np.int16), g


@given(
    codec=st.sampled_from(ALL),
    p=hnp.arrays(np.int16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=48), elements=st.integers(-16, 16)),
)
def test_round_trip_random(codec, p):
    assert np.array_equal(kernels.decode_perturbation(kernels.encode_perturbation(p, codec)), p)


@given(
    codec=st.sampled_from(ALL),
    p=hnp.arrays(np.int16, st.tuples(st.integers(1, 20), st.integers(1, 20)), elements=st.integers(-32767, 32767)),
)
def test_round_trip_full_int16_range(codec, p):
    assert np.array_equal(kernels.decode_perturbation(kernels.encode_perturbation(p, codec)), p)


@pytest.mark.parametrize("codec", ALL)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_round_trip_realistic(codec, seed, mode):
    p, _ = realistic((224, 224), seed=seed, mode=mode)
    out = kernels.decode_perturbation(kernels.encode_perturbation(p, codec))
    assert out.dtype == np.int16 and np.array_equal(out, p)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_grid_hint_codes_only_grid_and_exceptions(mode):
    p, g = realistic((224, 224), factor=2, seed=3, mode=mode)
    hinted = kernels.encode_perturbation(p, "grid", grid=g, factor=2, mode=mode)
    assert np.array_equal(kernels.decode_perturbation(hinted), p)
    # a 112x112 grid of 17 values costs at most log2(17) bits a cell, plus the sparse exceptions
    assert 8 * len(hinted) < 112 * 112 * np.log2(17) * 1.15
    assert len(hinted) < len(kernels.encode_perturbation(p, "ac"))


def test_context_coder_beats_rle_threefold_on_dense_sign_noise():
    rng = np.random.default_rng(0)
    p = (rng.integers(0, 2, (224, 224)) * 16 - 8).astype(np.int16)
    assert len(kernels.encode_perturbation(p, "ac")) <= len(kernels.encode_perturbation(p, "rle")) / 3


def test_auto_is_never_worse_than_its_candidates():
    p, _ = realistic((128, 96), seed=5)
    auto = len(kernels.encode_perturbation(p))
    assert auto <= 1 + min(len(kernels.encode_perturbation(p, c)) for c in ("ac", "grid"))


@pytest.mark.parametrize("codec", ALL)
def test_garbage_is_a_payload_error(codec):
    p, _ = realistic((64, 64), seed=1)
    data = kernels.encode_perturbation(p, codec)
    for cut in (1, 3, len(data) // 2, len(data) - 1):
        try:
            out = kernels.decode_perturbation(data[:cut])
        except kernels.PayloadError:
            continue
        assert out.shape == p.shape  # a range coder may decode a truncated tail as zeros
    with pytest.raises(kernels.PayloadError):
        kernels.decode_perturbation(b"")
    with pytest.raises(kernels.PayloadError):
        kernels.decode_perturbation(bytes([250, 1, 1]))


@given(st.binary(min_size=1, max_size=64), st.sampled_from(ALL))
def test_random_bytes_never_crash(blob, codec):
    data = bytes([CODECS.get(codec).id]) + blob
    try:
        out = kernels.decode_perturbation(data)
    except kernels.PayloadError:
        return
    assert out.dtype == np.int16 and out.ndim == 2


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (np.zeros((4, 4), np.float32), TypeError, "dtype float32"),
        (np.zeros((4, 4, 2), np.int16), ValueError, "(4, 4, 2)"),
        (np.full((4, 4), 40000, np.int32), ValueError, "int16"),
        (np.zeros((0, 4), np.int16), ValueError, "empty"),
    ],
)
def test_bad_perturbations_are_named(bad, exc, words):
    with pytest.raises(exc, match=__import__("re").escape(words)):
        kernels.encode_perturbation(bad)


# ---------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------


@given(
    g=hnp.arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(-255, 255)),
    factor=st.integers(1, 8),
    trim=st.tuples(st.integers(0, 7), st.integers(0, 7)),
)
def test_nearest_block_mean_inverts_upsample(g, factor, trim):
    shape = (max(1, g.shape[0] * factor - trim[0] % factor), max(1, g.shape[1] * factor - trim[1] % factor))
    gh, gw = grid_shape(shape, factor)
    g = g[:gh, :gw]
    assert np.array_equal(downsample(upsample(g, factor, shape), factor), g)


@given(
    g=hnp.arrays(np.int64, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.integers(-255, 255)),
    factor=st.integers(1, 6),
)
def test_linear_matches_float_bilinear(g, factor):
    """Integer linear upsampling equals float bilinear (half-pixel centres, edge clamp) rounded half up."""
    shape = (g.shape[0] * factor, g.shape[1] * factor)
    out = upsample(g, factor, shape, "linear")

    def coords(n_fine, n_coarse):
        u = (np.arange(n_fine) + 0.5) / factor - 0.5
        i0 = np.floor(u).astype(int)
        t = u - i0
        return np.clip(i0, 0, n_coarse - 1), np.clip(i0 + 1, 0, n_coarse - 1), t

    r0, r1, ty = coords(shape[0], g.shape[0])
    c0, c1, tx = coords(shape[1], g.shape[1])
    gf = g.astype(float)
    rows = gf[r0] * (1 - ty)[:, None] + gf[r1] * ty[:, None]
    ref = rows[:, c0] * (1 - tx)[None, :] + rows[:, c1] * tx[None, :]
    assert np.array_equal(out, np.floor(ref + 0.5 + 1e-9).astype(np.int64))


def test_linear_keeps_constants_and_range():
    g = np.full((5, 7), -3)
    assert (upsample(g, 4, (20, 28), "linear") == -3).all()
    g = np.random.default_rng(0).integers(-8, 9, (6, 6))
    up = upsample(g, 4, (24, 24), "linear")
    assert up.min() >= g.min() and up.max() <= g.max()


def test_resample_errors():
    with pytest.raises(ValueError, match="factor"):
        upsample(np.zeros((2, 2), int), 0, (2, 2))
    with pytest.raises(ValueError, match="does not cover"):
        upsample(np.zeros((2, 2), int), 2, (9, 9))
    with pytest.raises(ValueError, match="mode"):
        upsample(np.zeros((2, 2), int), 2, (4, 4), "cubic")
    with pytest.raises(TypeError, match="integer"):
        upsample(np.zeros((2, 2)), 2, (4, 4))


# ---------------------------------------------------------------------------------------------
# the pattern codec: a shipped universal pattern referenced, not coded
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_pattern(tmp_path_factory):
    """A random (3, 56, 56) int8 pattern published under id 250 in a temporary pattern folder."""
    import hashlib

    from medrae.kernels import patterns

    folder = tmp_path_factory.mktemp("patterns")
    arr = np.random.default_rng(7).integers(-8, 9, (3, 56, 56)).astype(np.int8)
    np.save(folder / "test_v0.npy", arr)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patterns, "PATTERN_DIR", folder)
        mp.setattr(patterns, "PATTERNS", {250: ("test_v0", hashlib.sha256(arr.tobytes()).hexdigest())})
        patterns.load.cache_clear()
        yield 250, arr, folder
    patterns.load.cache_clear()


def _patterned(arr, cls, shape, factor, unit, seed, smooth=False):
    """A perturbation as protect makes it with a pattern: the pattern on the covered cells, a few
    refinement moves, full-resolution exceptions (ROI edges, clipping)."""
    from medrae.kernels.codecs import PatternHint

    rng = np.random.default_rng(seed)
    gshape = grid_shape(shape, factor)
    rows, cols = (np.arange(gshape[0]) * 56) // gshape[0], (np.arange(gshape[1]) * 56) // gshape[1]
    cover = ~lung_mask(gshape) if smooth else rng.random(gshape) < 0.7
    g = arr[cls].astype(np.int64)[rows][:, cols] * cover
    moved = rng.random(gshape) < 0.05
    g[moved] = np.clip(g[moved] + rng.choice([-4, 4], moved.sum()), -8, 8)
    p = upsample(g * unit, factor, shape)
    p[lung_mask(shape) if smooth else rng.random(shape) < 0.01] = 0
    return p.astype(np.int64), g * unit, PatternHint(250, cls, cover, unit)


@given(shape=st.tuples(st.integers(8, 90), st.integers(8, 90)), factor=st.sampled_from([1, 2, 3, 4]), cls=st.integers(0, 2),
       unit=st.sampled_from([1, -1, 257, -16]), seed=st.integers(0, 2**16))
def test_pattern_round_trip(test_pattern, shape, factor, cls, unit, seed):
    _, arr, _ = test_pattern
    p, g, hint = _patterned(arr, cls, shape, factor, unit, seed)
    code = kernels.encode_perturbation(p, "pattern", grid=g, factor=factor, pattern=hint)
    assert np.array_equal(kernels.decode_perturbation(code), p)
    auto = kernels.encode_perturbation(p, grid=g, factor=factor, pattern=hint)  # auto: pattern or grid, the smaller
    assert np.array_equal(kernels.decode_perturbation(auto), p)


def test_pattern_codes_a_dense_pattern_for_little(test_pattern):
    """The point of the codec: a dense pattern plus sparse changes costs a fraction of coding it."""
    _, arr, _ = test_pattern
    p, g, hint = _patterned(arr, 1, (224, 224), 2, 1, 0, smooth=True)
    with_pattern = kernels.encode_perturbation(p, grid=g, factor=2, pattern=hint)
    without = kernels.encode_perturbation(p, grid=g, factor=2)
    assert kernels.codecs.codec_name(with_pattern) == "auto:pattern"
    assert len(with_pattern) * 3 < len(without)


def test_pattern_refused_when_unknown_or_changed(test_pattern):
    from medrae.kernels import PayloadError, patterns

    _, arr, folder = test_pattern
    p, g, hint = _patterned(arr, 0, (64, 64), 2, 1, 3)
    code = kernels.encode_perturbation(p, "pattern", grid=g, factor=2, pattern=hint)
    bad = bytearray(code)
    bad[bad.index(bytes([250, 0, 2]))] = 251  # another pattern id
    with pytest.raises(PayloadError, match="unknown transfer pattern id 251"):
        kernels.decode_perturbation(bytes(bad))
    changed = arr.copy()
    changed[0, 0, 0] += 1
    np.save(folder / "test_v0.npy", changed)
    patterns.load.cache_clear()
    try:
        with pytest.raises(PayloadError, match="does not match its SHA-256"):
            kernels.decode_perturbation(code)
    finally:
        np.save(folder / "test_v0.npy", arr)
        patterns.load.cache_clear()


def test_pattern_needs_its_hints():
    with pytest.raises(ValueError, match="needs the grid, factor and pattern hints"):
        kernels.encode_perturbation(np.zeros((8, 8), np.int16), "pattern")
