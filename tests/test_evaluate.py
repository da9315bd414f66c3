"""Attacks (torchattacks-style) and the evaluate harness."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medrae.models.attacks import ATTACKS  # noqa: E402


class Linear(torch.nn.Module):
    """A fixed linear 3-class model on 16x16 images: gradients are known in closed form."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 256, generator=g)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


class SmallConv(torch.nn.Module):
    """Two convolutions and a linear head: something for MLAdv's feature losses to look at."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


@pytest.fixture
def conv_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 16, 16, generator=g) * 200 + 20
    model = SmallConv().eval()
    with torch.no_grad():
        y = model((x / 255 - 0.5) / 0.25).argmax(1)
    return model, x, y


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 16, 16, generator=g) * 200 + 20
    model = Linear()
    y = model((x / 255 - 0.5) / 0.25).argmax(1)
    return model, x, y


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_stay_in_budget_and_region(name, conv_batch):
    model, x, y = conv_batch
    region = torch.zeros_like(x)
    region[..., :, 8:] = 1
    adv = ATTACKS[name](model, eps=4, **({"steps": 5} if name != "fgsm" else {}))(x, y, region)
    d = adv - x
    assert d.abs().max() <= 4 + 1e-4 and d[region == 0].abs().max() == 0
    assert adv.min() >= 0 and adv.max() <= 255
    assert d.abs().sum() > 0


@pytest.mark.parametrize("name", ["fgsm", "bim", "pgd", "stabilized", "mladv", "mi_di_ti"])
def test_attacks_raise_the_loss(name, conv_batch):
    model, x, y = conv_batch
    adv = ATTACKS[name](model, eps=8)(x, y)
    ce = lambda t: torch.nn.functional.cross_entropy(model((t / 255 - 0.5) / 0.25), y)  # noqa: E731
    assert ce(adv) > ce(x)


def test_fgsm_is_the_sign_of_the_gradient(batch):
    """For a linear model the FGSM step is eps * sign(d CE / d x), computable by hand."""
    model, x, y = batch
    adv = ATTACKS["fgsm"](model, eps=2)(x, y)
    p = torch.softmax(model((x / 255 - 0.5) / 0.25), 1)
    grad = (p - torch.nn.functional.one_hot(y, 3).float()) @ model.w  # d CE / d logits-input, per image
    want = torch.clamp(x + 2 * grad.view_as(x).sign(), 0, 255)
    assert torch.allclose(adv, want)


def test_mi_di_ti_without_its_three_parts_is_bim(conv_batch):
    """No momentum, no input diversity, no smoothing: the same sign steps as BIM, and each part
    switched on changes the result."""
    model, x, y = conv_batch
    bim = ATTACKS["bim"](model, eps=4, steps=4)(x, y)
    plain = dict(momentum=0.0, diversity=0.0, kernel=1, steps=4)
    assert torch.equal(ATTACKS["mi_di_ti"](model, eps=4, **plain)(x, y), bim)
    for part in ({"momentum": 1.0}, {"diversity": 1.0}, {"kernel": 5}):
        assert not torch.equal(ATTACKS["mi_di_ti"](model, eps=4, **{**plain, **part})(x, y), bim)


def test_unknown_option_is_an_error(batch):
    model, _, _ = batch
    with pytest.raises(TypeError, match="no option 'stepz'"):
        ATTACKS["pgd"](model, stepz=3)


def test_classifier_rebuilt_from_onnx_matches_ort():
    from pathlib import Path

    from medrae.models.from_onnx import load_classifier

    root = Path(__file__).resolve().parents[1] / "models"
    # the white-box target, a VGG, and the defended one (CBAM: convolutions and MLPs beside the head)
    for name in ("classifier_resnet18", "classifier_vgg16_small", "classifier_vgg16_small_cbam_pruned"):
        load_classifier(root / f"{name}.onnx")  # raises if the torch rebuild differs from ONNX Runtime


def test_evaluate_quick_on_phantoms(phantom_dataset, tmp_path):
    from typer.testing import CliRunner

    from medrae.cli import app

    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["evaluate", str(phantom_dataset / "test"), "--report", str(out), "--quick",
                                 "--methods", "ours_ae,ours_rae,fgsm,liu_rae,ours_rae_noregion,paper_rae,csm_gan"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) <= {"ours_ae", "ours_rae", "fgsm", "liu_rae", "ours_rae_noregion", "csm_gan"}
    assert "csm_gan" in res["methods"] and "csm_gan" not in res["skipped"]  # the seed's CSM-GAN generator ships
    from medrae.toolkit.ort import file_sha256
    from medrae.toolkit.protect import MODELS_DIR

    # provenance: every shipped model file's digest, so that the numbers can be traced to models
    assert res["models"]["classifier_resnet18.onnx"] == file_sha256(MODELS_DIR / "classifier_resnet18.onnx")
    assert set(res["models"]) == {f.name for f in MODELS_DIR.glob("*.onnx")} and res["medrae_version"]
    for f in ("report.md", "report.html"):
        assert (out / f).stat().st_size > 100
    # one eps: no curve to draw, so neither the file nor its heading (it used to be an empty chart)
    assert not (out / "curves.svg").exists() and "against eps" not in (out / "report.html").read_text()
    assert (out / "examples.png").exists() == ("Examples" in (out / "report.html").read_text())
    if res["evaluated"]:
        rae = res["methods"]["ours_rae"]["8"]
        assert rae["restored_fraction"] in (1.0, None) and 0 <= rae["asr"] <= 1 and rae["psnr"] > 20
        assert "Table 2" in (out / "report.md").read_text()


def test_rit_round_trip_on_a_phantom():
    """Yin et al. RIT-RAE: transform towards a target, embed the auxiliary data, restore exactly."""
    from medrae.evaluation import rit
    from medrae.toolkit.phantoms import chest_phantom

    x, _ = chest_phantom(3)
    rng = np.random.default_rng(0)
    target = np.clip(x.astype(int) + rng.choice([-8, 8], x.shape), 0, 255).astype(np.uint8)
    transformed, aux = rit.transform(x, target)
    assert np.array_equal(rit.inverse(transformed, aux), x)
    # the transform moves the image towards the target
    assert np.abs(transformed.astype(int) - target).mean() < np.abs(rng.permutation(x.ravel()).astype(int) - target.ravel()).mean()
    marked, bits = rit.protect(x, target)
    assert bits == 8 * len(aux) and np.array_equal(rit.restore(marked), x)


def test_every_table_row_matches_its_header():
    from medrae.evaluation.evaluate import tables

    row = {"asr": 0.5, "psnr": 33.0, "ssim": 0.9, "seconds_per_image": 0.1, "transfer": {"b": 0.2, "d": 0.1},
           "roi_max_change": 2, "roi_mean_change": 0.5, "payload_bpp": 0.2, "fit_fraction": 1.0, "restored_fraction": 1.0,
           "conditions": {"jpeg90": 0.4}}
    results = {"eps": [4, 8], "white_box": "a", "published": {}, "conditions": ["jpeg90"], "defended": ["d"], "clean_accuracy": {"d": 0.9},
               "methods": {"ours_ae": {"4": row, "8": row}, "ours_rae": {"8": row}, "ours_rae_noregion": {"8": row}, "pgd": {"4": row, "8": row}}}
    titles = []
    for title, header, rows in tables(results):
        titles.append(title.split(":")[0])
        assert rows and all(len(r) == len(header) for r in rows), title
    assert titles == [f"Table {k}" for k in (1, 2, 3, 4, 5, 6, 7)]
    # Table 3 gives each method's speed-up over the Liu-RAE of the same run
    slow = dict(row, seconds_per_image=0.8)
    results["methods"]["liu_rae"] = {"8": slow}
    _, header, rows = next(t for t in tables(results) if t[0].startswith("Table 3"))
    ratio = {r[0]: r[header.index("Liu-RAE time / this")] for r in rows}
    assert ratio["ours_rae"] == "8.00" and ratio["liu_rae"] == "1.00"


def test_defended_target_methods(tmp_path):
    """ours_rae_defended needs the defended classifier's gradient model (shipped); pgd_defended
    crafts PGD on the defended classifier itself, so it fools that one, not by transfer."""
    import shutil

    from medrae.evaluation.evaluate import DEFENDED, Harness
    from medrae.toolkit.protect import MODELS_DIR

    h = Harness(MODELS_DIR, bytes(32))
    assert h.available("ours_rae_defended") is None and h.available("pgd_defended") is None
    assert h.available("ours_rae_robust_defended") is None
    assert Harness.base_attack("pgd_defended") == "pgd"
    for f in MODELS_DIR.iterdir():
        if f.name != f"gradient_{DEFENDED}.onnx":
            shutil.copy(f, tmp_path)
    for method in ("ours_rae_defended", "ours_rae_robust_defended"):
        assert "no gradient model for vgg16_small_cbam_pruned" in Harness(tmp_path, bytes(32)).available(method)


def test_seed_generators_run_alone(tmp_path):
    """csm_gan and paper_rae measure their generators: one forward pass, no gradient refinement
    (which protect would otherwise run, since the white-box gradient model is there)."""
    import shutil

    from medrae.evaluation.evaluate import Harness
    from medrae.toolkit.phantoms import chest_phantom
    from medrae.toolkit.protect import MODELS_DIR

    for f in MODELS_DIR.iterdir():
        if f.is_file() and not f.name.startswith("generator_csm"):
            shutil.copy(f, tmp_path)
    assert Harness(tmp_path, bytes(32)).available("csm_gan") is not None  # absent from a model folder: skipped with a reason
    for name in ("generator_csm", "generator_paper"):  # stand-ins: the shipped generator under the seed names
        for ext in (".onnx", ".json"):
            shutil.copy(MODELS_DIR / f"generator{ext}", tmp_path / f"{name}{ext}")
    h = Harness(tmp_path, bytes(32))
    assert h.available("csm_gan") is None and h.available("paper_rae") is None
    assert h.csm.mode == h.paper.mode == "generator" and h.csm.refiner is None
    x = np.stack([chest_phantom(s)[0] for s in range(2)])
    want = h.csm.analyse(x, 8, region=False).grids  # the generator's grids on the whole image
    got = h.run("csm_gan", x, np.zeros(2, np.int64), 8, {}).images
    assert np.array_equal(got, np.clip(x.astype(int) + np.repeat(np.repeat(want, 2, 1), 2, 2), 0, 255))


CHROMIUM = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(c).exists()), None)
_CHECK = """<script>
window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  document.body.setAttribute('data-images', String(document.images.length));
  document.body.setAttribute('data-broken', bad.join(' '));
});
</script>"""


def _render(page: Path, screenshot: Path | None = None) -> tuple[int, list[str]]:
    """Open ``page`` in headless Chromium: (images on the page, those that failed to load)."""
    import re
    import subprocess
    import tempfile

    probe = page.with_name("_render_check.html")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
        if screenshot is not None:
            subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", "--window-size=1280,2400", f"--screenshot={screenshot}",
                            page.as_uri()], capture_output=True, timeout=120)
    probe.unlink()
    n = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="([^"]*)"', dom)
    assert n and broken is not None, f"the page did not finish loading in Chromium: {dom[:300]}"
    return int(n.group(1)), broken.group(1).split()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_evaluate_report_renders_in_a_browser_with_every_figure(phantom_dataset, tmp_path):
    from typer.testing import CliRunner

    from medrae.cli import app

    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["evaluate", str(phantom_dataset / "test"), "--report", str(out), "--limit", "6", "--eps", "4,8",
                                 "--methods", "ours_rae,fgsm,pgd"])
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    assert "<title>medrae evaluation: " in page and str(phantom_dataset) not in page.split("</title>")[0]  # no machine path
    assert "<style>" in page and "ASR and PSNR against eps" in page and "Examples" in page
    images, broken = _render(out / "report.html", tmp_path / "report.png")
    assert images == 2 and broken == [], broken
    svg = (out / "curves.svg").read_text()
    assert "eps (1/255)" in svg and "fgsm" in svg and "pgd" in svg  # axes and legend


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_evaluate_frontier_draws_every_level(phantom_dataset, tmp_path):
    """``--frontier`` protects at every strength level (and the eps between them) and draws PSNR
    against white-box ASR with the paper's point; without a zoo the held-out part says why it is absent."""
    from typer.testing import CliRunner

    from medrae.cli import app
    from medrae.toolkit.settings import STRENGTHS

    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["evaluate", str(phantom_dataset / "test"), "--report", str(out), "--limit", "6", "--methods", "none",
                                 "--frontier", "--zoo", str(tmp_path / "no_zoo")])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    if not res["evaluated"]:
        assert "frontier" in res["skipped"]
        return
    points = res["frontier"]["points"]
    assert set(STRENGTHS) <= set(points) and "before (0.2 default)" in points and "frontier held-out targets" in res["skipped"]
    for p in points.values():
        assert p["restored_fraction"] in (1.0, None) and p["roi_max_change"] <= 1 and 0 <= p["white_box"] <= 1
    assert points["standard"]["pattern_eps"] == STRENGTHS["standard"].pattern_eps and points["standard"]["keyed"]
    assert points["strong"]["mode"].startswith("transfer stage on") and not points["strong"]["pattern_eps"]
    page = (out / "report.html").read_text()
    assert "Strength frontier" in page and "Table 1" not in page  # no empty tables when only the frontier ran
    images, broken = _render(out / "report.html")
    assert images == 1 and broken == [], broken
    assert "reference paper" in (out / "frontier.svg").read_text()
