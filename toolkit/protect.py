"""Protect on the shipped ONNX models: segment → ROI → generator → exact integer perturbation →
reversible embedding (kernels). No PyTorch at run time.

Networks run at 224x224 (the images are resized for them); this module handles 224x224 8-bit
images, the size of the training data. (Other sizes and bit depths: toolkit pipeline.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

import kernels
from kernels.resample import upsample

from .masks import postprocess
from .ort import session

NET_SIZE = 224
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) → float32 (N, 1, H, W) network input, ``(x / 255 - 0.5) / 0.25``."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.25)[:, None]


@dataclass
class Protected:
    """One image's result: ``marked``/``info`` are None and ``error`` says why when it was refused."""

    marked: Optional[np.ndarray]
    roi: np.ndarray
    adversarial: np.ndarray
    info: Optional[kernels.ProtectInfo]
    error: Optional[str] = None


class Protector:
    """Holds the segmenter and generator sessions; protects batches of 224x224 uint8 images."""

    def __init__(self, models_dir: Path | str = MODELS_DIR, device: str = "auto", eps: Optional[int] = None,
                 dilation: Optional[int] = None, segmenter: str = "segmenter.onnx", generator: str = "generator.onnx"):
        models_dir = Path(models_dir)
        self.gen_card = json.loads((models_dir / generator).with_suffix(".json").read_text())
        self.seg = session(models_dir / segmenter, device)
        self.gen = session(models_dir / generator, device)
        self.eps = int(eps if eps is not None else round(self.gen_card["eps"]))  # 1/255 units
        self.factor = int(self.gen_card.get("grid_factor", 1))
        self.dilation = int(dilation if dilation is not None else self.gen_card.get("roi_dilation_px", 4))

    def roi(self, images: np.ndarray) -> np.ndarray:
        logits = self.seg.run(None, {"image": normalize(images)})[0][:, 0]
        return np.stack([postprocess(l, self.dilation) for l in logits])

    def perturbation(self, images: np.ndarray, rois: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Integer perturbations (N, H, W) zero on the ROI, and their grids (grid models)."""
        raw = self.gen.run(None, {"image": normalize(images), "mask": rois[:, None].astype(np.float32)})[0][:, 0]
        values = np.clip(np.round(raw * self.eps), -self.eps, self.eps).astype(np.int64)  # raw is in [-1, 1]
        if self.factor == 1:
            return np.where(rois, 0, values), None
        shape = images.shape[1:]
        full = np.stack([upsample(g, self.factor, shape) for g in values])
        return np.where(rois, 0, full), values

    def protect(self, images: np.ndarray, key: Optional[bytes], method: Optional[str] = None) -> list[Protected]:
        """Protect a batch (N, 224, 224) uint8; each result has been checked to restore, or carries
        the reason it was refused (payload does not fit), and nothing was produced for it."""
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (NET_SIZE, NET_SIZE):
            raise ValueError(f"expected (N, {NET_SIZE}, {NET_SIZE}) uint8, got {images.shape} {images.dtype}")
        rois = self.roi(images)
        deltas, grids = self.perturbation(images, rois)
        out = []
        for k, image in enumerate(images):
            adv = np.clip(image.astype(np.int64) + deltas[k], 0, 255).astype(np.uint8)
            hints = {"grid": grids[k], "factor": self.factor} if grids is not None else {}
            try:
                marked, info = kernels.protect_array(image, adv, key, eps=self.eps, method=method, **hints)
            except kernels.CapacityError as exc:
                out.append(Protected(None, rois[k], adv, None, f"{exc} (short by {exc.needed_bits - exc.capacity_bits} bits)"))
                continue
            out.append(Protected(marked, rois[k], adv, info))
        return out
