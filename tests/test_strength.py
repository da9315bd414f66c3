"""Strength levels and the secret pattern placement (issue: one dial from invisible to the paper's
image quality; strength an attacker with medrae but not the key cannot subtract)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from medrae import kernels
from medrae.evaluation import adaptive
from medrae.evaluation.frontier import same_psnr_noise, svg, table
from medrae.kernels.codecs import PatternHint, decode_perturbation, encode_perturbation
from medrae.kernels.errors import PayloadError
from medrae.kernels.patterns import DEFAULT_PATTERN, IDENTITY, Placement, block_moves, draw_placement, load, moved, on_grid, placed
from medrae.toolkit.phantoms import chest_phantom
from medrae.toolkit.protect import Protector, fit_analysed
from medrae.toolkit.settings import STRENGTHS, ProtectSettings, strength


@pytest.fixture(scope="module")
def views() -> np.ndarray:
    return np.stack([chest_phantom(k)[0] for k in range(2)])


SEED = bytes(range(16))


def test_placement_mirrors_and_shifts_each_block():
    p = load(DEFAULT_PATTERN)[1]
    assert np.array_equal(placed(DEFAULT_PATTERN, 1), p)
    whole = Placement(SEED, 0)
    (sy, sx, mirror), = block_moves(whole, 56)[0]
    assert np.array_equal(placed(DEFAULT_PATTERN, 1, whole), np.roll(p[:, ::-1] if mirror else p, (sy, sx), (0, 1)))
    blocks = Placement(SEED, 8)
    moves = block_moves(blocks, 56)
    assert moves.shape == (7, 7, 3) and len({tuple(m) for m in moves.reshape(-1, 3)}) > 40  # each block its own move
    out = placed(DEFAULT_PATTERN, 1, blocks)
    for by, bx in ((0, 0), (3, 5), (6, 6)):
        sy, sx, mirror = moves[by, bx]
        want = np.roll(p[:, ::-1] if mirror else p, (sy, sx), (0, 1))
        assert np.array_equal(out[8 * by : 8 * by + 8, 8 * bx : 8 * bx + 8], want[8 * by : 8 * by + 8, 8 * bx : 8 * bx + 8])
    assert np.abs(placed(DEFAULT_PATTERN, 1, clip=3)).max() == 3
    with pytest.raises(PayloadError, match="placement"):
        placed(DEFAULT_PATTERN, 1, Placement(b"short", 0))
    with pytest.raises(PayloadError, match="placement"):
        placed(DEFAULT_PATTERN, 1, Placement(SEED, 57))


def test_placement_is_drawn_from_key_and_image():
    a, b = draw_placement(bytes(32), b"image one", 8), draw_placement(bytes(32), b"image one", 8)
    assert a == b and a.block == 8 and len(a.seed) == 16  # the same key and image: the same protected pixels
    assert len({draw_placement(bytes([k]) * 32, b"image one").seed for k in range(40)}) == 40
    assert len({draw_placement(bytes(32), bytes([k])).seed for k in range(40)}) == 40


def test_training_placement_matches_protects():
    """train_pattern trains the pattern for the moves protect makes (mirror, then a cyclic shift)."""
    torch = pytest.importorskip("torch")
    from medrae.models.train_pattern import place

    p = torch.from_numpy(load(DEFAULT_PATTERN).astype(np.float32))[:, None]
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = place(p, gen)[:, 0].numpy()
    gen.set_state(state)
    mirror = float(torch.rand(1, generator=gen)) < 0.5
    sy, sx = (int(v) for v in torch.randint(56, (2,), generator=gen))
    for c in range(3):
        assert np.array_equal(out[c], moved(load(DEFAULT_PATTERN)[c], sy, sx, mirror))


def test_pipeline_view_is_differentiable_and_sized():
    torch = pytest.importorskip("torch")
    from medrae.models.train_pattern import pipeline_view

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 224, 224) * 255).requires_grad_(True)
    sizes = set()
    for _ in range(12):
        v = pipeline_view(x, gen)
        assert v.shape[:2] == (2, 1) and 128 <= v.shape[-1] <= 320 and v.shape[-1] == v.shape[-2]
        sizes.add(v.shape[-1])
        v.sum().backward()
    assert x.grad.abs().sum() > 0 and len(sizes) > 3


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=16, max_size=16), block=st.sampled_from([0, 4, 8, 14, 56]), keyed=st.booleans(),
       clip=st.integers(0, 17), gain=st.integers(1, 3), cls=st.integers(0, 2), noise=st.integers(0, 2**16))
def test_keyed_pattern_codec_round_trip(seed, block, keyed, clip, gain, cls, noise):
    rng = np.random.default_rng(noise)
    pl = Placement(seed, block) if keyed else IDENTITY
    cover = rng.random((112, 112)) < 0.6
    grid = on_grid(DEFAULT_PATTERN, cls, (112, 112), pl, clip, gain) * cover + (rng.random((112, 112)) < 0.05) * rng.integers(-8, 9, (112, 112))
    p = np.repeat(np.repeat(grid, 2, 0), 2, 1)
    p[100:120, 90:140] = 0  # an ROI: exceptions to the grid
    hint = PatternHint(DEFAULT_PATTERN, cls, cover, 1, pl, clip, gain)
    code = encode_perturbation(p, codec="auto", grid=grid, factor=2, pattern=hint)
    assert np.array_equal(decode_perturbation(code), p)
    assert hint.codec == ("pattern" if pl == IDENTITY and not clip and gain == 1 else "keyed_pattern")
    if hint.codec == "keyed_pattern":
        with pytest.raises(ValueError, match="keyed_pattern"):
            encode_perturbation(p, codec="pattern", grid=grid, factor=2, pattern=hint)


def test_keyed_pattern_codec_refuses_bad_fields():
    cover = np.ones((112, 112), bool)
    pl = Placement(SEED, 8)
    grid = on_grid(DEFAULT_PATTERN, 0, (112, 112), pl)
    code = bytearray(encode_perturbation(np.repeat(np.repeat(grid, 2, 0), 2, 1), codec="keyed_pattern", grid=grid, factor=2,
                                         pattern=PatternHint(DEFAULT_PATTERN, 0, cover, 1, pl, 0)))
    head = code.index(bytes([DEFAULT_PATTERN, 0, 2, 1]) + SEED, 1) + 3  # after pattern id, class, factor: the keyed flag
    bad = bytearray(code)
    bad[head] = 2
    with pytest.raises(PayloadError, match="placement flag"):
        decode_perturbation(bytes(bad))
    bad = bytearray(code)
    bad[head + 17] = 60  # a block beyond the pattern's 56 cells
    with pytest.raises(PayloadError, match="placement"):
        decode_perturbation(bytes(bad))
    bad = bytearray(code)
    bad[head + 19] = 0  # gain 0
    with pytest.raises(PayloadError, match="gain"):
        decode_perturbation(bytes(bad))
    bad = bytearray(code)
    bad[head + 3] ^= 1  # another seed: another pattern, so the decoded plane differs (the payload's SHA-256 then refuses it)
    assert not np.array_equal(decode_perturbation(bytes(bad)), decode_perturbation(bytes(code)))


def test_strength_levels_configure_protect():
    assert strength("standard") is STRENGTHS["standard"] and "strong" in STRENGTHS
    with pytest.raises(ValueError, match="unknown strength"):
        ProtectSettings(strength="max")
    std, strong = ProtectSettings().protector(), ProtectSettings(strength="strong").protector()
    assert (std.eps, strong.eps) == (STRENGTHS["standard"].eps, STRENGTHS["strong"].eps)
    assert std.pattern_eps == STRENGTHS["standard"].pattern_eps and std.keyed_pattern and std.transfer is None
    assert ProtectSettings(strength="strong").level == "strong" and ProtectSettings(eps=4).level == "standard (custom)"
    amp = STRENGTHS["standard"].pattern_eps
    assert ProtectSettings(eps=12).protector().pattern_eps == amp  # the level's amplitude, never above eps
    assert ProtectSettings(eps=amp - 2).protector().pattern_eps == amp - 2
    # standard gives up on images out of reach (speed); strong refines every image to the end
    assert std.refiner.settings.give_up and strong.refiner.settings.give_up == ()
    assert ProtectSettings(strength="strong", give_up=True).protector().refiner.settings.give_up
    assert ProtectSettings(strength="strong", give_up=True).level == "strong (custom)"
    # strong: the transfer stage with the white box among the surrogates, its level's bound; no pattern
    lv = STRENGTHS["strong"]
    assert strong.pattern_id == 0 and strong.transfer.settings.eps == lv.transfer_eps and strong.transfer.settings.steps == lv.transfer_steps
    assert "gradient_resnet18.onnx" in strong.transfer.files and "resnet18" in strong.transfer.architectures
    alone = ProtectSettings(strength="strong", refine_steps=0)  # the generator alone: no stage, and not the level
    assert alone.protector().transfer is None and alone.level == "strong (custom)" and alone.strength_id == 0
    assert ProtectSettings(refine_steps=0).strength_id == 0 and ProtectSettings(margin=3.0).level == "standard (custom)"
    own = ProtectSettings(strength="strong", transfer_eps=8)  # the expert option changes the level's stage
    assert own.level == "strong (custom)" and own.protector().transfer.settings.eps == 8
    assert own.protector().transfer.architectures == strong.transfer.architectures
    off = ProtectSettings(strength="strong", transfer_steps=0)
    assert not off.transfer_head and off.protector().transfer is None
    assert off.level == "strong (custom)" and off.strength_id == 0  # without its stage it is not the strong level


def test_key_places_the_pattern_and_every_file_restores(views):
    prot = Protector(device="cpu", on_uncertain_roi="proceed", pattern_block=8)
    keys = [bytes(32), bytes([7]) * 32]
    grids = []
    for key in keys:
        a = prot.analyse(views, key=key)
        grids.append(a.grids.copy())  # before fitting (a payload that fits only without the pattern is refined again)
        for k, fit in enumerate(fit_analysed(prot, views, a, key, check=False)):
            use = a.pattern(k)
            assert use.placement == prot.placements(views[k : k + 1], key)[0] != IDENTITY
            assert np.array_equal(kernels.restore_array(fit.marked, key), views[k])
            assert np.abs(fit.marked.astype(int) - views[k])[a.rois[k]].max(initial=0) <= 1
    assert not np.array_equal(grids[0], grids[1])  # another key, another placement
    public = Protector(device="cpu", on_uncertain_roi="proceed", keyed_pattern=False).analyse(views, key=keys[0])
    assert all(public.pattern(k).placement == IDENTITY for k in range(len(views)))
    assert all(prot.analyse(views).pattern(k).placement == IDENTITY for k in range(len(views)))  # keyless: nothing to draw from


def _smooth_body(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image (the anatomy, at the pattern's scale) and a central lung mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    img = 120 + 40 * np.sin(3 * xx + rng.random()) + 30 * np.cos(2 * yy + rng.random())
    mask = np.zeros((224, 224), bool)
    mask[60:170, 50:175] = True
    return img, mask


@pytest.mark.parametrize("keyed", [False, True])
def test_adaptive_attacks_subtract_what_they_can_find(keyed):
    """The public subtraction undoes a pattern at its public placement and not at a keyed one; the
    matched filter finds the placement on a smooth image (which is why docs/STRENGTH.md measures it)."""
    img, mask = _smooth_body(1)
    free = adaptive._free_cells(mask[None], 56)[0]
    pl = Placement(SEED, 0) if keyed else IDENTITY
    d = np.repeat(np.repeat(placed(DEFAULT_PATTERN, 2, pl) * free, 4, 0), 4, 1)
    x = np.clip(np.round(img), 0, 255).astype(np.uint8)
    prot = np.clip(x.astype(int) + d, 0, 255).astype(np.uint8)
    err = lambda out: np.abs(out[0].astype(int) - x).mean()  # noqa: E731
    public = adaptive.subtract_public(prot[None], mask[None], 8)
    matched = adaptive.subtract_matched(prot[None], mask[None], 8)
    assert err(matched) < 0.1 * err(prot[None])
    assert (err(public) < 0.1 * err(prot[None])) == (not keyed)
    for f in (adaptive.median5, adaptive.gauss2):
        out = f(prot[None], mask[None])
        assert np.array_equal(out[0][mask], prot[mask]) and err(out) < err(prot[None])  # lungs kept, the rest smoothed


def test_replay_subtracts_the_transfer_stage_run_again_outside_the_lungs():
    img, mask = _smooth_body(2)
    x = np.clip(np.round(img), 0, 255).astype(np.uint8)
    prot = Protector(device="cpu", transfer_steps=3, on_uncertain_roi="proceed")
    out = adaptive.replay(x[None], mask[None], protector=prot)
    free = adaptive._free_cells(mask[None], 56)
    cands = [adaptive._subtract(x, prot.transfer.run(x[None], free, prot.eps, labels=np.full(1, c))[0], free[0]) for c in range(3)]
    assert any(np.array_equal(out[0], c) for c in cands) and not np.array_equal(out[0], x)
    assert np.array_equal(out[0][mask], x[mask])  # the lungs as they were
    assert adaptive.replay(x[None], mask[None], protector=Protector(device="cpu")) is None  # nothing to replay


@settings(max_examples=25, deadline=None)
@given(mse=st.floats(1.0, 120.0), seed=st.integers(0, 1000))
def test_same_psnr_noise_hits_the_psnr(mse, seed):
    x = np.clip(np.random.default_rng(seed).normal(128, 30, (64, 64)), 0, 255).astype(np.uint8)
    region = np.zeros(x.shape, bool)
    region[:, :40] = True
    y = same_psnr_noise(x, mse, region, np.random.default_rng(seed))
    got = ((y.astype(float) - x) ** 2).mean()
    assert abs(got - mse) / mse < 0.08 and not (y != x)[~region].any()


def test_frontier_table_and_figure():
    row = {"strength": "standard", "eps": 8, "pattern_eps": 8, "keyed": True, "mode": "m", "psnr": 34.5, "ssim": 0.91, "payload_bpp": 0.25,
           "fit_fraction": 1.0, "restored_fraction": 1.0, "images_per_second": 6.0, "white_box": 0.9, "lungs_max_change": 1, "roi_max_change": 1, "lungs_over_one": 0,
           "held_out": {"t1": 0.1, "t2": 0.2}, "held_out_median": 0.15, "floor_psnr": 34.4, "floor": {"t1": 0.05, "t2": 0.02},
           "floor_median": 0.035, "adaptive": {"public": {"kept": 1.0}}}
    strong = dict(row, strength="strong", psnr=29.6, white_box=0.95, held_out_median=0.3, floor_psnr=29.7, floor_median=0.06)
    fr = {"points": {"standard": row, "strong": strong}, "paper": {"label": "paper", "psnr": 29.54, "ssim": 0.79, "asr": 0.89}, "targets": ["t1", "t2"]}
    header, rows = table(fr)
    assert all(len(r) == len(header) for r in rows) and rows[0][header.index("held-out median")] == "15.0 %"
    assert rows[-1][0] == "paper" and "kept after public" in header
    pic = svg(fr)
    assert pic.startswith("<svg") and pic.count("<circle") >= 4 and "PSNR (dB)" in pic and "noise at the same PSNR" in pic
    json.dumps(fr)


def test_cli_strength_in_report_and_info(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from medrae.cli import app

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(chest_phantom(0)[0]).save(src / "a.png")
    r = CliRunner().invoke(app, ["keygen", str(tmp_path / "k.key")])
    assert r.exit_code == 0, r.output
    for level in ("standard", "strong"):
        out = tmp_path / level
        r = CliRunner().invoke(app, ["protect", str(src), str(out), "--key", str(tmp_path / "k.key"), "--strength", level,
                                     "--on-uncertain-roi", "proceed", "--report", str(tmp_path / f"{level}.json"), "--workers", "1"])
        assert r.exit_code == 0, r.output
        rep = json.loads((tmp_path / f"{level}.json").read_text())
        assert rep["strength"] == level and rep["eps"] == STRENGTHS[level].eps
        # standard: the public pattern where the key puts it; strong: the transfer stage, the white box among its models
        assert ("placed by the key" in rep["mode"]) == (level == "standard")
        assert (rep["mode"].startswith("transfer stage on s_resnet10_128 + s_vgg11_150 + resnet18")) == (level == "strong")
        r = CliRunner().invoke(app, ["info", str(out)])
        assert r.exit_code == 0 and level in r.output, r.output
        r = CliRunner().invoke(app, ["verify", str(src), str(out), "--key", str(tmp_path / "k.key")])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["protect", str(src), str(tmp_path / "x"), "--key", str(tmp_path / "k.key"), "--strength", "max"])
    assert r.exit_code == 2 and "--strength must be one of" in r.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_level_is_public_and_authenticated(key):
    from medrae.kernels import container

    x = chest_phantom(0)[0]
    adv = x.copy()
    adv[:20, :20] = np.clip(adv[:20, :20].astype(int) + 3, 0, 255)
    marked, _ = kernels.protect_array(x, adv, key, eps=3, level=2)
    assert kernels.inspect_array(marked)["level"] == 2 and np.array_equal(kernels.restore_array(marked, key), x)
    _, payload = kernels.rdh.extract(marked)
    assert container.read_header(payload).level == 2
    forged = bytearray(payload)
    forged[container._FIXED.size] = 1  # claim another level: the header is authenticated with the body
    with pytest.raises(PayloadError):
        container.open_payload(bytes(forged), key)
    unmarked, _ = kernels.protect_array(x, adv, key, eps=3)
    assert kernels.inspect_array(unmarked)["level"] == 0  # none recorded: the layout as before
