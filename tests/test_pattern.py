"""protect's transfer pattern (kernels.patterns, codec 7): where it goes, what it costs, and that
every file still restores bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from medrae import kernels
from medrae.kernels.patterns import DEFAULT_PATTERN, PATTERNS, load, on_grid, pattern_id
from medrae.toolkit.imageio import Image
from medrae.toolkit.phantoms import chest_phantom
from medrae.toolkit.masks import dilate
from medrae.toolkit.settings import STRENGTHS
from medrae.toolkit.protect import PATTERN_KEEP_OUT, Protector, cells_touching, plan_perturbation, protect_with_fallback


@pytest.fixture(scope="module")
def views() -> np.ndarray:
    return np.stack([chest_phantom(k)[0] for k in range(3)])


@pytest.fixture(scope="module")
def protector() -> Protector:
    return Protector(device="cpu", on_uncertain_roi="proceed")  # phantoms: QC would widen every mask


def test_shipped_pattern_is_published_and_intact():
    name, _ = PATTERNS[DEFAULT_PATTERN]
    p = load(DEFAULT_PATTERN)  # checks the file against its recorded SHA-256
    assert p.shape == (3, 56, 56) and np.abs(p).max() <= 8 and (p != 0).mean() > 0.5
    assert pattern_id(name) == DEFAULT_PATTERN and pattern_id("none") == 0
    with pytest.raises(ValueError, match="unknown transfer pattern"):
        pattern_id("nope")
    # on a 112-cell grid each 56-grid cell covers 2x2 cells (protect's refinement grid)
    assert np.array_equal(on_grid(DEFAULT_PATTERN, 1, (112, 112)), np.repeat(np.repeat(p[1], 2, 0), 2, 1))


def test_pattern_goes_outside_the_roi_on_the_white_box_class(protector, views):
    a = protector.analyse(views)
    clean = protector.refiner.margins(views, np.full((1, len(views)), -1, np.int64), 1)[1][0]
    plain = Protector(device="cpu", on_uncertain_roi="proceed", pattern=0).analyse(views)
    for k in range(len(views)):
        use = a.pattern(k)
        assert use.pattern_id == DEFAULT_PATTERN and use.cls == clean[k]
        assert not (use.cover & cells_touching(a.rois[k], 2)).any()  # never on a cell the ROI touches
        # nor within PATTERN_KEEP_OUT px of it, where a missed lung edge lies (the refinement may go there)
        near = cells_touching(dilate(a.rois[k], PATTERN_KEEP_OUT), 2)
        assert PATTERN_KEEP_OUT > 0 and not (use.cover & near).any() and (near & ~cells_touching(a.rois[k], 2)).any()
        values = on_grid(DEFAULT_PATTERN, use.cls, (112, 112))
        lo = views[k].reshape(112, 2, 112, 2).min(axis=(1, 3)).astype(int)
        hi = views[k].reshape(112, 2, 112, 2).max(axis=(1, 3)).astype(int)
        assert ((lo + values >= 0) & (hi + values <= 255))[use.cover].all()  # no clipping where it goes
        assert not a.grids[k][cells_touching(a.rois[k], 2)].any()
        # most covered cells keep the pattern's value (the refinement moves a few of them)
        assert (a.grids[k][use.cover] == values[use.cover]).mean() > 0.5
    assert plain.patterns is None and not np.array_equal(a.grids, plain.grids)


def test_pattern_codec_pays_for_the_cover_not_the_pattern(protector, views):
    """auto keeps the smaller of grid and pattern; on an image the refinement changed little, the
    pattern codec wins (where it moved many covered cells, the two cost alike)."""
    a = protector.analyse(views)
    key = bytes(range(32))
    wins = 0
    for k, x in enumerate(views):
        image = Image(x, 255, "png")
        marked, info, plan, _, _ = protect_with_fallback(image, a.rois[k], a.grids[k], 8, key, guard=a.guards[k], pattern=a.pattern(k))
        assert np.array_equal(kernels.restore_array(marked, key), x)
        diff = plan.adversarial.astype(np.int64) - x
        hints = dict(plan.hints)
        with_pattern = kernels.encode_perturbation(diff, **hints)
        hints.pop("pattern")
        without = kernels.encode_perturbation(diff, **hints)
        assert len(with_pattern) <= len(without)
        wins += kernels.codecs.codec_name(with_pattern) == "auto:pattern" and len(with_pattern) < 0.9 * len(without)
    assert wins >= 1


@pytest.mark.parametrize("monochrome1", [False, True])
def test_pattern_on_a_deep_inverted_image_restores(protector, views, monochrome1):
    """A 12-bit image (16 units per level) and MONOCHROME1 (negative unit): the codec's unit and
    scale handling, end to end through the RDH."""
    a = protector.analyse(views[:1])
    pixels = (views[0].astype(np.uint16) * 16).repeat(2, 0).repeat(2, 1)  # 448x448: grid mapped, not copied
    if monochrome1:
        pixels = 4095 - pixels
    image = Image(pixels, 4095, "dicom", monochrome1=monochrome1)
    from medrae.toolkit.display import level_size

    plan = plan_perturbation(image, a.rois[0], a.grids[0], 8, a.guards[0], a.pattern(0))
    step = level_size(image)  # 1/255 of the image's own range (no VOI window): 14 units here
    assert step > 1 and plan.hints["pattern"].unit == (-step if monochrome1 else step)
    key = bytes(32)
    marked, info, *_ = protect_with_fallback(image, a.rois[0], a.grids[0], 8, key, guard=a.guards[0], pattern=a.pattern(0))
    assert np.array_equal(kernels.restore_array(marked, key, 4095), pixels)


def test_a_coarser_pattern_lays_whole_cells_and_restores(views, tmp_path, monkeypatch):
    """A pattern on 8-pixel cells (28x28, ``models.train_pattern --cell 8``): each of its cells covers
    4x4 cells of the refinement's 112-cell grid, the codec rebuilds it the same way, and every file
    restores bit for bit."""
    import hashlib

    from medrae.kernels import patterns

    arr = np.random.default_rng(3).integers(-8, 9, (3, 28, 28)).astype(np.int8)
    np.save(tmp_path / "coarse_v0.npy", arr)
    monkeypatch.setattr(patterns, "PATTERN_DIR", tmp_path)
    monkeypatch.setitem(patterns.PATTERNS, 251, ("coarse_v0", hashlib.sha256(arr.tobytes()).hexdigest()))
    patterns.load.cache_clear()
    try:
        # one refinement step: a random pattern fools nothing, and 40 steps would move most covered cells
        prot = Protector(device="cpu", on_uncertain_roi="proceed", pattern=251, refine_steps=1)
        a = prot.analyse(views)
        key = bytes(range(32))
        for k, x in enumerate(views):
            use = a.pattern(k)
            values = on_grid(251, use.cls, (112, 112))
            assert np.array_equal(values, np.repeat(np.repeat(arr[use.cls], 4, 0), 4, 1))
            assert use.cover.any() and (a.grids[k][use.cover] == values[use.cover]).mean() > 0.8
            marked, info, plan, *_ = protect_with_fallback(Image(x, 255, "png"), a.rois[k], a.grids[k], 8, key, guard=a.guards[k], pattern=use)
            assert np.array_equal(kernels.restore_array(marked, key), x)
    finally:
        patterns.load.cache_clear()


def test_pattern_options(views):
    assert Protector(device="cpu", refine_steps=0).pattern_id == 0  # the generator alone: no pattern
    with pytest.raises(ValueError, match="needs the gradient refinement"):
        Protector(device="cpu", refine_steps=0, pattern=DEFAULT_PATTERN)
    with pytest.raises(ValueError, match="excludes the transfer stage"):
        Protector(device="cpu", transfer_steps=5, pattern=DEFAULT_PATTERN)
    with pytest.raises(kernels.PayloadError, match="unknown transfer pattern id"):
        Protector(device="cpu", pattern=99)


def test_cli_pattern_option(tmp_path, views):
    import json

    from PIL import Image as PILImage
    from typer.testing import CliRunner

    from medrae.cli import app

    (tmp_path / "in").mkdir()
    PILImage.fromarray(views[0]).save(tmp_path / "in" / "a.png")
    runner = CliRunner()
    r = runner.invoke(app, ["protect", str(tmp_path / "in"), str(tmp_path / "o1"), "--no-encrypt", "--pattern", "none",
                            "--report", str(tmp_path / "r.json"), "--on-uncertain-roi", "proceed"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["mode"] == "refine (white box resnet18)"
    r = runner.invoke(app, ["protect", str(tmp_path / "in"), str(tmp_path / "o2"), "--no-encrypt", "--pattern", "bogus"])
    assert r.exit_code == 2 and "--pattern: unknown transfer pattern 'bogus'" in r.output
    assert not (tmp_path / "o2").exists()


def _pattern_never_fits(monkeypatch):
    """Make every plan that carries the transfer pattern too big for the image (others as they are)."""
    import medrae.toolkit.protect as protect_module

    real = protect_module.protect_planned

    def planned(image, plan, *args, **kwargs):
        if "pattern" in plan.hints:
            raise kernels.CapacityError("forced: the pattern's payload does not fit", 10**6, 1)
        return real(image, plan, *args, **kwargs)

    monkeypatch.setattr(protect_module, "protect_planned", planned)


def test_a_pattern_payload_that_fits_only_coarser_is_refined_again_without_it(protector, views, monkeypatch):
    from medrae.toolkit.protect import Fitted, RetryWithoutHead, fit_analysed

    a = protector.analyse(views)
    _pattern_never_fits(monkeypatch)
    img = Image(views[0], 255, "png")
    with pytest.raises(RetryWithoutHead):
        protect_with_fallback(img, a.rois[0], a.grids[0], 8, None, guard=a.guards[0], pattern=a.pattern(0), head_retry=True)
    with pytest.raises(kernels.CapacityError, match="forced"):  # without the retry: every coarser grid is tried, then refused
        protect_with_fallback(img, a.rois[0], a.grids[0], 8, None, guard=a.guards[0], pattern=a.pattern(0))
    with_pattern = a.grids.copy()
    fits = fit_analysed(protector, views, a, bytes(32), check=False)
    plain = Protector(device="cpu", on_uncertain_roi="proceed", pattern=0).analyse(views)
    assert not np.array_equal(with_pattern, plain.grids)
    np.testing.assert_array_equal(a.grids, plain.grids)  # the analysis now holds the grids fitted: the refinement without the pattern
    np.testing.assert_allclose(a.margins, plain.margins, rtol=1e-5)
    for k, fit in enumerate(fits):
        assert isinstance(fit, Fitted) and not fit.pattern
        # what was fitted is the grid refined without the pattern (at the level that fit: the encryption's random nonce
        # can tip a payload at the edge of the capacity either way, so the level is not compared with a second run)
        g = plain.grids[k][:: 1 << fit.level, :: 1 << fit.level]
        np.testing.assert_array_equal(fit.plan.adversarial, plan_perturbation(Image(views[k], 255, "png"), a.rois[k], g, 8, a.guards[k]).adversarial)
        assert np.array_equal(kernels.restore_array(fit.marked, bytes(32)), views[k])


def test_batch_refines_again_without_the_pattern_and_reports_it(tmp_path, views, monkeypatch):
    from PIL import Image as PILImage

    from medrae.toolkit.batch import protect_paths, verify_paths

    (tmp_path / "in").mkdir()
    for k, v in enumerate(views):
        PILImage.fromarray(v).save(tmp_path / "in" / f"p{k}.png")
    key = bytes(range(32))
    normal = protect_paths(tmp_path / "in", tmp_path / "with", key, workers=1, on_uncertain_roi="proceed")
    # (the phantoms' payloads with the pattern may not fit at full resolution either: counted, not assumed)
    assert all(isinstance(r.transfer_pattern, bool) for r in normal.results)
    assert normal.totals()["without_pattern"] == sum(not r.transfer_pattern for r in normal.results)
    _pattern_never_fits(monkeypatch)
    rep = protect_paths(tmp_path / "in", tmp_path / "out", key, workers=1, on_uncertain_roi="proceed")
    assert rep.count("protected") == len(views) and rep.totals()["without_pattern"] == len(views)
    plain = Protector(device="cpu", on_uncertain_roi="proceed", pattern=0, eps=STRENGTHS["standard"].eps).analyse(views)
    for r in sorted(rep.results, key=lambda r: r.input):
        k = int(r.input[-5])
        assert r.transfer_pattern is False
        assert r.white_box_margin == pytest.approx(float(plain.margins[k]), rel=1e-5)  # the margin of the grid written
    assert all(v.status == "identical" for v in verify_paths(tmp_path / "in", tmp_path / "out", key, workers=1).results)
