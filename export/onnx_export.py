"""Export trained checkpoints to ONNX (opset 17, dynamic batch), check parity, write a model card.

    python -m export.onnx_export segmenter  runs/seg/best.pt  models/segmenter.onnx --data ../shared/data/cxr3/test
    python -m export.onnx_export classifier runs/r18/best.pt  models/classifier_resnet18.onnx --data ...
    python -m export.onnx_export generator  runs/gen/best.pt  models/generator.onnx --data ...

Parity (fails loudly): on the given dataset directory, ORT and torch float outputs agree within
``--atol`` (1e-4) and the decisions agree exactly: thresholded masks, argmax classes, rounded grids.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models import create
from models.data import load_split, normalize
from models.train import build

SIZE = 224


class ParityError(RuntimeError):
    pass


class GeneratorGraph(torch.nn.Module):
    """What protect runs: (image, mask) → unit perturbation in [-1, 1] (grid or full resolution),
    zero on the ROI (cells); protect multiplies by eps (1/255 units) and rounds to integers."""

    def __init__(self, gen):
        super().__init__()
        self.gen = gen

    def forward(self, image, mask):
        from models.advgan import roi_cells

        raw = self.gen.raw(image, mask) / self.gen.eps
        if self.gen.grid_factor > 1:
            return raw * (1 - roi_cells(mask, self.gen.grid_factor))
        return raw * (1 - (mask > 0.5).float())


def load(kind: str, ckpt: str):
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    if kind == "generator":
        gen = create(state["arch"], eps=state["eps"])
        gen.load_state_dict(state["model"])
        model = GeneratorGraph(gen)
    else:
        model = build(kind, state["arch"], state["size"])
        model.load_state_dict(state["model"])
    return model.eval(), state


def export(kind: str, model: torch.nn.Module, out: Path) -> None:
    x = torch.zeros(2, 1, SIZE, SIZE)
    if kind == "generator":
        args, names = (x, x), ["image", "mask"]
        out_names = ["perturbation"]
    else:
        args, names = (x,), ["image"]
        out_names = ["logits"]
    dyn = {n: {0: "batch"} for n in names + out_names}
    torch.onnx.export(model, args, str(out), dynamo=False, opset_version=17, input_names=names, output_names=out_names, dynamic_axes=dyn)


def parity(kind: str, model, onnx_path: Path, data: Path, atol: float, limit: int = 0) -> dict:
    from toolkit.ort import session

    split = load_split(data)
    images = split.images[:limit] if limit else split.images
    masks = split.masks[:limit] if (limit and split.masks is not None) else split.masks
    sess = session(onnx_path, "cpu")
    worst, disagree, ties, n = 0.0, 0, 0, 0
    for i in range(0, len(images), 16):
        x = normalize(torch.from_numpy(images[i : i + 16]).unsqueeze(1))
        feeds = {"image": x.numpy()}
        with torch.no_grad():
            if kind == "generator":
                m = torch.from_numpy(masks[i : i + 16]).unsqueeze(1).float()
                feeds["mask"] = m.numpy()
                ref = model(x, m).numpy()
            else:
                ref = model(x).numpy()
        got = sess.run(None, feeds)[0]
        worst = max(worst, float(np.abs(got - ref).max()))
        if kind == "segmenter":
            disagree += int(((got > 0) != (ref > 0)).sum())
        elif kind == "classifier":
            disagree += int((got.argmax(1) != ref.argmax(1)).sum())
        else:
            # integers protect applies: may differ only where torch sits on a .5 tie (float noise)
            eps = float(model.gen.eps)
            r_ref, r_got = ref * eps, got * eps
            diff = np.round(r_got) != np.round(r_ref)
            tie = np.abs(np.abs(r_ref - np.trunc(r_ref)) - 0.5) < 1e-3
            disagree += int((diff & ~tie).sum())
            ties += int((diff & tie).sum())
        n += len(x)
    report = {"images": n, "max_abs_diff": worst, "decision_mismatches": disagree, "atol": atol}
    if kind == "generator":
        report["rounding_ties_differing"] = ties
    if worst > atol or disagree:
        raise ParityError(f"{onnx_path}: torch/ORT parity failed: {report}")
    return report


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(kind: str, state: dict, out: Path, parity_report: dict, extra: dict) -> dict:
    info = {
        "file": out.name,
        "sha256": sha256(out),
        "task": kind,
        "architecture": state.get("arch"),
        "input": {
            "shape": ["batch", 1, SIZE, SIZE],
            "dtype": "float32",
            "normalisation": "(pixel / 255 - 0.5) / 0.25, pixel in 0..255 (8-bit grayscale)",
            "internal_resolution": state.get("size", SIZE // 2),
        },
        "opset": 17,
        "parity": parity_report,
    }
    if kind == "segmenter":
        info["output"] = "lung logits (N,1,224,224); mask = logits > 0"
    elif kind == "classifier":
        info["output"] = "class logits (N,3) for [normal, covid, viral_pneumonia]"
    else:
        info["output"] = "unit perturbation in [-1, 1], zero on ROI cells; protect multiplies by eps, rounds, upsamples the grid by repetition"
        info["eps"] = state.get("eps")
        info["grid_factor"] = int(create(state["arch"]).grid_factor)
        info["roi_dilation_px"] = state.get("dilate")
    info.update(extra)
    (out.with_suffix(".json")).write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["segmenter", "classifier", "generator"])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--data", required=True, help="dataset directory for the parity check (e.g. cxr3/test)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--card", default="{}", help="JSON merged into the model card (training command, metrics)")
    args = p.parse_args(argv)
    model, state = load(args.kind, args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export(args.kind, model, out)
    try:
        report = parity(args.kind, model, out, Path(args.data), args.atol)
    except ParityError as exc:
        out.unlink(missing_ok=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = card(args.kind, state, out, report, json.loads(args.card))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
