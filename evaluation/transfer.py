"""The transfer matrix: how often protected files fool classifiers the protection never saw.

The held-out targets are the zoo's (``models/zoo.py``: independently trained, families no surrogate
has, each with its own input size and preprocessing). A method's saved 8-bit images go through the
attacker's conditions (the file as it is, or re-encoded as JPEG 90 / 75: the target's own resize is
part of its pipeline; or resized to the target's input size by another method first, ``RESIZES``),
and for each target the ASR counts, over the images the target classifies correctly in the same
condition without protection, those it no longer does.

The floor is uniform random noise of ±eps on the whole image (``noise_floor``): a protection that
does not beat it has learned nothing that transfers. PyTorch is needed (the ``train`` extra).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

def jpeg(q: int) -> Callable[[np.ndarray], np.ndarray]:
    """One 8-bit grey image re-encoded as JPEG at quality ``q`` and decoded (an attacker's re-save)."""

    def f(x: np.ndarray) -> np.ndarray:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("L"))

    return f


def _each(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda images: np.stack([f(x) for x in images])


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {"file": None, "jpeg90": _each(jpeg(90)), "jpeg75": _each(jpeg(75))}
# an attacker's own resize to the target's input size before it (the target's antialiased bilinear
# resize then has nothing left to do): (kernel, antialias) of toolkit/diversity.py's resize_matrix
RESIZES: dict[str, tuple[str, bool]] = {"nearest": ("nearest", False), "bilinear_noaa": ("triangle", False),
                                         "area": ("box", True), "bicubic": ("cubic", True)}
CONDITIONS.update({name: None for name in RESIZES})


def resized(images: np.ndarray, size: int, kernel: str, antialias: bool) -> np.ndarray:
    """(N, H, H) uint8 images resized to ``size`` (rounded, clipped uint8, as a saved resize would be)."""
    from medrae.toolkit.diversity import resize_matrix

    m = resize_matrix(images.shape[-1], size, kernel, antialias)
    return np.clip(np.rint(m @ images.astype(np.float64) @ m.T), 0, 255).astype(np.uint8)


def noise_floor(images: np.ndarray, eps: int, seed: int = 0) -> np.ndarray:
    """Uniform random integer noise in ``-eps..eps`` on every pixel, clipped to 0..255 (uint8)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-eps, eps + 1, size=images.shape)
    return np.clip(images.astype(np.int64) + noise, 0, 255).astype(np.uint8)


class TransferLab:
    """The held-out targets of a trained zoo, with their clean predictions cached per condition.

    Parameters
    ----------
    zoo_dir : Path
        Where ``python -m medrae.models.zoo train`` put the members (``<zoo_dir>/<name>/best.pt``).
    images, labels : np.ndarray
        The clean (N, H, W) uint8 images and their true classes.
    conditions : sequence of str
        Keys of :data:`CONDITIONS`.
    """

    def __init__(self, zoo_dir: Path | str, images: np.ndarray, labels: np.ndarray, conditions=("file",)):
        from medrae.models import zoo

        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown transfer condition(s) {unknown}; choose from {sorted(CONDITIONS)}")
        self.names = zoo.trained(zoo_dir, "target")
        if not self.names:
            raise FileNotFoundError(f"{zoo_dir}: no trained held-out target (python -m medrae.models.zoo train --data DIR --out {zoo_dir})")
        self.models = {n: zoo.load(zoo_dir, n) for n in self.names}
        self.labels = labels
        self.conditions = tuple(conditions)
        self._correct = {(n, c): self._predict(n, c, images) == labels for n in self.names for c in self.conditions}

    def _predict(self, name: str, condition: str, images: np.ndarray) -> np.ndarray:
        from medrae.models.zoo import logits

        if condition in RESIZES:
            images = resized(images, self.models[name].spec.size, *RESIZES[condition])
        f = CONDITIONS[condition]
        return logits(self.models[name], f(images) if f else images).argmax(1)

    def accuracy(self, name: str, condition: str = "file") -> float:
        return float(self._correct[(name, condition)].mean())

    def asr(self, adversarial: np.ndarray) -> dict[str, dict[str, float]]:
        """``{condition: {target: ASR}}`` of the saved (N, H, W) uint8 ``adversarial`` images."""
        out: dict[str, dict[str, float]] = {}
        for c in self.conditions:
            out[c] = {}
            for n in self.names:
                ok = self._correct[(n, c)]
                fooled = self._predict(n, c, adversarial) != self.labels
                out[c][n] = float(fooled[ok].mean()) if ok.any() else float("nan")
        return out


def summary(asr: dict[str, float]) -> dict[str, float]:
    """Median, minimum and mean over the targets of one condition's ASR row."""
    v = np.array(list(asr.values()), dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "mean": float(v.mean())}
