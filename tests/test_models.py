"""Model definitions, training resume and ONNX export parity (needs the ``train`` extra)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from medrae.models import create  # noqa: E402
from medrae.models.advgan import round_ste, roi_cells  # noqa: E402
from medrae.kernels.resample import upsample  # noqa: E402
from medrae.toolkit.phantoms import chest_phantom  # noqa: E402


@pytest.mark.parametrize("name, out", [("unet_small", (2, 1, 64, 64)), ("resnet18", (2, 3)), ("resnet50", (2, 3)), ("vgg16_small", (2, 3))])
def test_shapes(name, out):
    assert tuple(create(name)(torch.zeros(2, 1, 64, 64)).shape) == out


@pytest.mark.parametrize("name", ["advgan_paper", "advgan_grid", "advgan_grid2"])
def test_generator_respects_roi_and_eps(name):
    torch.manual_seed(0)
    g = create(name, eps=6)
    x = torch.randn(2, 1, 64, 64)
    m = torch.zeros(2, 1, 64, 64)
    m[:, :, 10:40, 5:30] = 1
    d = g(x, m).detach()
    assert d.shape == x.shape and float(d.abs().max()) <= 6
    assert float(d[m > 0.5].abs().max()) == 0.0
    if name != "advgan_paper":
        grid = g.grid(x, m)[0, 0].detach().numpy().astype(np.int64)
        assert grid.shape == (64 // g.grid_factor, 64 // g.grid_factor)
        assert np.array_equal(upsample(grid, g.grid_factor, (64, 64)), d[0, 0].numpy().astype(np.int64))
        assert np.array_equal(d.numpy(), np.round(d.numpy()))  # integers


def test_roi_cells_matches_kernels_downsample():
    m = (torch.rand(1, 1, 30, 34) > 0.9).float()
    cells = roi_cells(m, 4)[0, 0].numpy() > 0
    ref = np.zeros_like(cells)
    mm = m[0, 0].numpy() > 0.5
    for i in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            ref[i, j] = mm[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].any()
    assert np.array_equal(cells, ref)


def test_round_ste_passes_gradients():
    x = torch.tensor([0.2, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0, -2.0] and x.grad.tolist() == [1.0, 1.0, 1.0]


def test_training_resumes_exactly(phantom_dataset, tmp_path, capsys, monkeypatch):
    """Killed after epoch 1, the same command resumes and ends exactly like an uninterrupted run."""
    from medrae.models import train

    def run(out, **patch):
        train.main(["segmenter", "--data", str(phantom_dataset), "--out", str(out), "--size", "32", "--batch", "4", "--epochs", "2"])
        return json.loads((out / "metrics.json").read_text())

    straight = run(tmp_path / "a")
    real_save = torch.save

    def save_then_die(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if str(path).endswith("last.pt"):
            raise KeyboardInterrupt  # the machine went away after the first epoch's checkpoint

    monkeypatch.setattr(train.torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(train.torch, "save", real_save)
    resumed = run(tmp_path / "b")
    assert "resuming" in capsys.readouterr().out
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed) == strip(straight)
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert 0 <= result["test"]["dsc"] <= 1 and result["command"].startswith("python -m medrae.models.train ")


def test_segmenter_pos_weight_makes_a_missed_lung_pixel_dearer():
    """--pos-weight W: a lung pixel called background costs W times a background pixel called lung
    at the same confidence; W = 1 is the paper's plain BCE."""
    from medrae.models.train import segmenter_loss

    sure = torch.tensor([3.0])
    missed = segmenter_loss(-sure, torch.ones(1), 4.0)  # lung, called background
    false = segmenter_loss(sure, torch.zeros(1), 4.0)  # background, called lung
    assert missed.item() == pytest.approx(4 * false.item())
    x, m = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert segmenter_loss(x, m).item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(x, m).item())


@pytest.mark.parametrize("kind", ["segmenter", "classifier", "generator"])
def test_export_parity(kind, phantom_dataset, tmp_path):
    from medrae.export import onnx_export as ex
    from medrae.models.train import build

    torch.manual_seed(0)
    if kind == "generator":
        state = {"arch": "advgan_grid", "eps": 8.0, "model": create("advgan_grid", eps=8.0).state_dict(), "dilate": 4}
    else:
        arch = "unet_small" if kind == "segmenter" else "resnet18"
        state = {"arch": arch, "size": 32, "model": build(kind, arch, 32).state_dict()}
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    out = tmp_path / f"{kind}.onnx"
    assert ex.main([kind, str(ckpt), str(out), "--data", str(phantom_dataset / "test")]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == ex.sha256(out) and card["parity"]["decision_mismatches"] == 0
    assert card["parity"]["max_abs_diff"] <= 1e-4 and card["opset"] == 17
    # a model that no longer matches its export must fail loudly
    model, _ = ex.load(kind, str(ckpt))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    with pytest.raises(ex.ParityError):
        ex.parity(kind, model, out, phantom_dataset / "test", 1e-4)


def test_pruned_cbam_classifier_is_sparse(phantom_dataset, tmp_path):
    from medrae.models import train

    out = tmp_path / "p"
    res = train.train(train.parser().parse_args(["classifier", "--data", str(phantom_dataset), "--out", str(out), "--arch", "vgg16_small_cbam",
                                                 "--size", "32", "--batch", "4", "--epochs", "1", "--prune", "0.6", "--prune-epochs", "1"]))
    assert 0.59 <= res["pruning"]["sparsity"] <= 0.61
    state = torch.load(out / "best.pt", weights_only=False)
    model = train.build("classifier", "vgg16_small_cbam", 32)
    model.load_state_dict(state["model"])  # a plain state dict: the pruning masks were made permanent
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zeros - res["pruning"]["sparsity"]) < 1e-6


def test_pgd_examples_stay_in_the_ball():
    from medrae.models.train import pgd_examples

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 64, 3))
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    y = torch.randint(0, 3, (6,))
    adv = pgd_examples(model, x, y, eps=8, steps=3)
    assert (adv - x).abs().max() <= 8 / (255 * 0.25) + 1e-6
    assert adv.min() >= -2 - 1e-6 and adv.max() <= 2 + 1e-6
    ce = lambda t: torch.nn.functional.cross_entropy(model(t), y)  # noqa: E731
    assert ce(adv) > ce(x)


def test_csm_loss_is_differentiable_through_grad_cam():
    """CSM-GAN's loss: Grad-CAM of the perturbed image must pass gradients back to the perturbation."""
    from medrae.models.train import build
    from medrae.models.train_generator import csm_loss, grad_cam
    from medrae.models.data import normalize

    torch.manual_seed(0)
    clf = build("classifier", "resnet18", 32).eval()
    x = torch.rand(2, 1, 64, 64) * 255
    y = torch.tensor([0, 2])
    cam = grad_cam(clf, normalize(x).requires_grad_(True), y, create_graph=False)
    assert cam.shape[0] == 2 and float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6
    delta = torch.zeros_like(x, requires_grad=True)
    adv = x + 8 * torch.tanh(delta + 0.1)
    loss = csm_loss(clf, x, adv, y, clf(normalize(adv)), c=0.5, alpha=1.0, margin=3.0)
    (g,) = torch.autograd.grad(loss, delta)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_generator_training_takes_a_shipped_onnx_classifier():
    """``train_generator --classifier models/classifier_*.onnx``: the torch rebuild, frozen, with the
    decisions ONNX Runtime makes (no .pt checkpoint needs to exist)."""
    import onnxruntime as ort

    from medrae.models.train_generator import load_classifier
    from medrae.toolkit.protect import MODELS_DIR, normalize

    path = MODELS_DIR / "classifier_vgg16_small.onnx"
    model = load_classifier(str(path), "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = normalize(np.stack([chest_phantom(s)[0] for s in range(3)]))
    want = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
