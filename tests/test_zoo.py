"""The transfer lab: the zoo's split, its pipelines, seeded training, and the transfer matrix."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medrae.models import zoo  # noqa: E402


def test_no_held_out_target_is_a_surrogate_or_a_sibling_of_one():
    zoo.check_split()  # the shipped split
    surrogate_families = {m.family for m in zoo.members("surrogate")} | set(zoo.SHIPPED_FAMILIES)
    targets = zoo.members("target")
    assert len(zoo.ZOO) >= 8 and len(targets) >= 4
    assert not {m.name for m in targets} & {m.name for m in zoo.members("surrogate")}
    assert all(m.family not in surrogate_families for m in targets)
    assert len({m.size for m in zoo.ZOO}) >= 4 and {m.prep for m in zoo.ZOO} == {"plain", "imagenet", "histeq"}
    # a target with a surrogate's family is refused
    sibling = dataclasses.replace(targets[0], name="t_sibling", family="resnet")
    with pytest.raises(ValueError, match="t_sibling: held-out target of family 'resnet'"):
        zoo.check_split(zoo.ZOO + (sibling,))


def _equalize_lut(img: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist rule: lut = round((cdf - cdf_min) * 255 / (N - cdf_min))."""
    hist = np.bincount(img.ravel(), minlength=256)
    cdf = hist.cumsum()
    cdf_min = cdf[hist > 0][0]
    return np.clip(np.round((cdf - cdf_min) * 255.0 / max(1, cdf[-1] - cdf_min)), 0, 255)


def _equalize_reference(img: np.ndarray) -> np.ndarray:
    return _equalize_lut(img)[img]


def test_equalize_matches_the_cdf_reference():
    rng = np.random.default_rng(3)
    imgs = np.stack([rng.integers(20, 120, (32, 32)), rng.integers(0, 256, (32, 32)), np.full((32, 32), 77)]).astype(np.uint8)
    got = zoo.equalize(torch.from_numpy(imgs[:, None].astype(np.float32)))[:, 0].numpy()
    for g, x in zip(got, imgs):
        np.testing.assert_array_equal(g, _equalize_reference(x))
    assert got[0].max() == 255 and got[0].min() == 0  # a narrow histogram is spread


def test_equalize_passes_gradients_through_the_luts_local_slope():
    img = np.random.default_rng(4).integers(40, 90, (16, 16)).astype(np.uint8)
    x = torch.from_numpy(img[None, None].astype(np.float32)).requires_grad_(True)
    out = zoo.equalize(x)
    np.testing.assert_array_equal(out.detach()[0, 0].numpy(), _equalize_reference(img))  # the values do not change
    out.sum().backward()
    lut = _equalize_lut(img)
    padded = np.concatenate([lut[:1], lut, lut[-1:]])
    np.testing.assert_allclose(x.grad[0, 0].numpy(), (padded[img.astype(int) + 2] - padded[img.astype(int)]) / 2)
    assert (x.grad > 0).float().mean() > 0.9  # a brighter pixel reads brighter after equalisation


@pytest.mark.parametrize("name", [m.name for m in zoo.ZOO])
def test_every_member_takes_pixels_at_any_size(name):
    model = zoo.ZooModel(zoo.member(name)).eval()
    for side in (224, 300):
        x = torch.rand(2, 1, side, side) * 255
        assert model(x).shape == (2, 3)
    assert model.prepare(torch.rand(1, 1, 224, 224) * 255).shape[-1] == zoo.member(name).size


def test_training_is_seeded_and_exact(phantom_dataset, tmp_path):
    spec = dataclasses.replace(zoo.member("s_resnet10_128"), epochs=2, size=64)
    a = zoo.train_member(spec, phantom_dataset, tmp_path / "a" / spec.name, threads=1, batch=8)
    wa = torch.load(tmp_path / "a" / spec.name / "best.pt", weights_only=False)["model"]
    b = zoo.train_member(spec, phantom_dataset, tmp_path / "c" / spec.name, threads=1, batch=8)
    wb = torch.load(tmp_path / "c" / spec.name / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and len(a["history"]) == 2 and 0 <= a["test_acc"] <= 1
    assert json.loads((tmp_path / "a" / spec.name / "result.json").read_text())["command"].startswith("python -m medrae.models.zoo train")
    assert not (tmp_path / "a" / spec.name / "last.pt").exists()  # the optimiser state is dropped once done


def test_an_interrupted_training_resumes_where_it_stopped(phantom_dataset, tmp_path):
    spec = dataclasses.replace(zoo.member("t_densenet_128_histeq"), epochs=2, size=64)
    full = zoo.train_member(spec, phantom_dataset, tmp_path / "full" / spec.name, threads=1, batch=8)

    class Killed(Exception):
        pass

    def die_after_first_epoch(line):
        if '"epoch": 1' in line:
            raise Killed

    out = tmp_path / "cut" / spec.name
    with pytest.raises(Killed):
        zoo.train_member(spec, phantom_dataset, out, threads=1, batch=8, log=die_after_first_epoch)
    assert (out / "last.pt").exists() and not (out / "result.json").exists()
    logs = []
    resumed = zoo.train_member(spec, phantom_dataset, out, threads=1, batch=8, log=logs.append)
    assert logs[0] == f"{spec.name}: resuming at epoch 1"
    assert len(resumed["history"]) == 2
    assert resumed["history"][1]["loss"] == full["history"][1]["loss"]  # the same second epoch
    assert resumed["test_acc"] == full["test_acc"]


def test_transfer_lab_scores_only_held_out_targets(phantom_dataset, tmp_path):
    from medrae.toolkit.datasets import load_split
    from medrae.evaluation.transfer import TransferLab, noise_floor

    spec = dataclasses.replace(zoo.member("t_xception_150_histeq"), epochs=1)
    zoo.train_member(spec, phantom_dataset, tmp_path / spec.name, threads=1, batch=8)
    s_spec = zoo.member("s_resnet10_128")
    (tmp_path / s_spec.name).mkdir()
    torch.save({"model": zoo.ZooModel(s_spec).state_dict()}, tmp_path / s_spec.name / "best.pt")  # a surrogate present too
    (tmp_path / s_spec.name / "result.json").write_text("{}")
    unfinished = tmp_path / "t_convnext_256"
    unfinished.mkdir()  # a target still training (best.pt, no result.json) is not scored
    torch.save({"model": zoo.ZooModel(zoo.member("t_convnext_256")).state_dict()}, unfinished / "best.pt")
    test = load_split(phantom_dataset / "test")
    lab = TransferLab(tmp_path, test.images, test.labels, ("file", "jpeg75", "nearest"))
    assert lab.names == [spec.name]  # the surrogate is never a target
    same = lab.asr(test.images)
    assert all(v == 0 or np.isnan(v) for row in same.values() for v in row.values())  # unchanged images fool nothing
    noisy = noise_floor(test.images, 8)
    d = noisy.astype(int) - test.images
    assert np.abs(d).max() == 8 and len(np.unique(d)) == 17
    with pytest.raises(ValueError, match="unknown transfer condition"):
        TransferLab(tmp_path, test.images, test.labels, ("blur",))
    with pytest.raises(FileNotFoundError, match="no trained held-out target"):
        TransferLab(tmp_path / "empty", test.images, test.labels)


@pytest.mark.parametrize("condition, resample", [("nearest", "NEAREST"), ("area", "BOX"), ("bicubic", "BICUBIC")])
def test_an_attackers_resize_condition_is_the_resize_pil_would_save(condition, resample):
    from PIL import Image

    from medrae.evaluation.transfer import RESIZES, resized

    from medrae.toolkit.phantoms import chest_phantom

    # X-ray-like images: PIL clips each of its two 8-bit passes, so bicubic overshoot on pure noise differs
    x = np.stack([chest_phantom(k)[0] for k in range(2)])
    ours = resized(x, 150, *RESIZES[condition])
    theirs = np.stack([np.asarray(Image.fromarray(v).resize((150, 150), getattr(Image, resample))) for v in x])
    assert ours.shape == (2, 150, 150) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs).max() <= 1  # PIL rounds its 8-bit fixed point; we round the exact value


@pytest.fixture(scope="module")
def tiny_zoo(phantom_dataset, tmp_path_factory):
    """A zoo trained one epoch on the phantoms: one surrogate, one held-out target."""
    root = tmp_path_factory.mktemp("zoo")
    for name in ("s_resnet10_128", "t_densenet_128_histeq"):
        spec = dataclasses.replace(zoo.member(name), epochs=1)
        zoo.train_member(spec, phantom_dataset, root / name, threads=1, batch=8)
    return root


def test_surrogate_gradient_model_matches_autograd_through_the_pipeline(tiny_zoo, phantom_dataset, tmp_path):
    from medrae.toolkit.datasets import load_split
    from medrae.toolkit.ort import session

    card = zoo.export_gradient(tiny_zoo, "s_resnet10_128", tmp_path / "g.onnx", phantom_dataset / "test")
    assert card["parity"]["min_grad_cosine"] >= 0.9999 and card["parity"]["decision_mismatches"] == 0
    # independently of the export's own check: ORT's gradient against autograd on the 0..255 pipeline
    model = zoo.load(tiny_zoo, "s_resnet10_128")
    x = torch.from_numpy(load_split(phantom_dataset / "test").images[:4]).unsqueeze(1).float().requires_grad_(True)
    z = model(x)
    lab = z.argmax(1)
    margin = z.gather(1, lab[:, None])[:, 0] - z.scatter(1, lab[:, None], float("-inf")).max(1).values
    want = torch.autograd.grad(margin.sum(), x)[0].numpy()
    logits, grad = session(tmp_path / "g.onnx", "cpu").run(None, {"image": ((x.detach() / 255 - 0.5) / 0.25).numpy(), "label": np.full(4, -1, np.int64)})
    np.testing.assert_allclose(logits, z.detach().numpy(), atol=1e-3)
    cos = (grad * want).sum((1, 2, 3)) / np.sqrt((grad**2).sum((1, 2, 3)) * (want**2).sum((1, 2, 3)))
    assert cos.min() > 0.9
    with pytest.raises(ValueError, match="held-out target"):
        zoo.export_gradient(tiny_zoo, "t_densenet_128_histeq", tmp_path / "t.onnx", phantom_dataset / "test")
    with pytest.raises(ValueError, match="only plain-normalised"):
        zoo.export_gradient(tiny_zoo, "s_resnet14_160_imnet", tmp_path / "i.onnx", phantom_dataset / "test")


def test_lgv_weights_are_seeded_resumable_and_only_for_surrogates(tiny_zoo, phantom_dataset, tmp_path):
    import shutil

    for d in ("a", "b"):
        shutil.copytree(tiny_zoo / "s_resnet10_128", tmp_path / d / "s_resnet10_128")
    a = zoo.collect_lgv(tmp_path / "a", "s_resnet10_128", phantom_dataset, epochs=2, per_epoch=2, lr=0.01, batch=8, threads=1)
    files = zoo.lgv_checkpoints(tmp_path / "a", "s_resnet10_128")
    assert [f.name for f in files] == ["00.pt", "01.pt", "02.pt", "03.pt"] and len(a["history"]) == 4
    w = [torch.load(f, weights_only=False)["model"] for f in files]
    start = torch.load(tiny_zoo / "s_resnet10_128" / "best.pt", weights_only=False)["model"]
    key = next(k for k in start if k.endswith("weight") and start[k].ndim == 4)
    assert not torch.equal(w[0][key], start[key]) and not torch.equal(w[0][key], w[3][key])  # the weights move along the trajectory

    class Killed(Exception):
        pass

    def die_in_second_epoch(line):
        if '"epoch": 2' in line:
            raise Killed

    with pytest.raises(Killed):
        zoo.collect_lgv(tmp_path / "b", "s_resnet10_128", phantom_dataset, epochs=2, per_epoch=2, lr=0.01, batch=8, threads=1, log=die_in_second_epoch)
    assert zoo.lgv_checkpoints(tmp_path / "b", "s_resnet10_128") == []  # unfinished: not used
    b = zoo.collect_lgv(tmp_path / "b", "s_resnet10_128", phantom_dataset, epochs=2, per_epoch=2, lr=0.01, batch=8, threads=1)
    assert b["history"] == a["history"]
    last = torch.load(zoo.lgv_checkpoints(tmp_path / "b", "s_resnet10_128")[-1], weights_only=False)["model"]
    assert all(torch.equal(last[k], w[3][k]) for k in last)  # resumed = uninterrupted, to the bit
    with pytest.raises(ValueError, match="held-out target"):
        zoo.collect_lgv(tiny_zoo, "t_densenet_128_histeq", phantom_dataset, epochs=1)

    # the pattern's trainer attacks through them: a random LGV weight per draw, never a target
    from medrae.models import train_pattern

    shutil.copytree(tiny_zoo / "t_densenet_128_histeq", tmp_path / "a" / "t_densenet_128_histeq")
    names, nets = train_pattern.surrogates(train_pattern.Path(train_pattern.__file__).resolve().parent, tmp_path / "a", lgv=True)
    assert names[-1] == "s_resnet10_128+lgv4" and not any(n.startswith("t_") for n in names)
    lgv = nets[-1]
    x = torch.rand(2, 1, 224, 224) * 255
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        lgv.draw(gen)
        seen.add(tuple(lgv(x).detach().numpy().round(5).ravel()))
    assert len(seen) > 1  # different weights answer
    assert all(not p.requires_grad for p in lgv.parameters())  # a surrogate: the pattern, not it, learns


def test_resize_matrix_is_the_pipelines_resize():
    import torch.nn.functional as F

    x = torch.rand(2, 1, 224, 224) * 255
    for size in (128, 150, 256):
        r = zoo.resize_matrix(size)
        want = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(r @ x @ r.T, want, atol=1e-3, rtol=0)


def test_evaluate_transfer_writes_the_matrix_with_its_floor(tiny_zoo, phantom_dataset, tmp_path):
    from typer.testing import CliRunner

    from medrae.cli import app

    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["evaluate", str(phantom_dataset / "test"), "--report", str(out), "--quick", "--methods", "ours_rae,ours_rae_transfer",
                                 "--transfer", "--zoo", str(tiny_zoo), "--transfer-conditions", "file,jpeg75"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    z = res["zoo"]
    assert z["targets"] == ["t_densenet_128_histeq"] and z["conditions"] == ["file", "jpeg75"]
    assert set(z["noise_floor"]) == {"file", "jpeg75"}
    if res["evaluated"]:
        for m in ("ours_rae", "ours_rae_transfer"):
            row = res["methods"][m]["8"]["zoo_transfer"]
            assert set(row["file"]) == {"t_densenet_128_histeq"}
        assert "Table 8: transfer to the held-out zoo targets" in (out / "report.md").read_text()
        assert "uniform noise" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, ["evaluate", str(phantom_dataset / "test"), "--report", str(out), "--methods", "nope"])
    assert bad.exit_code == 2 and "unknown method(s) nope" in bad.output


def test_medrae_train_zoo_forwards_to_the_zoo_trainer(capsys):
    from typer.testing import CliRunner

    from medrae.cli import app

    r = CliRunner().invoke(app, ["train", "zoo", "--help"])
    assert r.exit_code == 0 and "--only" in r.output
    zoo.main(["list"])
    listed = capsys.readouterr().out
    assert all(m.name in listed for m in zoo.ZOO) and listed.count("target") == len(zoo.members("target"))


def test_an_unknown_zoo_member_is_one_line_and_trains_nothing(tmp_path, capsys):
    from typer.testing import CliRunner

    from medrae.cli import app

    out = tmp_path / "zoo"
    r = CliRunner().invoke(app, ["train", "zoo", "--data", str(tmp_path), "--out", str(out), "--only", "t_densenet_128"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "unknown zoo member 't_densenet_128'" in lines[0] and "t_densenet_128_histeq" in lines[0]
    assert zoo.main(["lgv", "nope", "--zoo", str(out), "--data", str(tmp_path)]) == 2
    assert "unknown zoo member 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_skip_gradient_scales_the_residual_branch_and_keeps_the_forward():
    from medrae.models import train_pattern
    from medrae.models.classifiers import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()  # identity shortcut: d out / d x = shortcut + branch
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    before = block(x)
    g_full = torch.autograd.grad(before.sum(), x)[0]
    net = torch.nn.Sequential(block)
    assert train_pattern.skip_gradient([net], 0.0) == 1
    after = block(x)
    torch.testing.assert_close(after, before)  # the forward pass is unchanged
    g_skip = torch.autograd.grad(after.sum(), x)[0]
    # gamma 0: only the skip connection carries gradient, gated by the output ReLU
    torch.testing.assert_close(g_skip, (before > 0).float())
    assert not torch.allclose(g_skip, g_full)


def test_feature_layer_finds_a_middle_layer_in_every_surrogate_family():
    from medrae.models import train_pattern

    for m in zoo.members("surrogate"):
        net = zoo.ZooModel(m).eval()
        layer = train_pattern.feature_layer(net)
        seen = []
        handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
        with torch.no_grad():
            net(torch.rand(1, 1, 224, 224) * 255)
        handle.remove()
        assert len(seen) == 1 and seen[0].ndim >= 3, m.name  # a feature map (or tokens), not the logits
        assert seen[0].shape[1:] != (3,), m.name
    with pytest.raises(ValueError, match="no feature layer"):
        train_pattern.feature_layer(torch.nn.Linear(2, 3))
