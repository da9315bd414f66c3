"""Shared helper of the benchmark scripts."""
from __future__ import annotations

import os
import subprocess
import time


def best_of(fn, repeat: int = 5, warmup: bool = True) -> float:
    """Fastest of ``repeat`` runs of ``fn()`` in seconds (the least disturbed by other load)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # gone meanwhile
            pass
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (forked workers, the model files) counted once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def peak_memory(cmd: list[str], interval: float = 0.02) -> tuple[int, float, str]:
    """Run ``cmd``; returns ``(exit code, peak MiB summed over it and its child processes, last
    stderr line)``, sampling the process tree's PSS every ``interval`` s (Linux only: 0.0 elsewhere)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    if os.path.isdir(f"/proc/{proc.pid}"):
        while proc.poll() is None:
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(interval)
    err = proc.communicate()[1]
    return proc.returncode, peak / 1024, (err.strip().splitlines() or [""])[-1]
