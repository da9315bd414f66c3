"""Candidate strength settings on a split (choose on val, report test): each point protected as
``medrae protect`` does and measured by ``medrae.evaluation.frontier.measure_point`` (PSNR, SSIM,
white-box ASR, fit, bit-exact, lungs; with a zoo, every held-out target, the same-PSNR noise floor
and the adaptive attacks).

    python benchmarks/probe_strength.py --data ../shared/data/cxr3/val --point standard --point strong
    python benchmarks/probe_strength.py --data ../shared/data/cxr3/val --zoo runs/zoo \\
        --point "standard,eps=12" --point "strong,pattern=runs/pattern_v2/pattern.npy"

A point is ``LEVEL[,field=value...]`` over :class:`medrae.toolkit.settings.ProtectSettings` fields
(``eps``, ``pattern_eps``, ``keyed_pattern``, ``margin``, ``refine_steps``, ``transfer_steps``, ``transfer_eps``, ...) plus ``pattern=PATH``: a
candidate pattern file, registered for this process only under an id no release uses; or a field of
the level itself (:class:`~medrae.toolkit.settings.Strength`, e.g. ``transfer_keyed_start=0.5``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))

FIELDS = {"eps": int, "pattern_eps": int, "keyed_pattern": lambda v: v.lower() in ("1", "true", "yes"), "margin": float, "refine_steps": int,
          "pattern_block": int, "pattern_spare_flat": float, "pattern_gain": int, "transfer_steps": int, "transfer_eps": int,
          "surrogates": lambda v: tuple(v.split("+")), "give_up": lambda v: v.lower() in ("1", "true", "yes")}


def point(spec: str):
    from medrae.kernels import patterns
    from medrae.toolkit.settings import STRENGTHS, ProtectSettings, strength

    level, *parts = spec.split(",")
    s = ProtectSettings(strength=level)
    for part in parts:
        name, value = part.split("=", 1)
        if name not in FIELDS and hasattr(strength(level), name):  # a field of the level itself, changed:
            variant = f"{s.strength}+{name}={value}"  # a level for this process only
            STRENGTHS[variant] = replace(strength(s.strength), name=variant, **{name: type(getattr(strength(level), name))(value)})
            s = replace(s, strength=variant)
        elif name == "pattern":
            path = Path(value).resolve()
            ident = 250 + len([i for i in patterns.PATTERNS if i >= 250])
            patterns.register_pattern(ident, str(path.with_suffix("")), hashlib.sha256(np.ascontiguousarray(np.load(path)).tobytes()).hexdigest())
            s = replace(s, pattern=ident)
        else:
            s = replace(s, **{name: FIELDS[name](value)})
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--point", action="append", required=True)
    ap.add_argument("--zoo", type=Path, default=None, help="trained zoo: held-out targets, noise floor, adaptive attacks")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--condition", dest="conditions", action="append", default=[],
                    help="also score the held-out targets under this condition (evaluation/transfer.py CONDITIONS: nearest, jpeg75, ...)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    from medrae.evaluation.evaluate_models import classifiers, predict
    from medrae.evaluation.frontier import measure_point
    from medrae.toolkit.datasets import load_split
    from medrae.toolkit.protect import MODELS_DIR

    split = load_split(args.data)
    x, y, masks = split.images, split.labels, split.masks
    if args.limit:
        x, y, masks = x[: args.limit], y[: args.limit], masks[: args.limit] if masks is not None else None
    wb = classifiers(MODELS_DIR)["classifier_resnet18"]
    white_box = lambda imgs: predict(wb, imgs)  # noqa: E731
    lab = None
    if args.zoo:
        from medrae.evaluation.transfer import TransferLab

        lab = TransferLab(args.zoo, x, y, ("file", *args.conditions))
    rows = {}
    for spec in args.point:
        r = measure_point(point(spec), x, y, masks, white_box, lab)
        rows[spec] = r
        held = " ".join(f"{100 * v:.1f}" for v in r.get("held_out", {}).values())
        kept = " ".join(f"{k} {100 * v['kept']:.0f}%" for k, v in r.get("adaptive", {}).items() if v.get("kept") is not None)
        print(f"{spec:50s} PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} white-box {100 * r['white_box']:.1f} % fit {100 * r['fit_fraction']:.1f} % "
              f"exact {100 * (r['restored_fraction'] or 0):.1f} % ROI<={r.get('roi_max_change')} true-lung>1: {r.get('lungs_over_one')} bpp {r['payload_bpp']:.3f} "
              f"{r['images_per_second']:.1f} img/s" + (f" | held-out median {100 * r['held_out_median']:.1f} ({held}) floor "
                                                         f"{100 * r['floor_median']:.1f} (PSNR {r['floor_psnr']:.2f}) | kept {kept}" if lab else "")
              + "".join(f" | {c} {100 * v:.1f} (floor {100 * r['floor_conditions'][c]:.1f})" for c, v in r.get("held_out_conditions", {}).items()),
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
