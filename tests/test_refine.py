"""The margin-gradient graph (models/gradient.py), its weight-sharing export, and protect's sparse
refinement (toolkit/refine.py) on ONNX Runtime."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medrae.toolkit.phantoms import chest_phantom  # noqa: E402
from medrae.toolkit.protect import MODELS_DIR as MODELS, ROI_THRESHOLD  # noqa: E402


def _folded(arch: str, seed: int):
    """A random classifier in the BN-folded form load_classifier rebuilds (BN = add a bias)."""
    from medrae.models.train import build

    torch.manual_seed(seed)
    model = build("classifier", arch, 112).eval()
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_small", "vgg16_small_cbam"])
def test_margin_gradient_matches_autograd(arch):
    from medrae.models.gradient import MarginGradient, reference_gradient

    model = _folded(arch, 0)
    graph = MarginGradient(model).double()  # float64: a random net's float32 gradient is mostly rounding noise
    x = torch.randn(3, 1, 224, 224, dtype=torch.float64)
    for label in (torch.tensor([-1, -1, -1]), torch.tensor([0, 2, 1])):
        with torch.no_grad():
            logits, grad = graph(x, label)
        want_logits, want_grad = reference_gradient(model, x, label)
        assert torch.allclose(logits, want_logits, atol=1e-9)
        # not elementwise: summation order differs, and a ReLU input at ~0 may flip; a wrong
        # transpose, padding or routing would leave the directions far apart
        cos = (grad * want_grad).sum((1, 2, 3)) / (grad.flatten(1).norm(dim=1) * want_grad.flatten(1).norm(dim=1))
        assert cos.min() > 0.999999


def test_margin_gradient_refuses_what_it_cannot_transpose():
    from medrae.models.gradient import MarginGradient
    from medrae.models.train import build

    with pytest.raises(ValueError, match="BN-folded"):
        MarginGradient(build("classifier", "vgg16_small", 112))  # running_var 1: not folded
    odd = _folded("vgg16_small", 0)
    odd.net.features.insert(3, torch.nn.Dropout())
    with pytest.raises(ValueError, match="CBAM only"):
        MarginGradient(odd)
    with pytest.raises(ValueError, match="basic blocks"):
        MarginGradient(_folded("resnet50", 0))


@pytest.fixture(scope="module")
def refine_models(tiny_models, phantom_dataset, tmp_path_factory):
    """tiny_models plus the shipped transfer classifier (vgg16_small) and its gradient model, exported
    here. (A trained network: an untrained one's margin gradient is mostly float noise, so ORT and
    torch do not agree on it closely enough for a parity check.)"""
    from medrae.export import onnx_export as ex

    out = tmp_path_factory.mktemp("refine_models")
    for f in tiny_models.iterdir():
        shutil.copy(f, out)
    for f in ("classifier_vgg16_small.onnx", "classifier_vgg16_small.json"):
        shutil.copy(MODELS / f, out)
    clf, grad = out / "classifier_vgg16_small.onnx", out / "gradient_vgg16_small.onnx"
    assert ex.main(["gradient", str(clf), str(grad), "--data", str(phantom_dataset / "test")]) == 0
    return out


def test_gradient_model_shares_the_classifier_weights(refine_models):
    import onnxruntime as ort

    from medrae.toolkit.ort import file_sha256

    clf, grad = refine_models / "classifier_vgg16_small.onnx", refine_models / "gradient_vgg16_small.onnx"
    assert grad.stat().st_size < 100_000 < 1_000_000 < clf.stat().st_size  # no copy of the weights
    card = json.loads(grad.with_suffix(".json").read_text())
    assert card["weights_file"] == clf.name and card["weights_sha256"] == file_sha256(clf)
    assert card["parity"]["min_grad_cosine"] >= 0.9999 and card["parity"]["decision_mismatches"] == 0
    x = np.random.default_rng(0).normal(0, 1, (2, 1, 224, 224)).astype(np.float32)
    logits, grad_out = ort.InferenceSession(str(grad)).run(None, {"image": x, "label": np.array([-1, 1])})
    want = ort.InferenceSession(str(clf)).run(None, {"image": x})[0]
    assert np.allclose(logits, want, atol=1e-5) and grad_out.shape == x.shape and np.abs(grad_out).max() > 0


def test_gradient_export_must_sit_beside_its_classifier(refine_models, tmp_path):
    from medrae.export.onnx_export import export_gradient

    with pytest.raises(ValueError, match="beside its classifier"):
        export_gradient(refine_models / "classifier_vgg16_small.onnx", tmp_path / "g.onnx")


def test_refiner_refuses_a_changed_classifier(refine_models, tmp_path):
    from medrae.toolkit.refine import Refiner

    for f in ("classifier_vgg16_small.onnx", "gradient_vgg16_small.onnx", "gradient_vgg16_small.json"):
        shutil.copy(refine_models / f, tmp_path)
    blob = bytearray((tmp_path / "classifier_vgg16_small.onnx").read_bytes())
    blob[-100] ^= 1
    (tmp_path / "classifier_vgg16_small.onnx").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="not the file it was exported against"):
        Refiner(tmp_path / "gradient_vgg16_small.onnx", "cpu")


@pytest.mark.parametrize("eps", [3, 8])
def test_refine_is_sparse_bounded_and_reports_true_margins(refine_models, eps):
    from medrae.toolkit.protect import normalize
    from medrae.toolkit.refine import Refiner, RefineSettings, upsample_cells

    import onnxruntime as ort

    settings = RefineSettings(steps=12, step=4, fraction=0.02, margin=0.5, give_up=())
    refiner = Refiner(refine_models / "gradient_vgg16_small.onnx", "cpu", settings)
    views = np.stack([chest_phantom(s)[0] for s in range(4)])
    rng = np.random.default_rng(eps)
    free = rng.random((4, 112, 112)) < 0.6
    r = refiner.refine(views, free, eps)
    assert r.grids.shape == (4, 112, 112) and not r.grids[~free].any()
    assert np.abs(r.grids).max() <= eps and r.grids.any()
    assert (r.steps <= settings.steps).all() and (r.steps > 0).any()
    # each step moves at most fraction * cells, so the grid stays sparse
    assert ((r.grids != 0).sum(axis=(1, 2)) <= r.steps * round(0.02 * 112 * 112)).all()
    # the margins it reports are the classifier's on the views it returns
    adv = np.clip(views.astype(int) + upsample_cells(r.grids, 2), 0, 255).astype(np.uint8)
    logits = ort.InferenceSession(str(refine_models / "classifier_vgg16_small.onnx")).run(None, {"image": normalize(adv)})[0]
    clean = ort.InferenceSession(str(refine_models / "classifier_vgg16_small.onnx")).run(None, {"image": normalize(views)})[0]
    assert np.array_equal(r.labels, clean.argmax(1))
    own = logits[np.arange(4), r.labels]
    logits[np.arange(4), r.labels] = -np.inf
    assert np.allclose(own - logits.max(1), r.margins, atol=1e-4)
    # stopped early exactly when the target margin was reached
    assert np.array_equal(r.margins <= -settings.margin, r.steps < settings.steps) or (r.margins <= -settings.margin).all()
    # from a head start the margins are still those of the clean prediction, not of the start
    once = Refiner(refine_models / "gradient_vgg16_small.onnx", "cpu", RefineSettings(steps=0, margin=0.5))
    again = once.refine(views, free, eps, r.grids)
    assert np.array_equal(again.labels, clean.argmax(1)) and np.allclose(again.margins, r.margins, atol=1e-4)
    # clean labels the caller already has (protect: the pattern's class) are used as given, not recomputed
    given = once.refine(views, free, eps, r.grids, labels=clean.argmax(1)[None])
    assert np.array_equal(given.labels, again.labels) and np.array_equal(given.margins, again.margins)
    other = (clean.argmax(1) + 1) % clean.shape[1]
    assert np.array_equal(once.refine(views, free, eps, r.grids, labels=other[None]).labels, other)
    with pytest.raises(ValueError, match="clean labels"):
        once.refine(views, free, eps, r.grids, labels=other)


def test_protector_refines_by_default_and_restores(refine_models, tiny_models):
    from medrae import kernels
    from medrae.toolkit.protect import Protector

    prot = Protector(refine_models, gradient="gradient_vgg16_small.onnx")
    assert prot.mode == "transfer pattern cxr3_v1, placed by the key (8-cell blocks), then refine (white box vgg16_small)" and prot.gen is None
    images = np.stack([chest_phantom(s)[0] for s in range(2)])
    a = prot.analyse(images)
    assert a.grids.shape == (2, 112, 112) and np.isfinite(a.margins).all()
    key = b"k" * 32
    for x, r in zip(images, prot.protect(images, key)):
        assert np.array_equal(kernels.restore_array(r.marked, key), x)
        assert np.abs(r.adversarial.astype(int) - x)[r.roi].max(initial=0) == 0
    assert Protector(refine_models, refine_steps=0, gradient="gradient_vgg16_small.onnx").mode == "generator"
    tuned = Protector(refine_models, gradient="gradient_vgg16_small.onnx", refine_steps=7, margin=3.5).refiner.settings
    assert (tuned.steps, tuned.margin, tuned.fraction) == (7, 3.5, prot.refiner.settings.fraction)
    with pytest.raises(ValueError, match="margin"):
        Protector(refine_models, gradient="gradient_vgg16_small.onnx", margin=-1)
    assert Protector(tiny_models).mode == "generator"  # no gradient model there: the generator, logged
    with pytest.raises(FileNotFoundError, match="gradient model not found"):
        Protector(tiny_models, refine_steps=5)


def test_robust_refinement_fools_the_resized_copy_too(refine_models):
    from medrae.toolkit.protect import normalize
    from medrae.toolkit.refine import Refiner, RefineSettings, resize_half, upsample_cells

    import onnxruntime as ort

    settings = RefineSettings(steps=15, step=4, fraction=0.03, margin=0.5, robust=True)
    refiner = Refiner(refine_models / "gradient_vgg16_small.onnx", "cpu", settings)
    views = np.stack([chest_phantom(s)[0] for s in range(3)])
    r = refiner.refine(views, np.ones((3, 112, 112), bool), 8)
    done = r.steps < settings.steps
    assert done.any()
    adv = np.clip(views.astype(int) + upsample_cells(r.grids, 2), 0, 255).astype(np.uint8)
    sess = ort.InferenceSession(str(refine_models / "classifier_vgg16_small.onnx"))
    for x in (adv, resize_half(adv)):  # both copies misclassified by the margin, for every image that stopped
        logits = sess.run(None, {"image": normalize(x)})[0]
        own = logits[np.arange(3), r.labels].copy()
        logits[np.arange(3), r.labels] = -np.inf
        assert (own - logits.max(1))[done].max() <= -settings.margin + 1e-4


def test_robust_ensemble_is_staged_and_never_loses_the_target(monkeypatch):
    """--robust with an added white box: the target alone first, then all of them; an image whose
    second stage lost the target (fooled in both views after the first) keeps the first grid."""
    import onnxruntime as ort

    from medrae.toolkit.protect import normalize
    from medrae.toolkit.refine import Refined, Refiner, RefineSettings, resize_half, upsample_cells

    settings = RefineSettings(steps=20, fraction=0.05, margin=0.5, robust=True)
    paths = [MODELS / "gradient_resnet18.onnx", MODELS / "gradient_vgg16_small_cbam_pruned.onnx"]
    views = np.stack([chest_phantom(s)[0] for s in range(6)])
    free = np.ones((6, 112, 112), bool)
    free[:, 30:80, 20:90] = False  # a "lung" block that must stay untouched

    def margins(name, grids, labels, resized=False):
        sess = ort.InferenceSession(str(MODELS / f"classifier_{name}.onnx"))
        adv = np.clip(views.astype(int) + upsample_cells(grids, 2), 0, 255).astype(np.uint8)
        logits = sess.run(None, {"image": normalize(resize_half(adv) if resized else adv)})[0]
        own = logits[np.arange(len(views)), labels].copy()
        logits[np.arange(len(views)), labels] = -np.inf
        return own - logits.max(1)

    def target(grids, labels):  # the target's worst view
        return np.maximum(margins("resnet18", grids, labels), margins("resnet18", grids, labels, True))

    alone = Refiner(paths[:1], "cpu", settings).refine(views, free, 8)
    had = target(alone.grids, alone.labels) < 0
    assert had.any() and not had.all()  # the case the rule is for, and the rest
    staged = Refiner(paths, "cpu", settings).refine(views, free, 8)
    assert np.array_equal(staged.labels, alone.labels) and (staged.steps <= settings.steps * 3 // 2).all()
    assert (target(staged.grids, staged.labels)[had] < 0).all()
    assert not staged.grids[~free].any()
    clean = ort.InferenceSession(str(MODELS / "classifier_vgg16_small_cbam_pruned.onnx")).run(None, {"image": normalize(views)})[0].argmax(1)
    # the second stage works on the added model
    assert margins("vgg16_small_cbam_pruned", staged.grids, clean).mean() < margins("vgg16_small_cbam_pruned", alone.grids, clean).mean() - 0.5

    # a second stage that loses everything: the images it took from the target revert to the first grid
    real = Refiner._refine

    def losing(self, views, free, eps, grids, count, max_steps, clean=None):
        r, target = real(self, views, free, eps, grids, count, max_steps, clean)
        if count == 1:
            return r, target
        # everything zeroed: the others "fooled", the target not (its clean margin on every image)
        return Refined(np.zeros_like(r.grids), np.full(len(views), -5.0), r.steps, r.labels), np.full(len(views), 5.0)

    monkeypatch.setattr(Refiner, "_refine", losing)
    r = Refiner(paths, "cpu", settings).refine(views, free, 8)
    assert np.array_equal(r.grids[had], alone.grids[had]) and not r.grids[~had].any()
    np.testing.assert_allclose(r.margins[had], alone.margins[had])


def test_unit_normalises_each_image_and_drops_the_fooled():
    from medrae.toolkit.refine import unit

    rng = np.random.default_rng(0)
    grad = rng.normal(size=(2, 3, 5, 7)).astype(np.float32) * np.array([1e-6, 1.0, 1e3])[None, :, None, None]
    keep = np.array([[True, False, True], [True, True, False]])
    out = unit(grad, keep)
    norms = np.sqrt((out**2).sum(axis=(-2, -1)))
    np.testing.assert_allclose(norms, keep.astype(float), rtol=1e-6)  # 1 whatever the scale, 0 once fooled
    np.testing.assert_allclose(out[0, 0] * np.linalg.norm(grad[0, 0]), grad[0, 0], rtol=1e-5)  # direction kept


def test_cli_reports_the_perturbation_mode(tmp_path):
    import json as _json

    from PIL import Image as PILImage
    from typer.testing import CliRunner

    from medrae.cli import app
    from medrae.toolkit.settings import STRENGTHS

    src = tmp_path / "in"
    src.mkdir()
    for s in range(2):
        PILImage.fromarray(chest_phantom(s)[0]).save(src / f"p{s}.png")
    runner = CliRunner()
    # "proceed": QC widens the phantoms' masks (synthetic images), which would hide the margin's effect
    for extra, mode in ((["--on-uncertain-roi", "proceed"], "refine"), (["--refine-steps", "0", "--roi-margin", "9", "--on-uncertain-roi", "proceed"], "generator")):
        amp = STRENGTHS["standard"].pattern_eps
        prefix = f"transfer pattern cxr3_v2 at {amp}, placed by the key (8-cell blocks), then refine" if mode == "refine" else mode
        out, rep = tmp_path / f"out{len(extra)}", tmp_path / f"r{len(extra)}.json"
        r = runner.invoke(app, ["protect", str(src), str(out), "--no-encrypt", "--report", str(rep), "--workers", "1", *extra])
        assert r.exit_code == 0, r.output
        report = _json.loads(rep.read_text())
        assert report["mode"].startswith(prefix) and report["totals"]["protected"] == 2
        margins = [f["white_box_margin"] for f in report["files"]]
        assert all((m is not None) == (mode == "refine") for m in margins)
        assert f"perturbation: {prefix}" in " ".join(r.output.split())  # rich wraps long lines
        # the report names the networks that made the perturbation: the generator only when it ran
        assert "segmenter.onnx" in report["models"] and ("generator.onnx" in report["models"]) == (mode == "generator")
        assert ("gradient_resnet18.onnx" in report["models"]) == (mode == "refine")
    wide, narrow = (_json.loads((tmp_path / f"r{n}.json").read_text())["files"] for n in (6, 2))
    # a wider ROI margin leaves less of the image free to change
    assert all(w["roi_fraction"] > n["roi_fraction"] for w, n in zip(wide, narrow))
    # the segmenter's own mask (probability 0.5) is inside the default ROI (probability 0.01)
    rep = tmp_path / "own_mask.json"
    r = runner.invoke(app, ["protect", str(src), str(tmp_path / "own_mask"), "--no-encrypt", "--report", str(rep),
                            "--workers", "1", "--refine-steps", "0", "--roi-threshold", "0.5", "--on-uncertain-roi", "proceed"])
    assert r.exit_code == 0, r.output
    own = _json.loads(rep.read_text())
    assert "probability >= 0.5," in own["roi"] and "probability >= 0.5," in r.output
    assert f"probability >= {ROI_THRESHOLD:g}," in _json.loads((tmp_path / "r2.json").read_text())["roi"]
    assert all(o["roi_fraction"] <= d["roi_fraction"] for o, d in zip(own["files"], narrow))
    # each lung's convex hull contains the lung: never less ROI, and the rule says so
    rep = tmp_path / "convex.json"
    r = runner.invoke(app, ["protect", str(src), str(tmp_path / "convex"), "--no-encrypt", "--report", str(rep),
                            "--workers", "1", "--refine-steps", "0", "--roi-convex", "--on-uncertain-roi", "proceed"])
    assert r.exit_code == 0, r.output
    hull = _json.loads(rep.read_text())
    assert "convex hull" in hull["roi"] and "convex hull" not in _json.loads((tmp_path / "r2.json").read_text())["roi"]
    assert all(h["roi_fraction"] >= d["roi_fraction"] for h, d in zip(hull["files"], narrow))


def test_an_ensemble_stops_only_when_every_classifier_is_fooled(refine_models):
    from medrae.toolkit.protect import normalize
    from medrae.toolkit.refine import Refiner, RefineSettings, upsample_cells

    import onnxruntime as ort

    for f in ("classifier_resnet18.onnx", "classifier_resnet18.json", "gradient_resnet18.onnx", "gradient_resnet18.json"):
        shutil.copy(MODELS / f, refine_models)
    names = ["resnet18", "vgg16_small"]
    settings = RefineSettings(steps=20, margin=1.0, give_up=())
    refiner = Refiner([refine_models / f"gradient_{n}.onnx" for n in names], "cpu", settings)
    assert refiner.architectures == names
    views = np.stack([chest_phantom(s)[0] for s in range(3)])
    r = refiner.refine(views, np.ones((3, 112, 112), bool), 8)
    adv = np.clip(views.astype(int) + upsample_cells(r.grids, 2), 0, 255).astype(np.uint8)
    worst = np.full(3, -np.inf)
    for n in names:
        sess = ort.InferenceSession(str(refine_models / f"classifier_{n}.onnx"))
        clean = sess.run(None, {"image": normalize(views)})[0].argmax(1)
        logits = sess.run(None, {"image": normalize(adv)})[0]
        own = logits[np.arange(3), clean].copy()
        logits[np.arange(3), clean] = -np.inf
        worst = np.maximum(worst, own - logits.max(1))
    assert np.allclose(worst, r.margins, atol=1e-4)  # the reported margin is the least-fooled classifier's
    done = r.steps < settings.steps
    assert (r.margins[done] <= -settings.margin + 1e-6).all()


def test_refinement_gives_up_on_images_out_of_reach(refine_models):
    """``give_up=((step, margin),)``: an image whose margin is still above ``margin`` after ``step``
    steps stops there with the grid it had (the same grid a ``step``-step run gives); one that is
    within reach goes on; a bound nothing exceeds changes nothing."""
    from dataclasses import replace

    from medrae.toolkit.refine import Refiner, RefineSettings

    base = RefineSettings(steps=12, step=4, fraction=0.01, margin=4.0, give_up=())  # a margin far enough to take steps
    views = np.stack([chest_phantom(s)[0] for s in range(4)])
    free = np.random.default_rng(3).random((4, 112, 112)) < 0.6
    run = lambda st: Refiner(refine_models / "gradient_vgg16_small.onnx", "cpu", st).refine(views, free, 8)  # noqa: E731
    full, short = run(base), run(replace(base, steps=3))
    at3 = short.margins  # the margins after 3 steps (or when fooled earlier)
    going = (short.steps == 3) & (at3 > -base.margin)
    assert going.sum() >= 2, short  # the bound below splits them
    bound = float(at3[going].max()) - 1e-6  # the least-fooled image gives up, the others go on
    cut = run(replace(base, give_up=((3, bound),)))
    stopped = going & (at3 > bound)
    assert 1 <= stopped.sum() < going.sum()
    assert np.array_equal(cut.steps[stopped], np.full(stopped.sum(), 3)) and np.array_equal(cut.grids[stopped], short.grids[stopped])
    assert np.array_equal(cut.steps[~stopped], full.steps[~stopped]) and np.array_equal(cut.grids[~stopped], full.grids[~stopped])
    same = run(replace(base, give_up=((3, 1e9),)))
    assert np.array_equal(same.grids, full.grids) and np.array_equal(same.steps, full.steps)
