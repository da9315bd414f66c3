"""Protect on a local Ray cluster with 1 and 2 actors beside the single-machine command, same images,
same run: images/s, scaling efficiency (1 -> 2 actors) and Ray's overhead per file.

    python benchmarks/bench_ray.py [--data ../shared/data/cxr3/test] [--limit N] [--refine-steps N]

Every figure is a whole command (``medrae protect IN OUT ...`` in a fresh process, as a user runs
it; model loading, JIT-cache loads and, for Ray, the actors' start-up included). The Ray cluster is
started once (``ray start --head --num-cpus 2``) and each Ray command joins it (``--ray ADDRESS``),
as on a real cluster, where the cluster outlives the command; ``local`` (a Ray started by the
command) is timed once too. The reference is the single-machine command on the same two cores
(its default on CPUs since 2026-12-06: two worker processes, each running whole
chunks with its own networks on one core, as an actor does; before, ONNX Runtime ran on both cores
in the main process and the workers only coded and hid), so ``overhead per file = (Ray with 2 actors - single machine) / files`` (pinning the
command to one core with taskset does not hold: ONNX Runtime sets its own threads' affinity).
Scaling efficiency is ``t(1 actor) / (2 x t(2 actors))``. On the rows that join the running cluster, ``command CPU`` is
the driver's alone (the actors are the raylet's children): one driver cannot schedule more than
about 1 / that many files per second, whatever the cluster's size (docs/SCALING.md). Needs the ``ray`` extra; run it on an otherwise idle machine
(Ray runs its workers at nice 15: any other load starves them).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import stage_inputs  # noqa: E402


def command(args: list[str], env: dict | None = None) -> tuple[float, float, dict]:
    """Run ``medrae ARGS --report R`` in a fresh process; (wall seconds, CPU seconds of the process
    and its children, report). Joining a running Ray, the actors are the raylet's children, not the
    command's: the CPU seconds are then the driver's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        cmd = [sys.executable, "-c", "from medrae.cli import app; app()", *args, "--report", str(report)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if res.returncode not in (0, 1) or not report.exists():  # 1: some files failed (capacity): reported, timed
            raise SystemExit(f"{' '.join(args)}: failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
        return wall, cpu, json.loads(report.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cxr3" / "test"))
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    p.add_argument("--refine-steps", type=int, default=None, help="passed to protect (default: protect's default)")
    args = p.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("needs the ray extra: pip install -e '.[ray]'")
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        src = work / "in"
        n = stage_inputs(Path(args.data), src)
        if args.limit:
            for extra in sorted(src.rglob("*.png"))[args.limit :]:
                extra.unlink()
            n = min(n, args.limit)
        key = work / "site.key"
        subprocess.run([sys.executable, "-c", "from medrae.cli import app; app()", "keygen", str(key)], cwd=ROOT, check=True, capture_output=True)
        common = ["--key", str(key)] + (["--refine-steps", str(args.refine_steps)] if args.refine_steps is not None else [])
        rows = []

        def run(label: str, extra: list[str], env: dict | None = None) -> float:
            out = work / f"out{len(rows)}"
            wall, cpu, rep = command(["protect", str(src), str(out), *common, *extra], env)
            t = rep["totals"]
            assert t["protected"] + t["failed"] == n, t
            rows.append((label, wall, n / wall, t["protected"], t.get("per_node")))
            print(f"{label:44s} {wall:7.1f} s  {n / wall:6.2f} images/s  ({t['protected']} protected)  "
                  f"command CPU {cpu / n * 1000:.1f} ms per file", flush=True)
            shutil.rmtree(out)
            return wall

        print(f"{n} images from {args.data}; {os.cpu_count()} CPUs", flush=True)
        single = run("single machine (medrae protect, defaults)", [])
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
        started = subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                                 capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"ray start failed: {started.stderr.strip().splitlines()[-1:]}")
        address = next(line.split("'")[1] for line in started.stdout.splitlines() if "ray start --address=" in line) \
            if "ray start --address=" in started.stdout else "auto"
        try:
            token = {**os.environ, "RAY_AUTH_MODE": "token"}  # `ray start` turned token authentication on (README)
            ray1 = run(f"ray ({address}), 1 actor", ["--ray", address, "--workers", "1"], token)
            ray2 = run(f"ray ({address}), 2 actors", ["--ray", address, "--workers", "2"], token)
        finally:
            subprocess.run(["ray", "stop", "--force"], capture_output=True)
        local = run("ray local (started by the command), 2 actors", ["--ray", "local", "--workers", "2"])
        print()
        print(f"scaling efficiency 1 -> 2 actors: {ray1 / (2 * ray2):.2f}")
        print(f"Ray overhead per file (2 actors vs the single-machine command, both on 2 cores): {(ray2 - single) / n * 1000:+.1f} ms "
              f"({(ray2 - single) / single * 100:+.1f} % of the single-machine time; {single / ray2:.2f}x its throughput); "
              f"ray local (started by the command): {(local - single) / single * 100:+.1f} %")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
