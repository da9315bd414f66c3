"""The strength frontier (``medrae evaluate --frontier``): image quality against protection, for
every strength level and a sweep of eps, beside a floor of noise that costs the same quality.

For each point, the images are protected as ``medrae protect`` does (the same code, a key drawn
for the run) and scored on the saved 8-bit files: PSNR and SSIM (data range 255), payload bits per
pixel, the fraction that fit and restored bit-exact, the largest change in the true lungs, white-box
ASR, every held-out zoo target's ASR (over the images it gets right) and their median, images per
second. The **floor** is uniform integer noise on the same pixels the protection may change (outside
protect's ROI), scaled per image to the protected file's PSNR, scored by the same targets. The
**adaptive attacks** (:mod:`medrae.evaluation.adaptive`) run on the protected files; ``kept`` is the
held-out median after the attack over the median before it.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from medrae import kernels
from medrae.kernels.patterns import DEFAULT_PATTERN
from medrae.toolkit.metrics import psnr, ssim
from medrae.toolkit.protect import Fitted, fit_analysed
from medrae.toolkit.settings import STRENGTHS, ProtectSettings
from . import adaptive

PAPER = {"label": "reference paper (NROI-AdvGAN + RDH)", "psnr": 29.54, "ssim": 0.7922, "asr": 0.8927}


def default_points() -> list[tuple[str, ProtectSettings]]:
    """The default before the strength levels (medrae 0.2: eps 8, the ``cxr3_v1`` pattern where it
    was trained), every strength level, and the strong level's transfer stage at a lower bound
    (between the levels)."""
    before = ProtectSettings(eps=8, pattern_eps=8, pattern=1, keyed_pattern=False, pattern_block=0, pattern_spare_flat=0.0)
    pts = [("before (0.2 default)", before)] + [(name, ProtectSettings(strength=name)) for name in STRENGTHS]
    pts.insert(2, ("strong, transfer bound 8", ProtectSettings(strength="strong", transfer_eps=8)))
    return pts


def same_psnr_noise(x: np.ndarray, target_mse: float, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus uniform integer noise on ``region``, scaled so the result's MSE (after clipping
    to 0..255) is ``target_mse`` within a few percent."""
    if target_mse <= 0 or not region.any():
        return x.copy()
    frac = region.mean()
    s = np.sqrt(3.0 * target_mse / frac)
    u = rng.uniform(-1.0, 1.0, size=x.shape)
    for _ in range(4):
        y = np.clip(x.astype(np.int64) + np.round(u * s).astype(np.int64) * region, 0, 255)
        mse = float(((y - x) ** 2).mean())
        if mse <= 0:
            break
        s *= np.sqrt(target_mse / mse)
    return np.clip(x.astype(np.int64) + np.round(u * s).astype(np.int64) * region, 0, 255).astype(np.uint8)


def _median(row: dict) -> Optional[float]:
    v = [a for a in row.values() if a is not None and np.isfinite(a)]
    return float(np.median(v)) if v else None


def measure_point(settings: ProtectSettings, x: np.ndarray, y: np.ndarray, masks: Optional[np.ndarray], white_box: Callable,
                  lab=None, key: Optional[bytes] = None, batch: int = 16, attacks: tuple[str, ...] = tuple(adaptive.ATTACKS),
                  seed: int = 0) -> dict:
    """One frontier point: ``settings`` protects (N, 224, 224) uint8 ``x`` (true classes ``y``,
    true lung ``masks``); ``white_box(images) -> predictions``; ``lab``: a
    :class:`~medrae.evaluation.transfer.TransferLab` on the same images (None: no held-out columns)."""
    key = os.urandom(32) if key is None else key
    prot = settings.protector()
    out, bits, restored, rois = x.copy(), np.full(len(x), np.nan), np.zeros(len(x), bool), np.zeros(x.shape, bool)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        a = prot.analyse(xb, key=key)
        rois[i : i + batch] = a.rois
        for k, fit in enumerate(fit_analysed(prot, xb, a, key, check=False)):
            if isinstance(fit, Fitted):
                out[i + k], bits[i + k] = fit.marked, fit.info.payload_bits
    seconds = time.perf_counter() - t0
    for k in np.flatnonzero(np.isfinite(bits)):  # measured apart from the timing: protect's own check does the same
        restored[k] = np.array_equal(kernels.restore_array(out[k], key), x[k])
    fit = np.isfinite(bits)
    changed = [k for k in range(len(x)) if not np.array_equal(out[k], x[k])]
    d = np.abs(out.astype(np.int64) - x)
    wb_clean = white_box(x) == y
    row = {
        "strength": settings.level, "eps": prot.eps, "pattern_eps": prot.pattern_eps if prot.pattern_id else 0,
        "keyed": bool(prot.keyed_pattern and prot.pattern_id), "block": prot.pattern_block, "mode": prot.mode,
        "psnr": float(np.mean([psnr(x[k], out[k], data_range=255) for k in changed])) if changed else None,
        "ssim": float(np.mean([ssim(a_, b_, data_range=255) for a_, b_ in zip(x, out)])),
        "payload_bpp": float(np.nanmean(bits) / x[0].size) if fit.any() else None,
        "fit_fraction": float(fit.mean()), "restored_fraction": float(restored[fit].mean()) if fit.any() else None,
        "images_per_second": len(x) / seconds,
        "white_box": float((white_box(out) != y)[wb_clean].mean()) if wb_clean.any() else None,
    }
    if masks is not None:
        # the true lungs (the dataset's masks), not protect's ROI, which no pixel leaves by more than one level
        row["lungs_max_change"] = int(max(int(dk[mk].max(initial=0)) for dk, mk in zip(d, masks)))
        row["lungs_over_one"] = int(sum(int(dk[mk].max(initial=0)) > 1 for dk, mk in zip(d, masks)))
        roi_d = [int(dk[rk].max(initial=0)) for dk, rk in zip(d, rois)]
        row["roi_max_change"] = max(roi_d) if roi_d else 0
    if lab is None:
        return row
    asr = lab.asr(out)
    row["held_out"] = asr["file"]
    # the lab's other conditions (another resize before the target, a JPEG re-save): each one's median
    row["held_out_conditions"] = {c: _median(v) for c, v in asr.items() if c != "file"}
    row["held_out_median"] = _median(row["held_out"])
    rng = np.random.default_rng(seed)
    mse = ((out.astype(np.float64) - x) ** 2).mean(axis=(1, 2))
    noise = np.stack([same_psnr_noise(x[k], mse[k], ~rois[k], rng) for k in range(len(x))])
    changed_n = [k for k in range(len(x)) if not np.array_equal(noise[k], x[k])]
    row["floor_psnr"] = float(np.mean([psnr(x[k], noise[k], data_range=255) for k in changed_n])) if changed_n else None
    floor = lab.asr(noise)
    row["floor"] = floor["file"]
    row["floor_conditions"] = {c: _median(v) for c, v in floor.items() if c != "file"}
    row["floor_median"] = _median(row["floor"])
    # the attacker's lungs: the shipped segmenter on the protected file (medrae is public)
    seen = np.concatenate([prot.segment(out[i : i + batch]).rois for i in range(0, len(out), batch)])
    amp = row["pattern_eps"] or prot.eps
    row["adaptive"] = {}
    for name in attacks:
        attacked = adaptive.ATTACKS[name](out, seen, amp, prot.pattern_id or DEFAULT_PATTERN, prot.pattern_block, protector=prot)
        if attacked is None:  # not applicable to this point (replay without a transfer stage)
            continue
        held = lab.asr(attacked)["file"]
        med = _median(held)
        row["adaptive"][name] = {"held_out": held, "median": med,
                                 "kept": (med / row["held_out_median"]) if med is not None and row["held_out_median"] else None,
                                 "white_box": float((white_box(attacked) != y)[wb_clean].mean()) if wb_clean.any() else None}
    return row


def frontier(x: np.ndarray, y: np.ndarray, masks: Optional[np.ndarray], white_box: Callable, lab=None,
             points: Optional[list[tuple[str, ProtectSettings]]] = None, models: Optional[Path] = None,
             on_progress: Callable[[str, int], None] = lambda m, n: None) -> dict:
    """Every point of :func:`default_points` (or ``points``) measured by :func:`measure_point`."""
    rows = {}
    for label, s in points or default_points():
        if models is not None:
            s = replace(s, models=Path(models))
        rows[label] = measure_point(s, x, y, masks, white_box, lab)
        on_progress(f"frontier {label}", len(x))
    return {"points": rows, "paper": PAPER, "targets": list(lab.names) if lab is not None else []}


# ----------------------------------------------------------------------------------------------
# the report's figure and table
# ----------------------------------------------------------------------------------------------


def _pct(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def table(fr: dict) -> tuple[list[str], list[list[str]]]:
    """The frontier as a table: one row per point, then the reference paper's."""
    targets = fr["targets"]
    attacks = sorted({a for r in fr["points"].values() for a in r.get("adaptive", {})})
    header = (["point", "eps / pattern", "PSNR", "SSIM", "bpp", "fit", "bit-exact", "ROI max change", "X-rays with true lung > 1 level", "images/s", "white-box"]
              + targets + ["held-out median", "noise floor median"] + [f"kept after {a}" for a in attacks])
    rows = []
    for label, r in fr["points"].items():
        held = r.get("held_out", {})
        rows.append([label, f"{r['eps']} / {r['pattern_eps']}{' keyed' if r['keyed'] else ''}",
                     "-" if r["psnr"] is None else f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                     "-" if r["payload_bpp"] is None else f"{r['payload_bpp']:.3f}", _pct(r["fit_fraction"]), _pct(r["restored_fraction"]),
                     str(r.get("roi_max_change", "-")), str(r.get("lungs_over_one", "-")), f"{r['images_per_second']:.1f}", _pct(r["white_box"])]
                    + [_pct(held.get(t)) for t in targets] + [_pct(r.get("held_out_median")), _pct(r.get("floor_median"))]
                    + [_pct(r.get("adaptive", {}).get(a, {}).get("kept")) for a in attacks])
    p = fr["paper"]
    rows.append([p["label"], "8 (all pixels)", f"{p['psnr']:.2f}", f"{p['ssim']:.4f}"] + ["-"] * 6 + [_pct(p["asr"])]
                + ["-"] * (len(targets) + 2 + len(attacks)))
    return header, rows


def svg(fr: dict) -> str:
    """Two panels, PSNR (dB) on x: white-box ASR (left) and held-out median ASR (right) on y, each
    point labelled; the paper's point on the left; the same-PSNR noise floor on the right."""
    pts = [(label, r) for label, r in fr["points"].items() if r.get("psnr") is not None]
    xs = [r["psnr"] for _, r in pts] + [fr["paper"]["psnr"]] + [r["floor_psnr"] for _, r in pts if r.get("floor_psnr")]
    lo, hi = np.floor(min(xs) - 1), np.ceil(max(xs) + 1)
    W, H, left, top, bottom = 420, 300, 52, 30, 46
    colors = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b"]
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{2 * W + 40}' height='{H + 16 * len(pts) + 40}' font-family='sans-serif' font-size='11'>",
           "<rect width='100%' height='100%' fill='white'/>"]
    for panel, (key, label) in enumerate((("white_box", "white-box ASR (%)"), ("held_out_median", "held-out median ASR (%)"))):
        ox, pw, ph = panel * (W + 40), W - left - 10, H - top - bottom
        x0, y0 = ox + left, top
        top_pct = 100 if panel == 0 else max(10, 10 * np.ceil(max([100 * (r.get(key) or 0) for _, r in pts] + [1]) / 10 + 0.5))
        px = lambda v: x0 + pw * (v - lo) / (hi - lo)  # noqa: E731
        py = lambda v: y0 + ph * (1 - min(max(v, 0), top_pct) / top_pct)  # noqa: E731
        out.append(f"<text x='{x0 + pw / 2}' y='16' text-anchor='middle' font-size='13' font-weight='bold'>{label} against PSNR</text>")
        out.append(f"<rect x='{x0}' y='{y0}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>")
        for t in np.linspace(0, top_pct, 6):
            out.append(f"<line x1='{x0}' x2='{x0 + pw}' y1='{py(t):.1f}' y2='{py(t):.1f}' stroke='#eee'/><text x='{x0 - 6}' y='{py(t) + 4:.1f}' text-anchor='end'>{t:g}</text>")
        for t in np.arange(lo, hi + 0.01, 1 if hi - lo <= 10 else 2):
            out.append(f"<text x='{px(t):.1f}' y='{y0 + ph + 16}' text-anchor='middle'>{t:g}</text>")
        out.append(f"<text x='{x0 + pw / 2}' y='{y0 + ph + 34}' text-anchor='middle'>PSNR (dB), higher is closer to the original</text>")
        out.append(f"<text transform='translate({ox + 14},{y0 + ph / 2}) rotate(-90)' text-anchor='middle'>{label}</text>")
        line = sorted((r["psnr"], 100 * r[key]) for _, r in pts if r.get(key) is not None)
        if len(line) > 1:
            out.append(f"<polyline points='{' '.join(f'{px(a):.1f},{py(b):.1f}' for a, b in line)}' fill='none' stroke='#1f77b4' stroke-width='1.5'/>")
        for k, (name, r) in enumerate(pts):
            if r.get(key) is not None:
                out.append(f"<circle cx='{px(r['psnr']):.1f}' cy='{py(100 * r[key]):.1f}' r='4' fill='{colors[k % len(colors)]}'/>")
        if panel == 0:
            p = fr["paper"]
            cx, cy = px(p["psnr"]), py(100 * p["asr"])
            out.append(f"<path d='M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},{cy + 5:.1f} L{cx + 5:.1f},{cy - 5:.1f}' stroke='black' stroke-width='2'/>")
        else:
            floor = sorted((r["floor_psnr"], 100 * r["floor_median"]) for _, r in pts if r.get("floor_median") is not None and r.get("floor_psnr"))
            if len(floor) > 1:
                out.append(f"<polyline points='{' '.join(f'{px(a):.1f},{py(b):.1f}' for a, b in floor)}' fill='none' stroke='#888' stroke-dasharray='5,4' stroke-width='1.5'/>")
            out += [f"<rect x='{px(a) - 3:.1f}' y='{py(b) - 3:.1f}' width='6' height='6' fill='#888'/>" for a, b in floor]
    legend = [(colors[k % len(colors)], "circle", name) for k, (name, _) in enumerate(pts)]
    legend += [("black", "cross", "reference paper (white-box only)"), ("#888", "square", "noise at the same PSNR, outside the ROI (floor)")]
    for k, (c, shape, name) in enumerate(legend):
        ly = H + 8 + 16 * k
        mark = (f"<circle cx='{left + 8}' cy='{ly - 4}' r='4' fill='{c}'/>" if shape == "circle" else
                f"<rect x='{left + 5}' y='{ly - 7}' width='6' height='6' fill='{c}'/>" if shape == "square" else
                f"<path d='M{left + 4},{ly - 8} L{left + 12},{ly} M{left + 4},{ly} L{left + 12},{ly - 8}' stroke='{c}' stroke-width='2'/>")
        out.append(mark + f"<text x='{left + 20}' y='{ly}'>{name}</text>")
    out.append("</svg>")
    return "\n".join(out)
