"""End-to-end protect / restore throughput of the batch pipeline, per-stage times, a full-size image,
command start-up time, and peak memory of whole commands (with their worker processes).

    python benchmarks/bench_pipeline.py [--data ../shared/data/cxr3/test] [--workers 1,2] [--size 2048]

Uses the cxr3 test images (270 PNGs, 224x224) when present, else 270 generated phantoms. protect
runs in both perturbation modes: the default sparse gradient refinement (up to 40 ONNX gradient
steps per image, white-box fooled fraction printed) and ``--refine-steps 0`` (the generator alone,
one forward pass). The reference in the same run is the paper's configuration of the same pipeline (``--rdh hs --codec
rle``): the ratio shows what the default codec + RDH buy in time. Process start-up is excluded from
images/s (the models are loaded inside the timed call; that is ~0.3 s of the total). Each batch runs
in a fresh process, as a command does: in one long-lived process every pool after ONNX Runtime has
run is spawned, not forked (toolkit.batch), and would pay imports and JIT-cache loads that a
command does not.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def stage_inputs(data: Path, dst: Path) -> int:
    """Copy the dataset directory's images (not its masks) into ``dst``; phantoms when absent."""
    from PIL import Image

    from medrae.toolkit.phantoms import chest_phantom

    paths = sorted(data.glob("*/images/*.png")) if data.is_dir() else []
    if paths:
        for p in paths:
            (dst / p.parent.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst / p.parent.parent.name / p.name)
        return len(paths)
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(270):
        Image.fromarray(chest_phantom(i)[0]).save(dst / f"phantom{i}.png")
    return 270


def batch(fn: str, src: Path, dst: Path, key: bytes, **kw) -> dict:
    """One ``toolkit.batch`` call (``protect_paths`` / ``restore_paths``) in a fresh process, as a
    command runs it (its worker pool forks before any ONNX Runtime session exists; in this process
    later pools would be spawned, paying imports and JIT-cache loads a command does not); returns
    the report's JSON."""
    code = ("import json, sys; from pathlib import Path; from medrae.toolkit import batch; "
            "kw = json.loads(sys.argv[2]); fn = getattr(batch, kw.pop('fn')); "
            "rep = fn(Path(kw.pop('src')), Path(kw.pop('dst')), bytes.fromhex(kw.pop('key')), **kw); "
            "print(json.dumps(rep.to_json()))")
    args = json.dumps(dict(fn=fn, src=str(src), dst=str(dst), key=key.hex(), **kw))
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{fn} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, rep: dict, n: int) -> float:
    """Print one batch's throughput and stage times; returns images/s."""
    t = rep["totals"]
    stages = " ".join(f"{k}={1e3 * v:.1f}" for k, v in t["stage_seconds_per_image"].items())
    fooled = f" white-box fooled {100 * t['white_box_fooled']:.1f} %" if t.get("white_box_fooled") is not None else ""
    print(f"{label:<34} {n / t['seconds']:>8.1f} img/s  failed={t['failed']:<3} per image ms: {stages}{fooled}")
    return n / t["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3" / "test")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--strengths", action="store_true", help="only protect at every --strength level (images/s per level), then stop")
    args = ap.parse_args()

    from medrae.toolkit.imageio import read_image

    key = os.urandom(32)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = stage_inputs(args.data, tmp / "in")
        print(f"{n} images from {args.data if (tmp / 'in').exists() else 'phantoms'}\n")
        batch("protect_paths", tmp / "in", tmp / "warm", key, refine_steps=0)  # JIT cache, page cache
        speeds = {}
        from medrae.toolkit.settings import STRENGTHS

        for level in STRENGTHS:  # every level of medrae protect --strength
            for w in workers:
                speeds[(level, w)] = row(f"protect   workers={w} --strength {level}",
                                         batch("protect_paths", tmp / "in", tmp / f"s{level}{w}", key, workers=w, strength=level), n)
        if args.strengths:
            return
        for w in workers:
            speeds[("protect", w)] = row(f"protect   workers={w}", batch("protect_paths", tmp / "in", tmp / f"p{w}", key, workers=w), n)
            rep = batch("restore_paths", tmp / f"p{w}", tmp / f"r{w}", key, workers=w)
            speeds[("restore", w)] = row(f"restore   workers={w}", rep, rep["totals"]["restored"])
            # the default before the transfer pattern (issue 16), timed in the same run
            speeds[("nopattern", w)] = row(f"protect   workers={w} --pattern none",
                                           batch("protect_paths", tmp / "in", tmp / f"o{w}", key, workers=w, pattern=0), n)
            print(f"  default / --pattern none speed, workers={w}: {speeds[('protect', w)] / speeds[('nopattern', w)]:.2f}x")
            # the default before the ROI threshold went from 5 % to 1 % lung probability (issue 17), same run
            speeds[("threshold5", w)] = row(f"protect   workers={w} --roi-threshold 0.05",
                                            batch("protect_paths", tmp / "in", tmp / f"t{w}", key, workers=w, roi_threshold=0.05), n)
            print(f"  default / --roi-threshold 0.05 speed, workers={w}: {speeds[('protect', w)] / speeds[('threshold5', w)]:.2f}x")
            speeds[("generator", w)] = row(f"protect   workers={w} generator only",
                                           batch("protect_paths", tmp / "in", tmp / f"g{w}", key, workers=w, refine_steps=0), n)
            # the opt-in transfer stage (issue 16) beside the default, timed in the same run
            speeds[("transfer", w)] = row(f"protect   workers={w} --transfer-steps 10",
                                          batch("protect_paths", tmp / "in", tmp / f"n{w}", key, workers=w, transfer_steps=10), n)
            print(f"  --transfer-steps 10 / default speed, workers={w}: {speeds[('transfer', w)] / speeds[('protect', w)]:.2f}x")
        # the paper hides anywhere
        ref = batch("protect_paths", tmp / "in", tmp / "paper", key, workers=1, method="hs", codec="rle", refine_steps=0, max_roi_change=None)
        ref_speed = row("protect   paper config (hs + rle)", ref, n)
        print(f"  generator-only / paper config (generator, hs + rle) protect speed: {speeds[('generator', 1)] / ref_speed:.2f}x "
              f"(paper config failed {ref['totals']['failed']} of {n} on capacity)")
        # one full-size radiograph: the first image upsampled (or a phantom), 16-bit and 8-bit
        from PIL import Image

        src = next((tmp / "in").rglob("*.png"))
        base = Image.fromarray(read_image(src).pixels).resize((args.size, args.size), Image.BICUBIC)
        big = tmp / "big"
        big.mkdir()
        base.save(big / "full8.png")
        Image.fromarray(np.asarray(base).astype(np.uint16) * 257).save(big / "full16.png")
        shutil.copy(src, big / "a_warm.png")  # first in order: pays the JIT-cache loads, not the big ones
        for r in batch("protect_paths", big, tmp / "bigp", key, workers=1)["files"][1:]:
            print(f"full size {Path(r['input']).name} {r['shape']}: protect {r['seconds']:.2f} s ({r['status']}), payload "
                  f"{r['payload_bits']} bits, PSNR {r['psnr']:.2f} dB, stages ms: " + " ".join(f"{k}={1e3 * v:.0f}" for k, v in r["stages"].items())
                  if r["status"] == "protected" else f"full size {r['input']}: {r['reason']}")
        for r in batch("restore_paths", tmp / "bigp", tmp / "bigr", key, workers=1)["files"][1:]:
            print(f"full size {Path(r['input']).name}: restore {r['seconds']:.2f} s ({r['status']})")
        # start-up of commands (warm JIT cache): wall time of a whole process
        exe = shutil.which("medrae")
        (tmp / "k.key").write_text(key.hex())
        cmds = {"medrae --help": [exe, "--help"], "medrae info FILE": [exe, "info", str(next((tmp / "p1").rglob("*.png")))],
                "medrae restore 1 file": [exe, "restore", str(next((tmp / "p1").rglob("*.png"))), str(tmp / "one.png"), "--key", str(tmp / "k.key")]}
        for label, cmd in cmds.items():
            if exe is None:
                print("medrae is not installed (pip install -e .): start-up not measured")
                break
            best, failed = 1e9, None
            for _ in range(3):
                t = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                best = min(best, time.perf_counter() - t)
                (tmp / "one.png").unlink(missing_ok=True)
                if done.returncode:  # a broken install exits at once: that is no start-up time
                    failed = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    break
            print(f"start-up {label:<24} " + (f"FAILED (exit {done.returncode}): {failed}" if failed else f"{best:.2f} s"))
        if exe is not None:
            memory(exe, tmp, n)


def memory(exe: str, tmp: Path, n: int) -> None:
    """Peak memory of whole ``medrae`` processes (with their workers; PSS, so pages the forked
    workers share count once), on the staged images and the full-size ones made above. The
    reference in the same run is the paper's configuration (generator, hs + rle, hidden anywhere)."""
    from _timing import peak_memory

    key = ["--key", str(tmp / "k.key")]
    runs = {
        f"protect {n} images, workers=1": ["protect", tmp / "in", tmp / "m1", *key, "--workers", "1"],
        f"protect {n} images, workers=2": ["protect", tmp / "in", tmp / "m2", *key, "--workers", "2"],
        f"protect {n} images, generator only": ["protect", tmp / "in", tmp / "mg", *key, "--workers", "1", "--refine-steps", "0"],
        f"restore {n} images, workers=1": ["restore", tmp / "m1", tmp / "mr", *key, "--workers", "1"],
        "protect 2048x2048 8 + 16-bit (+1 small)": ["protect", tmp / "big", tmp / "mb", *key, "--workers", "1"],
        "restore 2048x2048 8 + 16-bit (+1 small)": ["restore", tmp / "mb", tmp / "mbr", *key, "--workers", "1"],
        f"paper config, {n} images (reference)": ["protect", tmp / "in", tmp / "mp", *key, "--workers", "1", "--refine-steps", "0",
                                                 "--rdh", "hs", "--codec", "rle", "--rdh-in-roi"],
    }
    peaks = {}
    for label, args in runs.items():
        rc, mib, err = peak_memory([exe, *map(str, args)])
        peaks[label] = mib
        # exit 1 = some files failed (the paper config, on capacity): its memory still counts
        print(f"peak memory {label:<38} " + (f"{mib:7.0f} MiB" if rc in (0, 1) else f"FAILED (exit {rc}): {err}"))
    ref = peaks[f"paper config, {n} images (reference)"]
    if ref:
        print(f"  protect (workers=1) / paper config peak memory: {peaks[f'protect {n} images, workers=1'] / ref:.2f}x")


if __name__ == "__main__":
    main()
