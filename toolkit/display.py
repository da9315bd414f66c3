"""The intensity window through which an image is seen: what the networks get as their 8-bit view,
and what one perturbation level (1/255 of it) means in the image's own units.

An 8-bit image is its own view. A deeper one (12-16 bit DICOM, 16-bit PNG/TIFF) rarely fills its
bit depth: a chest radiograph stored in 12 bits may use 500..3000 of 0..4095, and every reader,
human or model, sees it through a window (the DICOM VOI window, or the data's own range). Scaling
by the bit depth instead gave the networks a dim, low-contrast view unlike the one an analysing
model takes, and a perturbation measured in the wrong units: on 90 cxr3 val X-rays mapped to
500..3050 of 12 bits, protect fooled ResNet18 on 93 % of the full-scale views but on only 44 % of
the windowed ones, where its changes reached 19 levels for eps 8 (benchmarks/probe_window.py
against the code before this module; docs/USAGE.md).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .imageio import Image


def display_window(image: Image) -> tuple[float, float]:
    """``(low, high)``: the native values shown as 0 and 255 (before any MONOCHROME1 inversion).

    8-bit: ``(0, 255)``. Deeper: the DICOM linear VOI window (first WindowCenter/WindowWidth,
    mapped through RescaleSlope/Intercept to stored values) when the file has one, else the
    image's own minimum and maximum; ``(0, ceiling)`` for a constant image.
    """
    if image.ceiling == 255:
        return 0.0, 255.0
    window = _dicom_window(image.dataset) if image.kind == "dicom" and image.dataset is not None else None
    if window is None:
        low, high = float(image.pixels.min()), float(image.pixels.max())
        window = (low, high) if high > low else (0.0, float(image.ceiling))
    return window


def level_size(image: Image) -> int:
    """Native units of one perturbation level: 1/255 of the display window, at least 1."""
    low, high = display_window(image)
    return max(1, int(round((high - low) / 255.0)))


def to_view(image: Image) -> np.ndarray:
    """The image through its window as uint8 (MONOCHROME1 inverted), at its own resolution."""
    x = image.pixels
    if image.ceiling != 255:
        low, high = display_window(image)
        x = np.clip(np.round((x.astype(np.float64) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    return 255 - x if image.monochrome1 else x


def _dicom_window(ds: Any) -> Optional[tuple[float, float]]:
    """The first linear VOI window of ``ds`` in stored pixel values, or None (no window, a
    VOI LUT table, a sigmoid function, or values that do not make a window)."""
    def first(value: Any) -> Optional[float]:  # a number, or the first of several (MultiValue)
        if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            value = value[0] if len(value) else None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    if "VOILUTSequence" in ds or str(ds.get("VOILUTFunction", "LINEAR")).upper() not in ("LINEAR", "LINEAR_EXACT"):
        return None
    center, width = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    slope, intercept = first(ds.get("RescaleSlope", 1.0)), first(ds.get("RescaleIntercept", 0.0))
    if center is None or width is None or not width >= 1 or not slope or slope <= 0 or intercept is None:
        return None
    # DICOM PS3.3 C.11.2.1.2.1: linear from c - 0.5 - (w - 1) / 2 to c - 0.5 + (w - 1) / 2
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    low, high = (low - intercept) / slope, (high - intercept) / slope
    return (low, high) if high > low else None
