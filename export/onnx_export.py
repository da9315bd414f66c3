"""Export trained checkpoints to ONNX (opset 17, dynamic batch), check parity, write a model card.

    python -m medrae.export.onnx_export segmenter  runs/seg/best.pt  models/segmenter.onnx --data ../shared/data/cxr3/test
    python -m medrae.export.onnx_export classifier runs/r18/best.pt  models/classifier_resnet18.onnx --data ...
    python -m medrae.export.onnx_export generator  runs/gen/best.pt  models/generator.onnx --data ...
    python -m medrae.export.onnx_export gradient   models/classifier_resnet18.onnx models/gradient_resnet18.onnx --data ...

A *gradient* model (``models/gradient.py``: logits and d margin / d pixel, for protect's refinement)
stores no weights of its own: its initializers are external data pointing into the classifier's
ONNX file beside it (the byte ranges where that file holds the same tensors), so shipping it costs
a few kilobytes; its card records the classifier's SHA-256, checked before use.

Parity (fails loudly): on the given dataset directory, ORT and torch float outputs agree within
``--atol`` (1e-4) and the decisions agree exactly: thresholded masks, argmax classes, rounded grids.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from medrae.models import create
from medrae.models.data import load_split, normalize
from medrae.models.train import build

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
        from medrae.models.advgan import roi_cells

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
    from medrae.toolkit.ort import session

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


def export_gradient(classifier: Path, out: Path) -> torch.nn.Module:
    """Export :class:`models.gradient.MarginGradient` of the ONNX ``classifier`` to ``out`` (same
    folder), its weights read from the classifier file; returns the torch classifier for parity."""
    import onnx
    from onnx import numpy_helper

    from medrae.models.from_onnx import load_classifier
    from medrae.models.gradient import MarginGradient

    if out.resolve().parent != classifier.resolve().parent:
        raise ValueError(f"{out}: a gradient model must sit beside its classifier {classifier}")
    net = load_classifier(classifier)
    model = MarginGradient(net).eval()
    x, label = torch.zeros(2, 1, SIZE, SIZE), torch.full((2,), -1, dtype=torch.long)
    names, out_names = ["image", "label"], ["logits", "grad"]
    tmp = out.with_suffix(".tmp.onnx")
    # no constant folding: folded (flipped) weights would be new tensors absent from the classifier
    # file; ORT folds them in memory when it loads the model
    torch.onnx.export(model, (x, label), str(tmp), dynamo=False, opset_version=17, input_names=names, do_constant_folding=False,
                      output_names=out_names, dynamic_axes={n: {0: "batch"} for n in names + out_names})
    graph = onnx.load(str(tmp))
    tmp.unlink()
    blob = classifier.read_bytes()
    for t in graph.graph.initializer:
        raw = numpy_helper.to_array(t).tobytes()
        offset = blob.find(raw) if len(raw) >= 1024 else -1
        if offset < 0:
            continue  # small constants stay inline
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", classifier.name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(graph, str(out))
    return net


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum((1, 2, 3)) / np.sqrt((a * a).sum((1, 2, 3)) * (b * b).sum((1, 2, 3)) + 1e-30)


def gradient_parity(classifier: torch.nn.Module, onnx_path: Path, data: Path, limit: int = 64, min_cosine: float = 0.9999) -> dict:
    """ORT vs the same graph in torch on real images: logits within 1e-4, the same predicted labels,
    per-image gradient cosine >= ``min_cosine``. Also reports (without failing on it) the cosine to
    autograd's gradient, which may route a max-pool tie or a ReLU at exactly 0 differently."""
    from medrae.models.gradient import MarginGradient, reference_gradient
    from medrae.toolkit.ort import session

    images = load_split(data).images[:limit]
    graph = MarginGradient(classifier).eval()
    sess = session(onnx_path, "cpu")
    worst_logit, worst_cos, worst_autograd, disagree = 0.0, 1.0, 1.0, 0
    for i in range(0, len(images), 16):
        x = normalize(torch.from_numpy(images[i : i + 16]).unsqueeze(1))
        label = torch.full((len(x),), -1, dtype=torch.long)
        with torch.no_grad():
            want_logits, want = (t.numpy() for t in graph(x, label))
        logits, grad = sess.run(None, {"image": x.numpy(), "label": label.numpy()})
        worst_logit = max(worst_logit, float(np.abs(logits - want_logits).max()))
        worst_cos = min(worst_cos, float(_cosines(grad, want).min()))
        worst_autograd = min(worst_autograd, float(_cosines(grad, reference_gradient(classifier, x, label)[1].numpy()).min()))
        disagree += int((logits.argmax(1) != want_logits.argmax(1)).sum())
    report = {"images": len(images), "max_abs_logit_diff": worst_logit, "min_grad_cosine": worst_cos,
              "min_grad_cosine_to_autograd": worst_autograd, "decision_mismatches": disagree}
    if worst_logit > 1e-4 or worst_cos < min_cosine or disagree:
        raise ParityError(f"{onnx_path}: gradient parity failed: {report}")
    return report


def sha256(path: Path) -> str:
    from medrae.toolkit.ort import file_sha256

    return file_sha256(path)


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
    p.add_argument("kind", choices=["segmenter", "classifier", "generator", "gradient"])
    p.add_argument("checkpoint", help="training checkpoint (.pt); for gradient: the classifier's .onnx")
    p.add_argument("out")
    p.add_argument("--data", required=True, help="dataset directory for the parity check (e.g. cxr3/test)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--card", default="{}", help="JSON merged into the model card (training command, metrics)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.kind == "gradient":
        return _main_gradient(Path(args.checkpoint), out, Path(args.data), json.loads(args.card))
    model, state = load(args.kind, args.checkpoint)
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


def _main_gradient(classifier: Path, out: Path, data: Path, extra: dict) -> int:
    model = export_gradient(classifier, out)
    try:
        report = gradient_parity(model, out, data)
    except ParityError as exc:
        out.unlink(missing_ok=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    clf_card = json.loads(classifier.with_suffix(".json").read_text())
    info = {
        "file": out.name,
        "sha256": sha256(out),
        "task": "margin_gradient",
        "architecture": clf_card["architecture"],
        "weights_file": classifier.name,
        "weights_sha256": sha256(classifier),
        "inputs": {"image": "(N,1,224,224) float32, (pixel / 255 - 0.5) / 0.25", "label": "(N,) int64; < 0: the predicted class"},
        "output": "logits (N,3) and grad (N,1,224,224) = d(z[label] - max_{j != label} z[j]) / d pixel (0..255 scale)",
        "opset": 17,
        "parity": report,
        "command": f"python -m medrae.export.onnx_export gradient {classifier} {out} --data {data}",
    }
    info.update(extra)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
