"""Shared helper of the benchmark scripts."""
from __future__ import annotations

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
