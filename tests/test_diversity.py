"""The transfer stage's drawn pipelines (toolkit/diversity.py): resizes that match PIL, exact adjoints,
keyed draws."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from medrae.toolkit import diversity


@pytest.mark.parametrize("kernel, resample", [("triangle", PILImage.BILINEAR), ("cubic", PILImage.BICUBIC),
                                               ("box", PILImage.BOX), ("nearest", PILImage.NEAREST)])
@pytest.mark.parametrize("size", [96, 128, 150, 224, 320])
def test_resize_matrices_match_pil(kernel, resample, size):
    x = np.random.default_rng(size).integers(0, 256, (224, 224)).astype(np.float32)
    m = diversity.resize_matrix(224, size, kernel, antialias=True)
    ours = m @ x.astype(np.float64) @ m.T
    theirs = np.asarray(PILImage.fromarray(x).resize((size, size), resample))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_without_antialiasing_a_downscale_reads_only_two_pixels_per_output():
    m = diversity.resize_matrix(224, 112, "triangle", antialias=False)
    # OpenCV's INTER_LINEAR at exactly half size: each output is the mean of a pixel pair, no wider
    assert ((m > 0).sum(1) == 2).all() and np.allclose(m.sum(1), 1)
    assert ((diversity.resize_matrix(224, 112, "triangle", antialias=True)[1:-1] > 0).sum(1) == 4).all()


def test_bad_lengths_and_kernels_are_refused():
    with pytest.raises(ValueError, match="lengths"):
        diversity.resize_matrix(0, 4)
    with pytest.raises(ValueError, match="unknown kernel"):
        diversity.resize_matrix(8, 4, "lanczos9")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_pull_back_is_the_exact_adjoint_of_the_drawn_pipeline(seed):
    rng = np.random.default_rng(seed)
    mats = [diversity.draw(rng) for _ in range(2)]
    x = rng.normal(size=(2, 224, 224)).astype(np.float32)
    g = rng.normal(size=(3, 2, 224, 224))
    y = diversity.apply(x, mats)
    back = diversity.pull_back(g, mats)
    for m in range(3):  # <T x, g> == <x, T^T g>, per classifier
        np.testing.assert_allclose((y * g[m]).sum(), (x * back[m]).sum(), rtol=1e-4)


def test_a_constant_image_stays_constant_through_every_pipeline():
    rng = np.random.default_rng(3)
    mats = [diversity.draw(rng) for _ in range(20)]
    y = diversity.apply(np.full((20, 224, 224), 77, np.float32), mats)
    np.testing.assert_allclose(y, 77, atol=1e-3)  # rows of every matrix sum to one: nothing darkens or brightens


def test_draws_come_from_the_key_and_the_image():
    views = np.random.default_rng(0).integers(0, 256, (2, 224, 224)).astype(np.uint8)
    first = lambda rngs: [diversity.draw(r)[0] for r in rngs]  # noqa: E731
    a, again, other = first(diversity.rngs(views, bytes(32))), first(diversity.rngs(views, bytes(32))), first(diversity.rngs(views, bytes([1]) * 32))
    public = first(diversity.rngs(views, None))
    np.testing.assert_array_equal(a[0], again[0])
    assert not np.array_equal(a[0], other[0]) and not np.array_equal(a[0], public[0])
    assert not np.array_equal(a[0], a[1])  # another image, another draw
