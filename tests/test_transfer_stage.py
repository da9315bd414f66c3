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
    assert default.transfer is None and default.mode == "transfer pattern cxr3_v1, placed by the key, then refine (white box resnet18)"
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
