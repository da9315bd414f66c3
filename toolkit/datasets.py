"""Dataset directories (``<class>/images/*.png`` + optional ``<class>/masks/*.png``), in memory.

NumPy and Pillow only: used at run time (evaluation) and by training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("normal", "covid", "viral_pneumonia")


@dataclass
class Split:
    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray | None  # (N, H, W) bool, or None when any mask is missing
    labels: np.ndarray  # (N,) int64, index into ``classes``
    names: list[str]
    classes: tuple[str, ...]


def load_split(root: Path | str, classes: tuple[str, ...] | None = None) -> Split:
    """Read one split folder. Classes are the sub-folders (in ``CLASSES`` order when they match)."""
    from PIL import Image

    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{root}: no <class>/images folders (expected a dataset directory)")
    if classes is None:
        classes = tuple(c for c in CLASSES if c in found) + tuple(c for c in found if c not in CLASSES)
    images, masks, labels, names = [], [], [], []
    have_masks = True
    for ci, c in enumerate(classes):
        for p in sorted((root / c / "images").glob("*.png")):
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("L")))
            m = root / c / "masks" / p.name
            if m.exists():
                with Image.open(m) as im:
                    masks.append(np.asarray(im.convert("L")) > 127)
            else:
                have_masks = False
            labels.append(ci)
            names.append(f"{c}/{p.name}")
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"{root}: images must share one size for training, found {sorted(shapes)[:3]}")
    return Split(
        np.stack(images),
        np.stack(masks) if have_masks and masks else None,
        np.array(labels, dtype=np.int64),
        names,
        tuple(classes),
    )
