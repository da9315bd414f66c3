"""Training-side data helpers; the dataset loader itself lives in :mod:`toolkit.datasets`."""
from __future__ import annotations

from medrae.toolkit.datasets import CLASSES, Split, load_split  # noqa: F401


def normalize(x_uint8):
    """uint8 pixels → network input: ``(x / 255 - 0.5) / 0.25`` (the shipped models' convention)."""
    return (x_uint8.float() / 255.0 - 0.5) / 0.25
