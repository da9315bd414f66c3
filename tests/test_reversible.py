"""Array-level protect → restore: bit-exact, or a specific error; never a wrong image."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medrae import kernels
from medrae.kernels.resample import downsample, grid_shape, upsample
from medrae.toolkit.phantoms import chest_phantom

KEY = os.urandom(32)


def adversarial(image, mask, eps, seed, factor=4):
    """A coarse-grid ±eps perturbation outside the mask, clipped to the image range."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-eps, eps + 1, grid_shape(image.shape, factor))
    g[downsample(mask.astype(np.int64), factor) > 0] = 0
    p = np.where(mask, 0, upsample(g, factor, image.shape))
    top = np.iinfo(image.dtype).max
    return np.clip(image.astype(np.int64) + p, 0, top).astype(image.dtype)


@given(seed=st.integers(0, 10_000), eps=st.integers(1, 16), key=st.sampled_from([KEY, None]),
       method=st.sampled_from(["pee", "hs"]), factor=st.sampled_from([2, 4, 8]))
def test_protect_restore_exact(seed, eps, key, method, factor):
    image, mask = chest_phantom(seed % 50)
    adv = adversarial(image, mask, eps, seed, factor)
    try:
        marked, info = kernels.protect_array(image, adv, key, eps=eps, method=method)
    except kernels.CapacityError:
        # uniform random grids are the worst case; from factor 4 on PEE always has room
        assert method == "hs" or factor == 2
        return
    assert np.array_equal(kernels.restore_array(marked, key), image)
    assert info.method == method and info.payload_bits > info.coded_bits
    if method == "pee" and info.passes <= 2:
        # one pass per rhombus set: every pixel moves by at most 1, except pixels at 0/255 which
        # are first moved one step inwards (overflow safety) and may then move one more
        change = np.abs(marked.astype(int) - adv)
        at_bound = (adv == 0) | (adv == 255)
        assert change[~at_bound].max() <= 1 and change.max() <= 2


def test_sixteen_bit():
    """A perturbation made on the 8-bit scale (x257) costs no more than the 8-bit one."""
    image, mask = chest_phantom(3, (256, 240), np.uint16)
    image8 = (image // 257).astype(np.uint8)
    adv8 = adversarial(image8, mask, 8, 1)
    p = (adv8.astype(np.int64) - image8) * 257
    adv = np.clip(image.astype(np.int64) + p, 0, 65535).astype(np.uint16)
    marked, info = kernels.protect_array(image, adv, KEY, eps=8 * 257)
    assert marked.dtype == np.uint16 and np.array_equal(kernels.restore_array(marked, KEY), image)
    _, info8 = kernels.protect_array(image8, adv8, KEY, eps=8)
    assert info.coded_bits <= info8.coded_bits * 1.1 + 400  # + the sparse clipping exceptions


def test_rejects_perturbation_beyond_eps():
    image, mask = chest_phantom(1)
    adv = adversarial(image, mask, 8, 1)
    with pytest.raises(ValueError, match="exceeds eps=4"):
        kernels.protect_array(image, adv, KEY, eps=4)


def test_rejects_mismatched_images():
    image, _ = chest_phantom(1)
    with pytest.raises(ValueError, match="must match"):
        kernels.protect_array(image, image[:, :-1].copy(), KEY, eps=8)


def test_restore_errors():
    image, mask = chest_phantom(2)
    marked, _ = kernels.protect_array(image, adversarial(image, mask, 8, 2), KEY, eps=8)
    with pytest.raises(kernels.KeyMismatchError):
        kernels.restore_array(marked, os.urandom(32))
    with pytest.raises(kernels.KeyMismatchError):
        kernels.restore_array(marked, None)
    with pytest.raises(kernels.NotProtectedError):
        kernels.restore_array(image, KEY)


def test_tampered_pixels_never_restore_to_a_wrong_image():
    image, mask = chest_phantom(4)
    marked, _ = kernels.protect_array(image, adversarial(image, mask, 8, 4), KEY, eps=8)
    rng = np.random.default_rng(0)
    for _ in range(60):
        t = marked.copy()
        i, j = rng.integers(0, image.shape[0], 2)
        t[i, j] = (int(t[i, j]) + rng.integers(1, 255)) % 256
        try:
            out = kernels.restore_array(t, KEY)
        except kernels.MedraeError:
            continue
        assert np.array_equal(out, image)  # only if the change missed everything that matters


def test_inspect_without_key():
    image, mask = chest_phantom(5)
    marked, info = kernels.protect_array(image, adversarial(image, mask, 8, 5), KEY, eps=8, codec="grid")
    d = kernels.inspect_array(marked)
    assert d["encrypted"] and d["codec"] == "grid" and d["rdh_method"] == "pee" and d["eps"] == 8
    assert d["payload_bits"] == info.payload_bits and d["shape"] == [224, 224]
    assert d["rdh_frozen_fraction"] == 0.0 and kernels.frozen_region(marked) is None


def test_inspect_reports_the_frozen_region():
    """The region the hiding left alone is read from the marked image alone: it holds the mask
    given to protect, and its pixels are the adversarial image's (no key, no extraction)."""
    image, mask = chest_phantom(5)
    adv = adversarial(image, mask, 8, 5)
    marked, _ = kernels.protect_array(image, adv, KEY, eps=8, codec="grid", frozen=mask)
    region = kernels.frozen_region(marked)
    assert region.shape == mask.shape and region.dtype == np.bool_
    assert (region >= mask).all() and region.mean() < 0.9
    inner = region[1:-1, 1:-1]  # the border's reserved pixels carry side information in their LSBs
    assert np.array_equal(marked[1:-1, 1:-1][inner], adv[1:-1, 1:-1][inner])
    d = kernels.inspect_array(marked)
    assert d["rdh_frozen_fraction"] == pytest.approx(region.mean(), abs=1e-4) and d["rdh_frozen_fraction"] >= mask.mean()
    with pytest.raises(kernels.NotProtectedError):
        kernels.frozen_region(image)
