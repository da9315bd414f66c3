"""The fault campaign's counts: damaged protected PNG / TIFF / DICOM files, restored as
``medrae restore`` does (``toolkit/faults.py``), by damage class and outcome.

Every damage class is tried ``--cases`` times per format (seeded), on files protected from a
phantom (8-bit PNG, 16-bit TIFF, 12-bit DICOM with a VOI window) or, with ``--data``, from the
first X-ray of a dataset directory. Outcomes: refused (typed error), intact (the damage missed every
pixel: the exact original came back), wrong, crash; the last two must be 0.

    python benchmarks/faults.py [--cases 1000] [--data ../shared/data/cxr3/test]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from medrae import kernels  # noqa: E402
from medrae.evaluation import faults  # noqa: E402
from medrae.toolkit.batch import protect_paths  # noqa: E402
from medrae.toolkit.imageio import read_image  # noqa: E402
from medrae.toolkit.phantoms import chest_phantom  # noqa: E402

KEY = bytes(range(32))


def sources(work: Path, data: Path | None) -> list[Path]:
    from PIL import Image as PILImage

    from test_pipeline_cli import _dicom

    if data is not None:
        img = np.asarray(PILImage.open(sorted(data.glob("*/images/*.png"))[0]).convert("L"))
    else:
        img = chest_phantom(7)[0]
    src = work / "in"
    src.mkdir()
    PILImage.fromarray(img).save(src / "a.png")
    PILImage.fromarray(img.astype(np.uint16) * 257).save(src / "b.tif")
    _dicom(src / "c.dcm", 500 + 10 * img.astype(np.uint16), "MONOCHROME2", 12, window=(1775.5, 2551))
    return sorted(src.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000, help="per damage class and format")
    ap.add_argument("--data", type=Path, help="a dataset directory: damage a protected real X-ray instead of a phantom")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        total: Counter = Counter()
        examples: dict = {}
        t0 = time.perf_counter()
        print(f"{'format':6s} {'damage':16s} " + " ".join(f"{o:>8s}" for o in faults.OUTCOMES))
        for src in sources(work, args.data):
            dst = work / "out" / src.name
            report = protect_paths(src, dst, KEY, workers=1)
            if report.count("protected") != 1:
                sys.exit(f"{src}: not protected ({report.results[0].reason})")
            marked, original = read_image(dst), read_image(src).pixels
            region = kernels.frozen_region(marked.pixels)
            region = region if region is not None else np.zeros(original.shape, bool)
            data = dst.read_bytes()
            for d, damage in enumerate(faults.DAMAGES):
                counts: Counter = Counter()
                for seed in range(args.cases):
                    case = faults.damage_file(data, marked, region, damage, np.random.default_rng([d, seed]))
                    outcome, what = faults.restore_outcome(case.data, dst.suffix, KEY, original, work)
                    counts[outcome] += 1
                    if outcome in ("wrong", "crash"):
                        examples.setdefault((src.suffix, damage, outcome), f"{case.detail}: {what}")
                total += counts
                print(f"{src.suffix[1:]:6s} {damage:16s} " + " ".join(f"{counts[o]:8d}" for o in faults.OUTCOMES), flush=True)
        n = sum(total.values())
        print(f"\n{n} cases in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{o} {total[o]}" for o in faults.OUTCOMES))
        for k, v in examples.items():
            print("  ", k, v)
        if total["wrong"] or total["crash"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
