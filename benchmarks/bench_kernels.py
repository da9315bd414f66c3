"""Benchmarks of the bitstream stage (prints figures; asserts nothing).

    python benchmarks/bench_kernels.py [--data ../shared/data/cxr3] [--quick]

1. embed+extract time per 224x224 image: cold (fresh process: import + JIT cache load + first
   call) and warm; Numba vs the plain-NumPy reference of the same algorithm, in the same run.
2. capacity vs PSNR on every real X-ray at 5k/10k/20k/40k bits, for HS and PEE.
3. bits per image pixel per codec, on real-data perturbations and on synthetic ones.
4. peak working memory of embed + extract, 224x224 and 2048x2048, Numba vs the NumPy reference.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import best_of  # noqa: E402

from medrae import kernels  # noqa: E402
from medrae.kernels import _reference  # noqa: E402
from medrae.kernels.resample import downsample, grid_shape, upsample  # noqa: E402
from medrae.toolkit.phantoms import chest_phantom  # noqa: E402


def load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def dataset(data: Path, split: str = "*") -> list[tuple[np.ndarray, np.ndarray, str]]:
    out = []
    for p in sorted(data.glob(f"{split}/*/images/*.png")):
        m = p.parent.parent / "masks" / p.name
        out.append((load(p), load(m) > 127 if m.exists() else None, p.parent.parent.name))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------


COLD = """
import time; t0 = time.perf_counter()
import numpy as np; from medrae import kernels
from medrae.toolkit.phantoms import chest_phantom
x = chest_phantom(0)[0]; p = bytes(1250)
t1 = time.perf_counter(); m = kernels.embed(x, p); y, q = kernels.extract(m); t2 = time.perf_counter()
assert q == p and (y == x).all()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def bench_speed(images: list[np.ndarray], repeat: int) -> None:
    print("\n## 1. embed + extract time per 224x224 image (PEE, random payload)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = [subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, env=env, cwd=ROOT) for _ in range(2)]
    for label, r in zip(("first ever (may compile)", "cached (fresh process)"), runs):
        if r.returncode:
            print(r.stderr)
            continue
        imp, first = map(float, r.stdout.split())
        print(f"cold, {label}: import {imp * 1e3:.0f} ms, first embed+extract {first * 1e3:.0f} ms")
    rng = np.random.default_rng(0)
    print("| payload | Numba embed | Numba extract | Numba total | NumPy total | NumPy / Numba |")
    print("|---|---|---|---|---|---|")
    for nbits in (5_000, 10_000, 12_500, 20_000):
        payload = rng.integers(0, 256, nbits // 8, dtype=np.uint8).tobytes()
        te = tx = tr = 0.0
        for x in images:
            marked = kernels.embed(x, payload)
            kernels.extract(marked)
            te += best_of(lambda: kernels.embed(x, payload), repeat)
            tx += best_of(lambda: kernels.extract(marked), repeat)
            tr += best_of(lambda: _reference.extract(_reference.embed(x, payload)), max(1, repeat // 3))
        n = len(images)
        print(
            f"| {nbits / 1000:g} kbit | {te / n * 1e3:.3f} ms | {tx / n * 1e3:.3f} ms | {(te + tx) / n * 1e3:.3f} ms "
            f"| {tr / n * 1e3:.2f} ms | {tr / (te + tx):.1f}x |"
        )


def bench_capacity(images: list[np.ndarray]) -> None:
    print(f"\n## 2. capacity vs PSNR on {len(images)} real X-rays (random payloads; mean over images that fit)")
    print("| method | payload | fit | mean PSNR | min PSNR | mean passes |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for method in ("hs", "pee"):
        for nbits in (5_000, 10_000, 20_000, 40_000):
            ps, passes = [], []
            for x in images:
                payload = rng.integers(0, 256, nbits // 8, dtype=np.uint8).tobytes()
                try:
                    marked, k = kernels.rdh.embed_counted(x, payload, method)
                except kernels.CapacityError:
                    continue
                ps.append(psnr(marked, x))
                passes.append(k)
            fit = f"{len(ps)}/{len(images)}"
            if ps:
                print(f"| {method} | {nbits // 1000}k | {fit} | {np.mean(ps):.2f} dB | {np.min(ps):.2f} dB | {np.mean(passes):.1f} |")
            else:
                print(f"| {method} | {nbits // 1000}k | {fit} | - | - | - |")
    caps = [kernels.capacity(x) for x in images[:: max(1, len(images) // 100)]]
    print(f"PEE capacity (kernels.capacity, sample of {len(caps)}): mean {np.mean(caps):.0f} bits, min {np.min(caps)}")


def fgsm_linear(train, targets, eps=8):
    """Real adversarial perturbations against a weak model: FGSM on a softmax regression of
    28x28 block means, trained here in NumPy; zero in the lungs, clipped at the real pixels."""
    classes = sorted({c for _, _, c in train})
    feats = np.stack([downsample(x.astype(np.int64), 8).ravel() / 255.0 for x, _, _ in train])
    mu = feats.mean(0)
    X = feats - mu
    y = np.array([classes.index(c) for _, _, c in train])
    W = np.zeros((X.shape[1], len(classes)))
    for _ in range(300):  # plain gradient descent on the cross-entropy
        z = X @ W
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        W -= 0.5 * X.T @ p / len(y) + 1e-3 * W
    out = []
    for x, mask, c in targets:
        f = downsample(x.astype(np.int64), 8).ravel() / 255.0 - mu
        z = f @ W
        p = np.exp(z - z.max())
        p /= p.sum()
        grad = W @ (p - np.eye(len(classes))[classes.index(c)])  # d loss / d features
        g = np.sign(grad).reshape(grid_shape(x.shape, 8)).astype(np.int64) * eps
        delta = upsample(g, 8, x.shape)
        if mask is not None:
            delta[mask] = 0
        out.append(np.clip(x.astype(np.int64) + delta, 0, 255) - x)
    return out


def bench_codecs(train, test) -> None:
    print("\n## 3. bits per image pixel per codec (224x224, eps = 8)")
    rng = np.random.default_rng(2)
    shape = (224, 224)
    x0, m0 = chest_phantom(0)
    masks = [m for _, m, _ in test if m is not None] or [m0]

    def masked(p, k):
        return np.where(masks[k % len(masks)], 0, p)

    def grid(f, mode="nearest", k=0):
        g = rng.integers(-8, 9, grid_shape(shape, f))
        return masked(upsample(g, f, shape, mode), k)

    synthetic = {
        "dense sign ±8 (FGSM-like), no mask": lambda k: (rng.integers(0, 2, shape) * 16 - 8),
        "dense uniform [-8, 8], outside lungs": lambda k: masked(rng.integers(-8, 9, shape), k),
        "smooth (sinusoid), outside lungs": lambda k: masked(np.round(8 * np.sin(np.arange(224) / 13.0)[None, :] * np.cos(np.arange(224) / 19.0)[:, None]).astype(int), k),
        "sparse (2 % nonzero)": lambda k: masked(np.where(rng.random(shape) < 0.02, rng.integers(-8, 9, shape), 0), k),
        "coarse 112x112 grid, x2 nearest": lambda k: grid(2, k=k),
        "coarse 56x56 grid, x4 nearest": lambda k: grid(4, k=k),
        "coarse 56x56 grid, x4 linear": lambda k: grid(4, "linear", k=k),
    }
    cases = {name: [make(k).astype(np.int16) for k in range(20)] for name, make in synthetic.items()}
    if train:
        cases["real: FGSM on a linear model, outside real lungs, clipped"] = [
            p.astype(np.int16) for p in fgsm_linear(train, test[:: max(1, len(test) // 60)])
        ]
    names = kernels.CODECS.names()
    print("| perturbation | " + " | ".join(names) + " | ac / rle |")
    print("|---" * (len(names) + 2) + "|")
    for label, ps in cases.items():
        bpp = {c: np.mean([8 * len(kernels.encode_perturbation(p, c)) / p.size for p in ps]) for c in names}
        print(f"| {label} | " + " | ".join(f"{bpp[c]:.3f}" for c in names) + f" | {bpp['ac'] / bpp['rle']:.2f} |")
    p = cases["coarse 56x56 grid, x4 nearest"][0]
    for c in ("ac", "auto"):
        t = best_of(lambda: kernels.encode_perturbation(p, c), 5)
        data = kernels.encode_perturbation(p, c)
        u = best_of(lambda: kernels.decode_perturbation(data), 5)
        print(f"{c}: encode {t * 1e3:.2f} ms, decode {u * 1e3:.2f} ms per 224x224 perturbation")


def traced_peak(fn) -> float:
    """Peak MiB of memory that ``fn()`` allocates through Python and NumPy (tracemalloc; Numba's
    kernels write into NumPy arrays, so their buffers are counted)."""
    import tracemalloc

    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20


def bench_memory(x: np.ndarray) -> None:
    """Peak working memory of embed + extract (20 kbit, PEE) on a 224x224 image and the same image
    resized to 2048x2048, Numba kernels vs the NumPy reference in the same run."""
    from PIL import Image

    print("\n## 4. peak working memory of embed + extract (20 kbit, PEE; tracemalloc)")
    print("| image | image MiB | Numba peak | NumPy peak | NumPy / Numba |")
    print("|---|---|---|---|---|")
    payload = np.random.default_rng(1).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    big = np.asarray(Image.fromarray(x).resize((2048, 2048), Image.BICUBIC))
    for label, img in (("224x224", x), ("2048x2048", big)):
        kernels.extract(kernels.embed(img, payload))  # compiled / cached before tracing
        fast = traced_peak(lambda: kernels.extract(kernels.embed(img, payload)))
        slow = traced_peak(lambda: _reference.extract(_reference.embed(img, payload)))
        print(f"| {label} | {img.nbytes / 2**20:.2f} | {fast:.1f} MiB | {slow:.1f} MiB | {slow / fast:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3")
    ap.add_argument("--quick", action="store_true", help="every 10th image, fewer repeats")
    args = ap.parse_args()
    everything = dataset(args.data)
    if not everything:
        print(f"no cxr3 data at {args.data}: using 30 phantoms instead")
        everything = [(*chest_phantom(s), "phantom") for s in range(30)]
    if args.quick:
        everything = everything[::10]
    images = [x for x, _, _ in everything]
    print(f"# kernels benchmark: {len(images)} images, numba {__import__('numba').__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    bench_speed(images[:: max(1, len(images) // 30)], 3 if args.quick else 7)
    bench_capacity(images)
    train = [t for t in dataset(args.data, "train")] if not args.quick else []
    test = [t for t in dataset(args.data, "test")] or everything
    bench_codecs(train, test)
    bench_memory(images[0])


if __name__ == "__main__":
    main()
