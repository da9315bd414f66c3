"""protect's transfer stage: a dense coarse pattern against the zoo surrogates, before the refinement."""
from __future__ import annotations

import numpy as np
import pytest

from medrae.toolkit.protect import DEFAULT_SURROGATES, MODELS_DIR, Protector, cells_touching
from medrae.toolkit.refine import TransferSettings, TransferStage


def _views():
    from medrae.toolkit.phantoms import chest_phantom

    pairs = [chest_phantom(k) for k in range(4)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_the_stage_lowers_the_surrogates_margins_within_its_bound_outside_the_roi():
    views, lungs = _views()
    stage = TransferStage([MODELS_DIR / g for g in DEFAULT_SURROGATES], "cpu", TransferSettings(steps=6, eps=5))
    free = ~cells_touching(lungs, 4)
    grids = stage.run(views, free, eps=8)
    assert grids.shape == (4, 56, 56) and grids.dtype == np.int64
    assert np.abs(grids).max() <= 5 and not grids[~free].any() and grids[free].any()
    before = stage.gradients.margins(views, np.full((2, 4), -1))
    labels = before[1]
    adv = np.clip(views + np.repeat(np.repeat(grids, 4, 1), 4, 2), 0, 255).astype(np.uint8)
    after = stage.gradients.margins(adv, labels)
    assert (after[0].sum(0) < before[0].sum(0)).all()  # every image moved toward the surrogates' errors
    with pytest.raises(ValueError, match="free cells must be"):
        stage.run(views, ~cells_touching(lungs, 2), eps=8)


def test_protect_runs_the_stage_when_asked_and_records_the_surrogates():
    p = Protector(device="cpu", transfer_steps=10)
    assert p.transfer is not None and p.mode.startswith("transfer stage on s_resnet10_128 + s_vgg11_150, then refine")
    assert set(DEFAULT_SURROGATES) <= set(p.model_files)
    default = Protector(device="cpu")  # opt-in: the default's payload stays small
    assert default.transfer is None and default.mode == "transfer pattern cxr3_v1, placed by the key (8-cell blocks), then refine (white box resnet18)"
    assert p.pattern_id == 0  # the stage makes its own dense head: no pattern with it
    assert not set(DEFAULT_SURROGATES) & set(default.model_files)
    views, _ = _views()
    a, b = p.analyse(views), default.analyse(views)
    assert not np.array_equal(a.grids, b.grids)
    assert not a.grids[cells_touching(a.rois, 2)].any()  # the ROI stays untouched
    assert np.abs(a.grids).max() <= 8
    with pytest.raises(FileNotFoundError, match="surrogate gradient model not found"):
        Protector(device="cpu", surrogates=["gradient_nope.onnx"])
    with pytest.raises(ValueError, match="needs the gradient refinement"):
        Protector(device="cpu", refine_steps=0, transfer_steps=10)


def test_cli_transfer_steps_reaches_the_protector(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from medrae.cli import app
    from medrae.toolkit.keys import keygen

    views, _ = _views()
    (tmp_path / "in").mkdir()
    Image.fromarray(views[0]).save(tmp_path / "in" / "a.png")
    keygen(tmp_path / "k")
    r = CliRunner().invoke(app, ["protect", str(tmp_path / "in"), str(tmp_path / "out"), "--key", str(tmp_path / "k"), "--transfer-steps", "3",
                                 "--report", str(tmp_path / "r.json")])
    assert r.exit_code in (0, 1), r.output
    assert "transfer stage on s_resnet10_128 + s_vgg11_150" in r.output


def test_labels_name_the_class_each_view_is_pushed_away_from():
    views, lungs = _views()
    stage = TransferStage([MODELS_DIR / g for g in DEFAULT_SURROGATES], "cpu", TransferSettings(steps=4, eps=6))
    free = ~cells_touching(lungs, 4)
    for c in range(3):
        grids = stage.run(views, free, eps=8, labels=np.full(len(views), c))
        forced = np.full((2, len(views)), c)
        before = stage.gradients.margins(views, forced)[0]
        adv = np.clip(views + np.repeat(np.repeat(grids, 4, 1), 4, 2), 0, 255).astype(np.uint8)
        assert (stage.gradients.margins(adv, forced)[0].sum(0) < before.sum(0)).all()  # class c's margin fell on every view
    assert not np.array_equal(stage.run(views, free, 8, labels=np.zeros(4)), stage.run(views, free, 8, labels=np.full(4, 2)))


def test_a_transfer_head_that_fits_only_coarser_is_refined_again_without_it(monkeypatch):
    """As with the transfer pattern: a coarsened dense head no longer fools the white box (docs/STRENGTH.md)."""
    from medrae import kernels
    from medrae.toolkit import protect as protect_module
    from medrae.toolkit.imageio import Image
    from medrae.toolkit.protect import Fitted, fit_analysed, plan_perturbation

    views, _ = _views()
    views = views[:2]
    p = Protector(device="cpu", transfer_steps=4, on_uncertain_roi="proceed")
    a = p.analyse(views)
    heads = [plan_perturbation(Image(views[k], 255, "png"), a.rois[k], a.grids[k], p.eps, a.guards[k]).adversarial for k in range(2)]
    real = protect_module.protect_planned

    def planned(image, plan, *args, **kwargs):
        if any(np.array_equal(plan.adversarial, h) for h in heads):
            raise kernels.CapacityError("forced: the head's payload does not fit", 10**6, 1)
        return real(image, plan, *args, **kwargs)

    monkeypatch.setattr(protect_module, "protect_planned", planned)
    with_head = a.grids.copy()
    key = bytes(range(32))
    fits = fit_analysed(p, views, a, key, check=False)
    again = p.refine_without_pattern(views, a.rois)
    np.testing.assert_array_equal(a.grids, again.grids)  # the analysis holds the grids fitted: refined from zero
    assert not np.array_equal(with_head, again.grids)
    for k, fit in enumerate(fits):
        assert isinstance(fit, Fitted) and np.array_equal(kernels.restore_array(fit.marked, key), views[k])
        assert not np.array_equal(fit.plan.adversarial, heads[k])


def test_a_keyed_start_is_drawn_from_the_key_and_the_image():
    from dataclasses import replace

    views, _ = _views()
    p = Protector(device="cpu", transfer_steps=3, on_uncertain_roi="proceed")
    assert p.transfer_starts(views, bytes(32)) is None  # keyed_start 0: every cell starts at zero
    p.transfer.settings = replace(p.transfer.settings, keyed_start=0.5)
    a, b = p.transfer_starts(views, bytes(32)), p.transfer_starts(views, bytes([1]) * 32)
    assert a.shape == (4, 56, 56) and np.abs(a).max() <= 0.5 and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, p.transfer_starts(views, bytes(32)))  # the same key and image: the same start
    assert not np.array_equal(a[0], a[1])  # another image, another start
    assert p.transfer_starts(views, None) is None  # a keyless file: nothing secret to draw from
    free = ~cells_touching(np.zeros_like(views, bool), 4)
    assert not np.array_equal(p.transfer.run(views, free, 8, start=a), p.transfer.run(views, free, 8))
    from medrae import kernels
    from medrae.toolkit.protect import Fitted, fit_analysed

    key = bytes(range(32))
    an = p.analyse(views[:2], key=key)
    for k, fit in enumerate(fit_analysed(p, views[:2], an, key, check=False)):
        assert isinstance(fit, Fitted) and np.array_equal(kernels.restore_array(fit.marked, key), views[k])


def test_drawn_pipelines_come_from_the_key_and_the_file_still_restores():
    from dataclasses import replace

    from medrae import kernels
    from medrae.toolkit import diversity
    from medrae.toolkit.protect import Fitted, fit_analysed

    views, lungs = _views()
    p = Protector(device="cpu", transfer_steps=3, on_uncertain_roi="proceed")
    p.transfer.settings = replace(p.transfer.settings, diversity=1.0)
    free = ~cells_touching(lungs, 4)
    run = lambda key: p.transfer.run(views[:2], free[:2], 8, rngs=diversity.rngs(views[:2], key))  # noqa: E731
    a, b = run(bytes(32)), run(bytes([1]) * 32)
    np.testing.assert_array_equal(a, run(bytes(32)))  # the same key and image: the same grid
    assert not np.array_equal(a, b)  # another key walks another path
    np.testing.assert_array_equal(p.transfer.run(views[:2], free[:2], 8), run(None))  # no key: the public draws
    plain = TransferStage([MODELS_DIR / g for g in DEFAULT_SURROGATES], "cpu", replace(p.transfer.settings, diversity=0.0))
    assert not np.array_equal(run(None), plain.run(views[:2], free[:2], 8))  # the pipelines change the path
    key = bytes(range(32))
    an = p.analyse(views[:2], key=key)
    for k, fit in enumerate(fit_analysed(p, views[:2], an, key, check=False)):
        assert isinstance(fit, Fitted) and np.array_equal(kernels.restore_array(fit.marked, key), views[k])

