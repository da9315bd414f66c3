"""Shared fixtures: the real cxr3 data (skipped with a reason when absent) and phantoms."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
CXR3 = Path(os.environ.get("MEDRAE_CXR3", ROOT.parent / "shared" / "data" / "cxr3"))

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.register_profile("heavy", max_examples=500, deadline=None)  # HYPOTHESIS_PROFILE=heavy
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def cxr3_images(split: str = "*") -> list[Path]:
    return sorted(CXR3.glob(f"{split}/*/images/*.png"))


@pytest.fixture(scope="session")
def cxr3_paths() -> list[Path]:
    paths = cxr3_images()
    if not paths:
        pytest.skip(f"real chest X-rays not found at {CXR3} (set MEDRAE_CXR3 to the cxr3 folder)")
    return paths


def load_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """train/val/test dataset directories of 224x224 phantoms (the networks' input size), 3 classes x 4 images."""
    from PIL import Image

    from medrae.toolkit.phantoms import chest_phantom

    root = tmp_path_factory.mktemp("phantoms")
    k = 0
    for split in ("train", "val", "test"):
        for ci, cls in enumerate(("normal", "covid", "viral_pneumonia")):
            (root / split / cls / "images").mkdir(parents=True)
            (root / split / cls / "masks").mkdir(parents=True)
            for i in range(4):
                img, mask = chest_phantom(k)
                img = np.clip(img.astype(int) + 25 * ci, 0, 255).astype(np.uint8)  # a learnable class cue
                Image.fromarray(img).save(root / split / cls / "images" / f"{cls}_{i}.png")
                Image.fromarray((mask * 255).astype(np.uint8)).save(root / split / cls / "masks" / f"{cls}_{i}.png")
                k += 1
    return root


@pytest.fixture(scope="session")
def tiny_models(phantom_dataset, tmp_path_factory):
    """Random-weight segmenter and grid generator, exported to ONNX with cards."""
    torch = pytest.importorskip("torch")
    from medrae.export import onnx_export as ex
    from medrae.models import create
    from medrae.models.train import build

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gen = create("advgan_grid", eps=8.0)
    with torch.no_grad():  # make sure the untrained generator emits non-zero values
        gen.out.bias.fill_(0.5)
    states = {
        "segmenter": {"arch": "unet_small", "size": 112, "model": build("segmenter", "unet_small", 112).state_dict()},
        "generator": {"arch": "advgan_grid", "eps": 8.0, "model": gen.state_dict(), "dilate": 2},
    }
    data = phantom_dataset / "test"
    for kind, state in states.items():
        torch.save(state, out / f"{kind}.pt")
        assert ex.main([kind, str(out / f"{kind}.pt"), str(out / f"{kind}.onnx"), "--data", str(data)]) == 0
    return out


@pytest.fixture
def without_one_step_check(monkeypatch):
    """A function that makes ``kernels.rdh`` embed without its one-step check from then on (nothing
    watched), to show what the check prevents."""
    from medrae.kernels import rdh

    checked = rdh._try_one_step

    def disable() -> None:
        monkeypatch.setattr(rdh, "_try_one_step", lambda method, state, content, work, watch, excluded: checked(method, state, content, work, None, excluded))

    return disable
