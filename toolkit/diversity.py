"""Keyed input diversity for the transfer stage: what an unknown pipeline may do before its model.

Someone else's classifier does not read our 224x224 view as it is: it resizes it (to 128-320 px,
with or without antialiasing), crops or shifts it. The transfer stage (:class:`toolkit.refine.
TransferStage`) therefore computes each step's gradient through one such pipeline, drawn at random
(expectation over transformation, "diverse inputs"): a perturbation that fools the surrogates
through many pipelines is more likely to fool an unseen model behind an unknown one.

Every transformation here is linear and separable, ``y = R x C^T`` with ``R, C`` (224, 224), so the
gradient goes back exactly as ``R^T g C``. The draws come from a generator seeded per image: with a
key, from the key (HMAC), so that whoever runs the public stage again on a file (the ``replay``
attack, evaluation/adaptive.py) walks another path and estimates less of what was added.

Measured on cxr3/val (docs/STRENGTH.md, "Drawn pipelines"): no level uses it. The plain stage
transferred as well, kept as much under the replay and more under an attacker's nearest resize.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional

import numpy as np

SIZE = 224
# (kernel, antialias): nearest; bilinear without antialiasing (OpenCV's and TensorFlow's default);
# bilinear and bicubic with it (PIL's); area (box; OpenCV INTER_AREA)
METHODS = (("nearest", False), ("triangle", False), ("triangle", True), ("cubic", True), ("box", True))
SIZES = (128, 320)  # the target sizes drawn (inclusive)
MAX_SHIFT = 8  # px on the 224 view, each axis (a small crop or shift)


def _kernel(name: str, x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    if name == "box":
        return ((x > -0.5) & (x <= 0.5)).astype(np.float64)  # PIL's edges
    if name == "triangle":
        return np.maximum(0.0, 1.0 - ax)
    a = -0.5  # PIL's bicubic
    return np.where(ax < 1, (a + 2) * ax**3 - (a + 3) * ax**2 + 1, np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0))


def resize_matrix(n_in: int, n_out: int, kernel: str = "triangle", antialias: bool = True) -> np.ndarray:
    """(n_out, n_in) weights of a 1-D resize with half-pixel centres (as PIL and OpenCV place them).

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths (>= 1).
    kernel : {"nearest", "box", "triangle", "cubic"}
        ``triangle`` is bilinear, ``cubic`` PIL's bicubic (a = -0.5), ``box`` area averaging.
    antialias : bool
        Widen the kernel by the downscale factor (PIL; OpenCV's INTER_AREA); False samples the
        kernel at input spacing (OpenCV's and TensorFlow's bilinear default), which aliases.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"lengths must be >= 1, got {n_in} -> {n_out}")
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale
    if kernel == "nearest":
        m = np.zeros((n_out, n_in))
        # the centre accumulated step by step as PIL does, so that centres on a pixel edge fall the same way
        src = np.cumsum(np.r_[0.5 * scale, np.full(n_out - 1, scale)])
        m[np.arange(n_out), np.clip(src.astype(np.int64), 0, n_in - 1)] = 1.0
        return m
    if kernel not in ("box", "triangle", "cubic"):
        raise ValueError(f"unknown kernel {kernel!r}")
    width = max(scale, 1.0) if antialias or kernel == "box" else 1.0
    src = np.arange(n_in) + 0.5
    w = _kernel(kernel, (src[None, :] - centres[:, None]) / width)  # weights past the edges dropped, as PIL does
    if not w.sum(1).all():  # a box narrower than the spacing can miss every centre: take the nearest
        empty = w.sum(1) == 0
        w[empty, np.minimum(np.floor(centres[empty]).astype(np.int64), n_in - 1)] = 1.0
    return w / w.sum(1, keepdims=True)


def shift_matrix(n: int, shift: int) -> np.ndarray:
    """(n, n): ``y[i] = x[clip(i + shift)]`` (a crop of ``shift`` px, the edge repeated)."""
    m = np.zeros((n, n))
    m[np.arange(n), np.clip(np.arange(n) + shift, 0, n - 1)] = 1.0
    return m


def draw(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One random pipeline's row and column matrices (R, C), each (size, size): shift, resize to a
    drawn size with a drawn method, and bilinear back to ``size`` (what the surrogates read)."""
    kernel, antialias = METHODS[rng.integers(len(METHODS))]
    target = int(rng.integers(SIZES[0], SIZES[1] + 1))
    back = resize_matrix(target, size, "triangle", True)
    there = resize_matrix(size, target, kernel, antialias)
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2)
    return ((back @ there @ shift_matrix(size, int(dy))).astype(np.float32),
            (back @ there @ shift_matrix(size, int(dx))).astype(np.float32))


def view_rngs(views: np.ndarray, key: Optional[bytes], label: bytes, public: bytes = b"") -> list[np.random.Generator]:
    """One generator per (N, H, W) view, seeded from HMAC-SHA256(key, ``label`` + SHA-256(view)), or
    without a key from SHA-256(``public`` + SHA-256(view)) (public draws)."""
    out = []
    for v in views:
        digest = hashlib.sha256(np.ascontiguousarray(v).tobytes()).digest()
        seed = hmac.new(bytes(key), label + digest, hashlib.sha256).digest() if key is not None \
            else hashlib.sha256(public + digest).digest()
        out.append(np.random.default_rng(np.frombuffer(seed, np.uint32)))
    return out


def rngs(views: np.ndarray, key: Optional[bytes]) -> list[np.random.Generator]:
    """The pipelines' generators, one per view: from the key and the view's pixels (without a key
    the draws are public)."""
    return view_rngs(views, key, b"medrae transfer diversity v1", b"medrae transfer diversity public v1")


def apply(images: np.ndarray, mats: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each (H, W) image through its (R, C): ``R x C^T`` (float32)."""
    return np.stack([r @ x.astype(np.float32) @ c.T for x, (r, c) in zip(images, mats)])


def pull_back(grads: np.ndarray, mats: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Gradients (M, N, H, W) with respect to the transformed images → with respect to the images
    (``R^T g C`` for each image's (R, C), every classifier alike)."""
    out = np.empty(grads.shape, np.float32)
    for k, (r, c) in enumerate(mats):
        out[:, k] = r.T @ grads[:, k].astype(np.float32) @ c
    return out
