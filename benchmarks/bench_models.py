"""Protect-time inference of the shipped segmenter + generator (ONNX Runtime), per 224x224 image.

    python benchmarks/bench_models.py [--models models] [--batch 16] [--threads 0]

Prints ms per image for the segmenter, the generator and both, at the given batch size; then one
refinement step (the margin-gradient model, ONNX Runtime) beside a forward pass of its classifier
and, when torch is installed, the same gradient by PyTorch autograd in the same run (ratio).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import best_of  # noqa: E402

from medrae.toolkit.ort import session  # noqa: E402
from medrae.toolkit.phantoms import chest_phantom  # noqa: E402
from medrae.toolkit.protect import normalize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    images = np.stack([chest_phantom(s)[0] for s in range(args.batch)])
    x = normalize(images)
    seg = session(args.models / "segmenter.onnx", "cpu", args.threads)
    gen = session(args.models / "generator.onnx", "cpu", args.threads)
    mask = (seg.run(None, {"image": x})[0] > 0).astype(np.float32)
    t_seg = best_of(lambda: seg.run(None, {"image": x}))
    t_gen = best_of(lambda: gen.run(None, {"image": x, "mask": mask}))
    n = args.batch
    print(f"batch {n}, providers {seg.get_providers()}")
    print(f"| model | ms / image |\n|---|---|")
    print(f"| segmenter | {t_seg / n * 1e3:.2f} |\n| generator | {t_gen / n * 1e3:.2f} |\n| both | {(t_seg + t_gen) / n * 1e3:.2f} |")
    grad_path = args.models / "gradient_resnet18.onnx"
    if grad_path.exists():
        import json

        clf_name = json.loads(grad_path.with_suffix(".json").read_text())["weights_file"]
        grad = session(grad_path, "cpu", args.threads)
        clf = session(args.models / clf_name, "cpu", args.threads)
        labels = np.full(n, -1, np.int64)
        t_grad = best_of(lambda: grad.run(None, {"image": x, "label": labels}))
        t_clf = best_of(lambda: clf.run(None, {"image": x}))
        print(f"| {clf_name} forward | {t_clf / n * 1e3:.2f} |\n| one refinement step (logits + margin gradient, ORT) | {t_grad / n * 1e3:.2f} |")
        try:
            import torch

            from medrae.models.from_onnx import load_classifier
            from medrae.models.gradient import reference_gradient
        except ModuleNotFoundError:
            return
        torch.set_num_threads(args.threads or torch.get_num_threads())
        net = load_classifier(args.models / clf_name)
        xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
        t_ref = best_of(lambda: reference_gradient(net, xt, lt))
        print(f"| the same gradient, PyTorch autograd (reference) | {t_ref / n * 1e3:.2f} |")
        print(f"ORT gradient step / torch autograd: {t_ref / t_grad:.2f}x faster")


if __name__ == "__main__":
    main()
