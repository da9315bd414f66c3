"""Segmentation quality control (toolkit/qc.py) and the --on-uncertain-roi policies."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from medrae.cli import app
from medrae.toolkit import qc
from medrae.toolkit.phantoms import chest_phantom


def _logits(mask: np.ndarray, sharp: float = 8.0) -> np.ndarray:
    """Confident logits for a 0/1 mask (lung +sharp, elsewhere -sharp)."""
    return np.where(mask, sharp, -sharp).astype(np.float32)


def _two_lungs(shape=(224, 224)) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    left = ((x - 0.32 * w) / (0.12 * w)) ** 2 + ((y - 0.47 * h) / (0.27 * h)) ** 2 < 1
    right = ((x - 0.68 * w) / (0.12 * w)) ** 2 + ((y - 0.47 * h) / (0.27 * h)) ** 2 < 1
    return left | right


def test_a_plausible_mask_raises_no_flag():
    lungs = _two_lungs()
    a = qc.assess(_logits(lungs), [qc.probability(_logits(lungs).astype(np.float64))] * 3)
    assert a.flags == [] and not a.uncertain and 2 == a.measures["lungs"]


@pytest.mark.parametrize("damage, flag", [
    ("one lung", "lungs"), ("no lungs", "area"), ("shifted", "place"), ("bitten", "concave"), ("hesitant", "hesitant"), ("views", "views"),
])
def test_each_implausible_mask_is_flagged(damage, flag):
    lungs = _two_lungs()
    logits = _logits(lungs)
    views = [qc.probability(logits.astype(np.float64))] * 3
    if damage == "one lung":
        logits = _logits(lungs & (np.mgrid[0:224, 0:224][1] < 112))
    elif damage == "no lungs":
        logits = _logits(np.zeros_like(lungs))
    elif damage == "shifted":
        logits = _logits(np.roll(lungs, 70, axis=0))
    elif damage == "bitten":  # a large concave bite out of each lung (an opacity the segmenter missed)
        y, x = np.mgrid[0:224, 0:224]
        notch = (np.abs(y - 105) < 35) & ((x < 78) | (x > 146))  # from each lung's outer edge inwards
        logits = _logits(lungs & ~notch)
    elif damage == "hesitant":  # probabilities near 0.5 over a wide band
        logits = np.where(lungs, 8.0, 0.0).astype(np.float32) - 0.5 * (1 - lungs)
    elif damage == "views":  # the test-time views find other lungs
        views = [qc.probability(_logits(np.roll(lungs, 30, axis=1)).astype(np.float64))] * 3
    if damage != "views":
        views = [qc.probability(logits.astype(np.float64))] * 3
    a = qc.assess(logits, views)
    assert flag in a.flags, (damage, a.flags, a.measures)
    assert a.uncertain and a.reason()


def test_an_roi_far_from_its_hulls_is_flagged_even_when_the_mask_is_plausible():
    """The ROI protect keeps (the union of the views' masks, dilated) can be concave where the
    mask at 50 % is not: a view that found a blob reaching out of one lung (covid_00421 of
    cxr3/test: an L-shaped ROI, 370 true-lung pixels perturbed beside it before this measure)."""
    from medrae.toolkit.masks import dilate

    lungs = _two_lungs()
    logits = _logits(lungs)
    views = [qc.probability(logits.astype(np.float64))] * 3
    roi = dilate(lungs, 4)
    assert qc.assess(logits, views, roi).flags == []
    y, x = np.mgrid[0:224, 0:224]
    arm = (np.abs(y - 45) < 5) & (x < 75) | (np.abs(x - 8) < 5) & (y > 40) & (y < 215)  # an L out of the top of a lung and down
    a = qc.assess(logits, views, roi | arm)
    assert a.measures["roi_solidity"] < qc.LIMITS["roi_solidity"] <= qc.assess(logits, views, roi).measures["roi_solidity"]
    assert "concave" in a.flags and not a.implausible
    with pytest.raises(ValueError, match="roi"):
        qc.assess(logits, views, roi[:100])


def test_widen_and_guard_only_add_pixels():
    lungs = _two_lungs()
    prob = qc.probability(_logits(lungs).astype(np.float64))
    ok = qc.assess(_logits(lungs))
    wide = qc.widen(lungs, prob, ok)
    assert (wide >= lungs).all() and wide.sum() > lungs.sum()
    one = lungs & (np.mgrid[0:224, 0:224][1] < 112)
    bad = qc.assess(_logits(one))
    assert bad.implausible and qc.widen(one, prob, bad)[qc.lung_field(one.shape)].all()  # the whole lung field
    g = qc.guard(lungs, prob)
    assert (g >= lungs).all()


def test_qc_limits_must_be_named_measures():
    with pytest.raises(ValueError, match="float"):
        qc.assess(np.zeros((8, 8), np.uint8))


def test_skip_policy_writes_nothing_and_reports_the_file(tmp_path):
    """A view with no lungs at all (a flat grey field): skip refuses it by name; proceed and
    widen protect it (widen: with the conservative ROI, the whole lung field)."""
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(chest_phantom(0)[0]).save(src / "chest.png")
    PILImage.fromarray(np.full((224, 224), 128, np.uint8) + (np.random.default_rng(0).integers(0, 3, (224, 224))).astype(np.uint8)).save(src / "flat.png")
    runner = CliRunner()
    r = runner.invoke(app, ["protect", str(src), str(tmp_path / "skip"), "--no-encrypt", "--on-uncertain-roi", "skip",
                            "--report", str(tmp_path / "s.json"), "--workers", "1"])
    files = {f["input"].split("/")[-1]: f for f in json.loads((tmp_path / "s.json").read_text())["files"]}
    assert files["flat.png"]["status"] == "failed" and "uncertain lung segmentation" in files["flat.png"]["reason"]
    assert not (tmp_path / "skip" / "flat.png").exists() and r.exit_code == 1
    assert "flat.png" in " ".join(r.output.split())
    r = runner.invoke(app, ["protect", str(src), str(tmp_path / "widen"), "--no-encrypt", "--report", str(tmp_path / "w.json"), "--workers", "1"])
    wide = {f["input"].split("/")[-1]: f for f in json.loads((tmp_path / "w.json").read_text())["files"]}
    assert wide["flat.png"]["roi_flags"] and wide["flat.png"]["status"] in ("protected", "failed")
    if wide["flat.png"]["status"] == "protected":
        assert wide["flat.png"]["roi_fraction"] >= qc.lung_field((224, 224)).mean() - 0.01
    r = runner.invoke(app, ["protect", str(src), str(tmp_path / "x"), "--no-encrypt", "--on-uncertain-roi", "maybe"])
    assert r.exit_code == 2 and "--on-uncertain-roi" in r.output


def test_the_joined_roi_of_a_real_x_ray_is_flagged_and_widened_over_its_lung():
    """covid_00421 of cxr3/test: the mirrored view joins the two lungs' ROIs across the mediastinum
    and the segmenter misses the left base; before the ROI-hull measure no flag was raised and the
    perturbation reached 370 true-lung pixels. Flagged now, and ``widen`` covers every true-lung pixel."""
    from conftest import CXR3, load_gray
    from medrae.toolkit.protect import Protector

    image, mask = CXR3 / "test/covid/images/covid_00421.png", CXR3 / "test/covid/masks/covid_00421.png"
    if not (image.is_file() and mask.is_file()):
        pytest.skip(f"real chest X-ray not found at {image} (set MEDRAE_CXR3 to the cxr3 folder)")
    lung = load_gray(mask) > 127
    seg = Protector(refine_steps=0).segment(load_gray(image)[None])
    a = seg.assessments[0]
    assert (lung & ~seg.plain[0]).sum() > 250  # the miss the flag is for (271 px outside the 1 % ROI)
    assert a.measures["roi_solidity"] < qc.LIMITS["roi_solidity"] and "concave" in a.flags
    assert not (lung & ~seg.rois[0]).any()
