"""Protect → restore → verify on generated chest phantoms with the shipped models (no real data).

    python -m medrae.toolkit.demo [OUTDIR]

Writes ``OUTDIR/original`` (six 224x224 8-bit phantoms, one 16-bit 640x560 phantom), then runs the
same batch pipeline as ``medrae protect / restore / verify`` into ``OUTDIR/protected`` and
``OUTDIR/restored``, checks a wrong key is refused, and prints what it measured.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from medrae.toolkit.phantoms import chest_phantom


def write_phantoms(root: Path) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(6):
        image, _ = chest_phantom(seed)
        paths.append(root / f"phantom{seed}.png")
        Image.fromarray(image).save(paths[-1])
    big = np.asarray(Image.fromarray(chest_phantom(6)[0]).resize((560, 640), Image.BILINEAR)).astype(np.uint16) * 257
    paths.append(root / "phantom6_16bit.png")
    Image.fromarray(big).save(paths[-1])
    return paths


def main(argv: list[str]) -> int:
    from medrae.toolkit.batch import protect_paths, restore_paths, verify_paths
    from medrae.toolkit.imageio import read_image

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(argv[0]) if argv else Path(tmp)
        original, protected, restored = out / "original", out / "protected", out / "restored"
        write_phantoms(original)
        key = os.urandom(32)
        rep = protect_paths(original, protected, key, overwrite=True)
        print(f"{'image':<22} {'shape':>10} {'PSNR':>7} {'payload':>9} {'codec':>9} {'ms':>6}")
        for r in rep.results:
            shape = "x".join(map(str, r.shape or []))
            if r.status == "protected":
                print(f"{Path(r.input).name:<22} {shape:>10} {r.psnr:>7.2f} {r.payload_bits:>8}b {r.codec:>9} {1e3 * r.seconds:>6.1f}")
            else:
                print(f"{Path(r.input).name:<22} {r.status}: {r.reason}")
        back = restore_paths(protected, restored, key, overwrite=True)
        check = verify_paths(original, protected, key)
        exact = check.count("identical") == len(check.results) == len(rep.results)
        exact &= all(np.array_equal(read_image(p).pixels, read_image(restored / p.name).pixels) for p in sorted(original.iterdir()))
        wrong = verify_paths(original, protected, os.urandom(32))
        refused = all("wrong or missing key" in (r.reason or "") for r in wrong.results)
        print(f"protected {rep.count('protected')}/{len(rep.results)}, restored {back.count('restored')}, "
              f"wrong key refused: {refused}, providers: {', '.join(rep.providers)}")
        print("verify:", "all round trips bit-exact" if exact and refused else "FAILED")
        if argv:
            print(f"images in {out}")
        return 0 if exact and refused else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
