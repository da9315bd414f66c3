"""Toolkit: mask post-processing, metrics against scikit-image, ORT providers, protect on ONNX."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medrae.toolkit.masks import convex_components, convex_fill, dilate, fill_holes, largest_components, postprocess
from medrae.toolkit.metrics import psnr, ssim
from medrae.toolkit.phantoms import chest_phantom


@given(hnp.arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))), st.integers(0, 4))
def test_dilate_is_a_square_max_filter(mask, r):
    h, w = mask.shape
    ref = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            ref[i, j] = mask[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].any()
    assert np.array_equal(dilate(mask, r), ref)


def test_components_and_holes():
    m = np.zeros((60, 60), bool)
    m[5:30, 5:25] = True  # big
    m[5:30, 35:55] = True  # big
    m[50:53, 50:53] = True  # speck
    m[10:14, 10:14] = False  # hole
    kept = largest_components(m)
    assert kept[5:30, 5:25].sum() + kept[5:30, 35:55].sum() == m[5:30, 5:25].sum() + m[5:30, 35:55].sum()
    assert not kept[50:53, 50:53].any()
    assert fill_holes(kept)[10:14, 10:14].all()
    assert not fill_holes(np.zeros((5, 5), bool)).any()
    roi = postprocess(np.where(m, 1.0, -1.0).astype(np.float32), dilation=2)
    assert roi[3:32, 3:27].all() and not roi[50:53, 50:53].any()


@given(hnp.arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_convex_fill_matches_scikit_image(mask):
    morph = pytest.importorskip("skimage.morphology")
    ref = morph.convex_hull_image(mask) | mask if mask.any() else mask
    assert np.array_equal(convex_fill(mask), ref)


def test_convex_fill_keeps_convex_shapes_and_separate_lungs():
    box = np.zeros((30, 30), bool)
    box[3:20, 5:9] = True
    assert np.array_equal(convex_fill(box), box)
    ell = box.copy()
    ell[15:20, 5:25] = True
    assert convex_fill(ell)[10, 12] and not convex_fill(ell)[4, 20]  # the corner's diagonal, not beyond
    for seed in range(4):
        lungs = chest_phantom(seed)[1]
        hull = convex_components(lungs)
        assert (hull >= lungs).all()
        gap = ~lungs.any(axis=0)  # columns between the two lungs stay free
        assert not hull[:, gap].any()


def test_convex_roi_fills_a_missed_bite_but_not_the_gap_between_lungs():
    m = np.zeros((60, 60), bool)
    m[5:50, 5:25] = True
    m[20:35, 15:25] = False  # a bite the segmenter missed, open to the medial side
    m[5:50, 35:55] = True
    logits = np.where(m, 1.0, -1.0).astype(np.float32)
    plain = postprocess(logits, dilation=0)
    hull = postprocess(logits, dilation=0, convex=True)
    assert not plain[20:35, 15:25].any() and hull[20:35, 15:25].all()
    assert not hull[:, 26:34].any()
    assert (postprocess(logits, dilation=2, convex=True) >= postprocess(logits, dilation=2)).all()


def test_roi_threshold_is_a_lung_probability():
    """Logits of a blob with a soft edge: a lower probability threshold widens the ROI to where the
    segmenter hesitates (protect's default, 0.01), never narrows it; 0.5 is the sign of the logit."""
    from medrae.toolkit.masks import postprocess

    yy, xx = np.mgrid[:64, :64]
    logits = (6.0 - 0.5 * np.hypot(yy - 32, xx - 32)).astype(np.float32)  # p = 0.5 at radius 12
    areas = [postprocess(logits, dilation=0, threshold=t).sum() for t in (0.5, 0.2, 0.05, 0.01)]
    assert postprocess(logits, dilation=0, threshold=0.5).sum() == (logits > 0).sum()
    assert areas[0] < areas[1] < areas[2] < areas[3]
    assert (postprocess(logits, 0, threshold=0.01) >= postprocess(logits, 0, threshold=0.5)).all()
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="probability"):
            postprocess(logits, threshold=bad)


@pytest.mark.parametrize("seed", range(4))
def test_ssim_matches_scikit_image(seed):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(seed)
    a = chest_phantom(seed, (96, 80))[0]
    b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape) * (rng.random(a.shape) < 0.5), 0, 255).astype(np.uint8)
    ref = skm.structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b, data_range=255) == pytest.approx(ref, abs=1e-10)
    assert skm.peak_signal_noise_ratio(a, b, data_range=255) == pytest.approx(psnr(a, b, data_range=255), abs=1e-10)


def test_metric_edge_cases():
    a = np.full((20, 20), 100, np.uint8)
    assert psnr(a, a, data_range=255) == float("inf") and ssim(a, a, data_range=255) == pytest.approx(1.0)
    assert psnr(a, a + 1, data_range=255) == pytest.approx(10 * np.log10(255**2))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:, :-1], data_range=255)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:5], a[:5], data_range=255)


def test_providers_never_request_missing_cuda():
    ort = pytest.importorskip("onnxruntime")
    from medrae.toolkit.ort import providers

    got = providers("auto")
    assert got[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in got) == ("CUDAExecutionProvider" in ort.get_available_providers())
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDA provider"):
            providers("cuda")



def test_provider_choice_for_a_gpu_build_without_a_gpu():
    """What onnxruntime-gpu reports decides the request; a CUDA provider that then fails to load
    leaves one line naming the fallback (no GPU here: the choice is tested, not CUDA itself)."""
    from medrae.toolkit.ort import fallback_note, providers

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers("auto", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers("cpu", gpu_build) == ["CPUExecutionProvider"]
    assert providers("cuda", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="no CUDA provider"):
        providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        providers("gpu", gpu_build)
    note = fallback_note(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert note is not None and "CUDAExecutionProvider did not load" in note and "\n" not in note
    assert fallback_note(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert fallback_note(["CPUExecutionProvider"], ["CPUExecutionProvider"]) is None


def test_exactly_one_onnxruntime_package_is_installed():
    """The cpu and gpu extras install one runtime each; both in one environment overwrite each other."""
    pytest.importorskip("onnxruntime")
    from medrae.toolkit.ort import runtime_packages

    assert len(runtime_packages()) == 1, runtime_packages()


def test_session_threads_setting():
    from medrae.toolkit import ort

    with pytest.raises(ValueError, match=">= 0"):
        ort.set_threads(-1)
    before = ort._threads
    try:
        ort.set_threads(1)
        assert ort._threads == 1
    finally:
        ort.set_threads(before)


def test_a_quiet_worker_logs_no_providers_but_everything_else(tiny_models, monkeypatch, caplog):
    """A worker process (``toolkit.batch``) leaves the providers line to its main process, and only
    that line: its warnings and other messages still reach the log."""
    import logging

    from medrae.toolkit import ort

    monkeypatch.setattr(ort, "_logged", set())
    monkeypatch.setattr(ort, "_announce", True)
    with caplog.at_level(logging.INFO, logger="medrae"):
        ort.session(tiny_models / "segmenter.onnx", "cpu")
        assert [r.getMessage() for r in caplog.records] == ["onnxruntime providers: CPUExecutionProvider"]
        caplog.clear()
        monkeypatch.setattr(ort, "_logged", set())
        ort.quiet_providers()
        ort.session(tiny_models / "segmenter.onnx", "cpu")
        ort._once("another message", logging.INFO)
        assert [r.getMessage() for r in caplog.records] == ["another message"]


def test_protect_on_onnx_models(tiny_models):
    from medrae import kernels
    from medrae.toolkit.protect import Protector

    prot = Protector(tiny_models)
    images = np.stack([chest_phantom(s)[0] for s in range(3)])
    key = os.urandom(32)
    for x, r in zip(images, prot.protect(images, key)):
        assert np.array_equal(kernels.restore_array(r.marked, key), x)
        change = np.abs(r.marked.astype(int) - x)
        assert change[r.roi].max(initial=0) <= 2  # only the RDH touches the ROI
        assert np.abs(r.adversarial.astype(int) - x)[r.roi].max(initial=0) == 0
        assert np.abs(r.adversarial.astype(int) - x).max() <= 8
        assert r.info.codec.startswith("auto:grid") or r.info.codec == "grid"
    card = json.loads((tiny_models / "generator.json").read_text())
    assert card["grid_factor"] == 4 and card["eps"] == 8.0


def test_protect_rejects_other_sizes(tiny_models):
    from medrae.toolkit.protect import Protector

    with pytest.raises(ValueError, match="expected"):
        Protector(tiny_models).protect(np.zeros((1, 100, 100), np.uint8), None)


def test_batch_goes_on_past_an_image_that_does_not_fit(tiny_models, monkeypatch):
    from medrae import kernels
    from medrae.toolkit import protect as protect_mod

    real = kernels.protect_array
    images = np.stack([chest_phantom(s)[0] for s in range(3)])
    tries = []

    def second_does_not_fit(image, adv, key, **kw):  # however it is tried (coarser grid, ROI frozen or not)
        if np.array_equal(image, images[1]):
            tries.append((kw.get("frozen") is not None, kw.get("open_first", False)))
            raise kernels.CapacityError("payload of 90000 bits does not fit", 90000, 40000)
        return real(image, adv, key, **kw)

    monkeypatch.setattr(protect_mod.kernels, "protect_array", second_does_not_fit)
    results = protect_mod.Protector(tiny_models).protect(images, None)
    assert [r.marked is None for r in results] == [False, True, False]
    assert "short by 50000 bits" in results[1].error and results[1].info is None
    assert np.array_equal(kernels.restore_array(results[2].marked, None), images[2])
    # first outside the ROI, then with the ROI open to the first group of passes, then on coarser grids;
    # never in every pass (--rdh-in-roi only)
    assert tries[:2] == [(True, False), (True, True)] and all(frozen for frozen, _ in tries) and len(tries) % 2 == 0


def test_plan_perturbation_maps_grid_and_roi_exactly():
    """Any resolution: ROI by nearest index mapping, grid cells of f = min(H, W) // side pixels,
    no change on any cell touching the ROI, one level = 1/255 of the display window (here the
    image's own range, 3000..3499 of 12 bits: 2 units), MONOCHROME1 flips the sign."""
    from medrae.kernels.resample import upsample
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.protect import cells_touching, plan_perturbation, resize_nearest

    rng = np.random.default_rng(0)
    roi = np.zeros((224, 224), bool)
    roi[60:170, 40:110] = True
    grid = rng.integers(-8, 9, (112, 112))
    x = rng.integers(3000, 3500, (700, 500)).astype(np.uint16)
    for mono1 in (False, True):
        plan = plan_perturbation(Image(x, 4095, "dicom", monochrome1=mono1), roi, grid, 8)
        f = 500 // 112
        level = round((int(x.max()) - int(x.min())) / 255)
        assert level == 2 and plan.hints["factor"] == f and plan.eps == 8 * level
        roi_full = resize_nearest(roi, x.shape)
        assert np.array_equal(plan.roi, roi_full)
        delta = plan.adversarial.astype(int) - x
        assert not delta[roi_full].any() and np.abs(delta).max() <= 8 * level
        g = plan.hints["grid"]
        assert not g[cells_touching(roi_full, f)].any()
        assert np.array_equal(upsample(g, f, x.shape), delta)  # no clipping at these values
        gi = (np.arange(g.shape[0]) * 112) // g.shape[0]
        gj = (np.arange(g.shape[1]) * 112) // g.shape[1]
        free = ~cells_touching(roi_full, f)
        assert np.array_equal(g[free], ((-level if mono1 else level) * grid[gi][:, gj])[free])


from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=25)
@given(
    h=st.integers(40, 260), w=st.integers(40, 260),
    bits=st.sampled_from([8, 10, 12, 16]), mono1=st.booleans(),
    side=st.sampled_from([56, 112, 224]), seed=st.integers(0, 2**31),
)
def test_any_image_round_trips_through_the_planned_perturbation(h, w, bits, mono1, side, seed):
    """Any size, bit depth and photometric: the mapped perturbation protects and restores bit-exactly
    (or the payload honestly does not fit), never changes the ROI, and stays within the ceiling."""
    from medrae import kernels
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.protect import plan_perturbation, protect_planned

    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = top * (0.5 + 0.3 * np.sin(yy / 17.0) * np.cos(xx / 23.0))
    x = np.clip(smooth + rng.normal(0, top / 400, (h, w)), 0, top).astype(dtype)
    x[: h // 8] = top  # saturated rows: clipping at the ceiling
    roi = np.zeros((224, 224), bool)
    roi[rng.integers(0, 100) :][:, rng.integers(0, 100) : 180] = True
    grid = rng.choice([-8, -3, 0, 3, 8], size=(side, side), p=[0.05, 0.05, 0.8, 0.05, 0.05])
    image = Image(x, top, "dicom" if bits in (10, 12) else "png", monochrome1=mono1)
    plan = plan_perturbation(image, roi, grid, 8)
    assert not (plan.adversarial != x)[plan.roi].any() and int(plan.adversarial.max()) <= top
    try:
        marked, info = protect_planned(image, plan, b"k" * 32)
    except kernels.CapacityError:
        event("payload does not fit")
        return
    event("protected")
    assert int(marked.max()) <= top
    ceiling = None if top == np.iinfo(dtype).max else top
    assert np.array_equal(kernels.restore_array(marked, b"k" * 32, ceiling), x)


def test_write_atomic_syncs_before_the_name_appears(tmp_path, monkeypatch):
    """A crash must leave an output complete or absent: the data reaches the disk (fsync) before the
    rename gives it its name, and an existing output is not replaced without ``overwrite``."""
    import os

    from medrae.toolkit import imageio

    events = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link
    monkeypatch.setattr(imageio.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(imageio.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    monkeypatch.setattr(imageio.os, "link", lambda a, b: (events.append("link"), real_link(a, b))[1])
    out = tmp_path / "sub" / "o.png"
    imageio.write_atomic(out, b"abc")
    # data synced, then the name taken exclusively (link fails if it exists), then the directory synced
    assert events == ["fsync", "link", "fsync"] and out.read_bytes() == b"abc"
    assert not any(p.name.endswith("medrae-tmp") for p in out.parent.iterdir())
    with pytest.raises(imageio.OutputExists, match="output exists"):
        imageio.write_atomic(out, b"xyz")
    assert out.read_bytes() == b"abc"
    events.clear()
    imageio.write_atomic(out, b"xyz", overwrite=True)
    assert events == ["fsync", "replace", "fsync"] and out.read_bytes() == b"xyz"
    assert not any(p.name.endswith("medrae-tmp") for p in out.parent.iterdir())


def test_display_window_rules():
    """8-bit: its own view; deeper: the DICOM linear VOI window (first value, through the rescale)
    when there is one, else the image's own range; one perturbation level is 1/255 of it."""
    from pydicom.dataset import Dataset

    from medrae.toolkit.display import display_window, level_size, to_view
    from medrae.toolkit.imageio import Image

    rng = np.random.default_rng(3)
    x8 = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    assert display_window(Image(x8, 255, "png")) == (0.0, 255.0) and level_size(Image(x8, 255, "png")) == 1
    full = (x8.astype(np.uint16) * 257)
    full.flat[:2] = (0, 65535)
    assert level_size(Image(full, 65535, "png")) == 257
    assert np.array_equal(to_view(Image(full, 65535, "png")), np.round(full / 257).astype(np.uint8))
    part = rng.integers(3000, 3500, (40, 50)).astype(np.uint16)
    assert display_window(Image(part, 4095, "tiff")) == (float(part.min()), float(part.max()))
    assert display_window(Image(np.full((40, 50), 7, np.uint16), 4095, "png")) == (0.0, 4095.0)  # constant
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = ["1000", "300"], "801"  # DICOM: several windows, the first counts
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
    low, high = (1000 - 0.5 - 400 + 1000) / 2, (1000 - 0.5 + 400 + 1000) / 2
    dcm = Image(part, 4095, "dicom", dataset=ds)
    assert display_window(dcm) == (low, high) and level_size(dcm) == round((high - low) / 255)
    assert np.array_equal(to_view(Image(part, 4095, "dicom", monochrome1=True, dataset=ds)), 255 - to_view(dcm))
    for other in ({"VOILUTFunction": "SIGMOID"}, {"VOILUTSequence": []}):  # not a linear window: the data range
        d = Dataset()
        d.WindowCenter, d.WindowWidth = "1000", "801"
        for k, v in other.items():
            setattr(d, k, v)
        assert display_window(Image(part, 4095, "dicom", dataset=d)) == (float(part.min()), float(part.max()))


def test_a_deep_image_is_seen_and_perturbed_through_its_window():
    """A 12-bit image using 500..3050 (10 units per 8-bit level) looks to the networks exactly like
    the 8-bit image it was made from, and eps 8 moves it by at most 8 of those levels (80 units)."""
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.phantoms import chest_phantom
    from medrae.toolkit.protect import network_view, plan_perturbation

    x8, _ = chest_phantom(5)
    x8 = np.ascontiguousarray(x8[:224, :224])
    x8[0, 0], x8[0, 1] = 0, 255  # the full 8-bit range, so the data range maps back exactly
    deep = Image((500 + 10 * x8.astype(np.int64)).astype(np.uint16), 4095, "png")
    assert np.array_equal(network_view(deep), network_view(Image(x8, 255, "png")))
    rng = np.random.default_rng(0)
    plan = plan_perturbation(deep, np.zeros((224, 224), bool), rng.integers(-8, 9, (112, 112)), 8)
    change = (plan.adversarial.astype(np.int64) - deep.pixels) / 10
    assert plan.eps == 80 and np.abs(change).max() == 8 and np.all(change == np.round(change))


def test_clipping_keeps_every_change_a_whole_number_of_levels():
    """Near black and white the perturbation is cut back by whole levels, so that the codec's gcd
    scale stays the level (an exact clip left odd remainders and made the payload code raw units)."""
    from medrae import kernels
    from medrae.toolkit.display import level_size
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.protect import plan_perturbation

    rng = np.random.default_rng(1)
    x = rng.integers(3, 4001, (224, 224)).astype(np.uint16)
    x[:40] = rng.integers(3, 40, (40, 224))  # near black
    x[-40:] = rng.integers(3960, 4001, (40, 224))  # near the top of the window (and of 12 bits: 4095)
    x[-40:, :112] = 4090
    image = Image(x, 4095, "dicom")
    step = level_size(image)
    assert step == 16
    grid = rng.choice([-8, 8], size=(112, 112))
    plan = plan_perturbation(image, np.zeros((224, 224), bool), grid, 8)
    change = plan.adversarial.astype(np.int64) - x
    planned = np.repeat(np.repeat(grid, 2, 0), 2, 1) * step
    assert not (change % step).any() and np.all(np.abs(change) <= np.abs(planned))
    assert np.all((change == 0) | (np.sign(change) == np.sign(planned))) and (change != planned).any()  # some were cut back
    assert plan.adversarial.max() <= 4095
    assert np.gcd.reduce(np.abs(change[change != 0])) == step  # what the codec divides by
    assert np.array_equal(kernels.decode_perturbation(kernels.encode_perturbation(change)), change)


def test_lungs_with_black_and_white_pixels_are_protected_at_full_resolution(without_one_step_check):
    """A ROI holding black and white patches (a mask QC widened over labels or borders) and a payload
    that fits only with the ROI open to the first pass group: protect writes it at full resolution with
    every ROI pixel within one level. Before the embedder kept such pixels to one level (monkeypatched
    back here) one PEE group moved some by two, and protect had to coarsen the perturbation or refuse."""
    from medrae import kernels
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.phantoms import chest_phantom
    from medrae.toolkit.protect import protect_with_fallback

    x, lungs = chest_phantom(5)
    x = x.copy()
    rng = np.random.default_rng(5)
    inside = np.argwhere(lungs)
    for i, j in inside[rng.choice(len(inside), 60, replace=False)]:
        x[i : i + 3, j : j + 3] = rng.choice([0, 255])
    roi = dilate(lungs, 4)
    grid = rng.choice([-8, -4, 0, 4, 8], size=(112, 112), p=[0.12, 0.12, 0.52, 0.12, 0.12])
    image, key = Image(x, 255, "png"), b"k" * 32
    marked, info, plan, level, mode = protect_with_fallback(image, roi, grid, 8, key)
    assert (level, mode) == (0, "open1")
    assert np.abs(marked.astype(int) - x)[roi].max() == 1 and np.array_equal(kernels.restore_array(marked, key), x)
    without_one_step_check()
    try:
        _, _, _, old_level, old_mode = protect_with_fallback(image, roi, grid, 8, key)
    except kernels.CapacityError:
        return
    assert (old_level, old_mode) != (0, "open1")


def test_a_coarse_grid_on_a_large_image_is_mapped_onto_cells_the_codec_carries():
    """A 28x28 grid (a refinement grid coarsened twice for capacity) on a 2048x2048 image would need
    73-pixel cells; the codecs carry at most 64 (kernels.resample.MAX_FACTOR), so the grid is
    resampled onto 64-pixel cells and the file still restores (it used to fail: 'factor must be an
    integer in 1..64, got 73')."""
    from PIL import Image as PILImage

    from medrae import kernels
    from medrae.kernels.resample import MAX_FACTOR
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.protect import plan_perturbation, protect_planned

    img, lungs = chest_phantom(3)
    big = np.asarray(PILImage.fromarray(img).resize((2048, 2048), PILImage.BILINEAR))
    grid = np.random.default_rng(0).integers(-8, 9, size=(28, 28))
    image = Image(big.copy(), 255, "png")
    plan = plan_perturbation(image, lungs.astype(bool), grid, 8)
    assert plan.hints["factor"] == MAX_FACTOR == 64 and plan.hints["grid"].shape == (32, 32)
    assert not np.any(plan.adversarial[plan.roi] != big[plan.roi])
    key = os.urandom(32)
    marked, _ = protect_planned(image, plan, key, hiding="anywhere")
    assert np.array_equal(kernels.restore_array(marked, key), big)
