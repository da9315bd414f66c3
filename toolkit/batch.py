"""Batch protect / restore / verify of files and directory trees.

Outputs mirror the input tree. A file is written to a temporary name and renamed only after the
bytes on their way to disk have been decoded again and restored, bit for bit, to the original
(protect) or re-read identical (restore). Existing outputs are skipped (so an interrupted batch
resumes) unless ``overwrite``; inputs are never written. A file that fails gets a one-line reason
and the batch goes on. On CPUs each of ``workers`` processes protects whole chunks of files with its
own networks (as a Ray actor does); with CUDA, or with one worker, the networks run in the calling
process, batched, and decoding, coding, embedding, checking and writing in the workers. A file
that kills its CPU worker fails alone; the others are protected (:func:`_protect_in_workers`).
Worker processes die with the process that started them; once :data:`stopping.STOP` is set (SIGTERM
or Ctrl-C in a command) no more files are started, the ones in flight finish, and the rest are
reported skipped.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from . import ort
from .filework import (BatchReport, FileResult, _Inline, _chunks, _collect, _protect_report, _refine_again, _restore_one, _start,
                       _start_verify, _submit_chunk, _verify_one, describe, pair_paths, protect_chunk, verify_pairs)
from .settings import ProtectSettings
from .stopping import STOP, interrupted, worker_init


def _warm(_: int = 0) -> int:
    from medrae import kernels  # noqa: F401  (imports and loads the cached JIT code in the worker)

    return os.getpid()


def auto_workers(workers: int, n_files: int) -> int:
    """``workers <= 0``: one per core (at most 4) for batches, inline for a single file."""
    if workers > 0:
        return workers
    return 1 if n_files <= 1 else max(1, min(4, os.cpu_count() or 1))


def executor(workers: int) -> Executor:
    """Worker processes, or inline for 1. They are forked (fast: nothing to import again) while
    no ONNX Runtime session exists in this process, as in a command's process, which makes the
    pool first; later (a second batch in the same program) they are spawned: a fork copies the
    locks of ONNX Runtime's thread pools mid-use, and a benchmark's second pool hung with a worker
    stuck in PIL's PNG reader."""
    if workers <= 1:
        return _Inline()
    method = "spawn" if ort.sessions_started() else "fork"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method), initializer=worker_init,
                               initargs=(os.getpid(),))
    list(pool.map(_warm, range(workers)))  # start every worker now, while this process is still simple
    return pool


def protect_paths(src: Path, dst: Path, key: Optional[bytes], settings: Optional[ProtectSettings] = None, *, workers: int = 0,
                  overwrite: bool = False, ray: Optional[str] = None, gpus_per_actor: float = 0.0, on_start: Callable[[int], None] = lambda n: None,
                  on_result: Callable[[FileResult], None] = lambda r: None, command: str = "protect", **options) -> BatchReport:
    """Protect one file or a directory tree into ``dst``; see the module docstring.

    ``settings``: the protect options (``options``: field overrides of it, e.g. ``refine_steps=0``).
    ``ray``: run on a Ray cluster (:mod:`toolkit.cluster`): ``"local"`` starts one on this machine
    for the call, ``"auto"`` or an address joins a running one; ``workers`` is then the number of
    actors (0: one per CPU of the cluster), ``gpus_per_actor`` the GPUs Ray reserves for each. The
    files written are the same either way."""
    settings = replace(settings or ProtectSettings(), **options)
    if ray is not None:
        from .cluster import run_on_cluster

        return run_on_cluster("protect", src, dst, key, settings=settings, workers=workers, overwrite=overwrite, address=ray,
                              gpus_per_actor=gpus_per_actor, on_start=on_start, on_result=on_result, command=command)
    t0 = time.perf_counter()
    results, done, todo = _start(pair_paths(src, dst), overwrite, on_start, on_result)
    n_workers = auto_workers(workers, len(todo))
    if n_workers > 1 and "CUDAExecutionProvider" not in ort.providers(settings.device):
        return _protect_in_workers(todo, key, settings, overwrite, n_workers, done, results, t0, command)
    with executor(n_workers) as pool:
        protector = settings.protector() if todo else None
        pending: list = []  # the previous chunk's jobs, collected after this chunk's inference
        retry: list = []  # files to refine again without the pattern, batched as the chunks are
        for i, chunk in enumerate(_chunks(todo, settings.batch_size)):
            if STOP.is_set():
                for r in interrupted(todo[i * settings.batch_size :]):
                    done(r)
                break
            jobs = _submit_chunk(protector, pool, chunk, key, settings, overwrite, done)
            _collect(pending, done, retry)  # workers ran these while this chunk was decoded and inferred
            pending = jobs
            if len(retry) >= settings.batch_size:
                pending += _refine_again(protector, pool, retry)
                retry = []
        _collect(pending, done, retry)
        while retry:
            jobs, retry = _refine_again(protector, pool, retry), []
            _collect(jobs, done, retry)
    return _protect_report(command, results, time.perf_counter() - t0, describe(protector) if protector else {})


def _protect_in_workers(todo: list, key: Optional[bytes], settings: ProtectSettings, overwrite: bool, workers: int,
                        done: Callable[[FileResult], None], results: list[FileResult], t0: float, command: str) -> BatchReport:
    """On CPUs: every worker process holds its own networks (one share of the cores each) and runs
    whole chunks, as a Ray actor does (:func:`protect_chunk`, the same files). Faster than one
    process inferring for all with every core: a network's threads scale less than linearly, and
    the refinement's batches shrink as images are fooled (270 cxr3 test X-rays, 2 cores, 2 workers:
    README "Measured").

    A worker that dies (killed, out of memory, a crash in a native library) breaks the pool: the
    files of the chunks in flight are then protected again one at a time, each alone in a fresh
    pool, so the file that kills its worker fails with its reason and the batch goes on."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = [[(str(s), str(d)) for s, d in chunk] for chunk in _chunks(todo, settings.batch_size)][::-1]
    suspects: list = []  # files whose chunk's worker died: each is redone alone
    about: dict = {}
    while (queue or suspects) and not STOP.is_set():
        with executor(workers) as pool:
            if not about and todo:
                about = pool.submit(_describe_in_worker, settings, threads).result()  # a bad --models fails here, once
                ort.log_providers(about["providers"])
            submit_chunk = lambda chunk: pool.submit(_chunk_in_worker, chunk, key, settings, overwrite, threads)  # noqa: E731
            try:
                _redo_alone(suspects, submit_chunk, done)
                _run_chunks(queue, workers, submit_chunk, done, suspects)
            except BrokenProcessPool:
                continue  # a fresh pool for what is left
    for r in interrupted([pair for chunk in queue for pair in chunk] + suspects):  # empty unless stopped
        done(r)
    return _protect_report(command, results, time.perf_counter() - t0, about)


def _redo_alone(suspects: list, submit_chunk: Callable, done: Callable[[FileResult], None]) -> None:
    """Protect the ``suspects`` (popped from the end) one file at a time; the file whose worker dies
    alone fails with its reason, and :class:`BrokenProcessPool` is raised (the pool is gone)."""
    while suspects:
        src, dst = suspects.pop()
        try:
            rows = submit_chunk([(src, dst)]).result()
        except BrokenProcessPool:
            done(FileResult(src, dst, "failed", "the worker process died protecting this file, alone, twice "
                                                "(killed, out of memory or a crash in a native library); not written"))
            raise
        for r in rows:
            done(r)


def _run_chunks(queue: list, workers: int, submit_chunk: Callable, done: Callable[[FileResult], None], suspects: list) -> None:
    """Run the chunks of ``queue`` (popped from its end), one per worker at a time, so an interrupted
    batch stops after the chunks it is on. If a worker dies, the files of every chunk in flight go
    to ``suspects``, the chunks not yet started stay in ``queue``, and :class:`BrokenProcessPool` is raised."""
    running: dict = {}  # future -> chunk

    def broke() -> None:
        for f, chunk in running.items():  # the others die with the pool, unless they just finished
            if f.done() and not isinstance(f.exception(), BrokenProcessPool):
                for r in f.result():
                    done(r)
            else:
                suspects.extend(chunk[::-1])
        raise BrokenProcessPool("a worker process died")

    def submit() -> None:
        if queue and not STOP.is_set():
            try:
                future = submit_chunk(queue[-1])
            except BrokenProcessPool:  # the pool broke since the last wait: the chunk stays queued
                broke()
            running[future] = queue.pop()

    for _ in range(workers):
        submit()
    while running:
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        broken = False
        for f in finished:  # every finished chunk first: a broken one must reach ``suspects`` before anything is submitted
            chunk = running.pop(f)
            try:
                rows = f.result()
            except BrokenProcessPool:
                suspects.extend(chunk[::-1])
                broken = True
                continue
            for r in rows:
                done(r)
        if broken:
            broke()
        for _ in finished:
            submit()


_worker_protectors: dict = {}  # in a worker process: ProtectSettings -> its Protector, made on first use


def _worker_protector(settings: ProtectSettings, threads: int):
    if settings not in _worker_protectors:
        ort.set_threads(threads)
        ort.quiet_providers()  # the main process logs them once
        _worker_protectors[settings] = settings.protector()
    return _worker_protectors[settings]


def _chunk_in_worker(chunk: list[tuple[str, str]], key: Optional[bytes], settings: ProtectSettings, overwrite: bool,
                     threads: int) -> list[FileResult]:
    return protect_chunk(_worker_protector(settings, threads), chunk, key, settings, overwrite)


def _describe_in_worker(settings: ProtectSettings, threads: int) -> dict:
    return describe(_worker_protector(settings, threads))


def restore_paths(src: Path, dst: Path, key: Optional[bytes], *, workers: int = 0, overwrite: bool = False, ray: Optional[str] = None,
                  allow_keyless: bool = False,
                  on_start: Callable[[int], None] = lambda n: None, on_result: Callable[[FileResult], None] = lambda r: None,
                  command: str = "restore") -> BatchReport:
    """Restore one file or a tree of protected files into ``dst`` (same names). ``ray``: as for
    :func:`protect_paths`. With a ``key``, keyless files fail unless ``allow_keyless``."""
    if ray is not None:
        from .cluster import run_on_cluster

        return run_on_cluster("restore", src, dst, key, address=ray, workers=workers, overwrite=overwrite, on_start=on_start,
                              on_result=on_result, command=command, allow_keyless=allow_keyless)
    t0 = time.perf_counter()
    results, done, todo = _start(pair_paths(src, dst, map_name=False), overwrite, on_start, on_result)
    n = auto_workers(workers, len(todo))
    with executor(n) as pool:
        _run_ordered(pool, n, _restore_one, [(str(s), str(d), key, overwrite, allow_keyless) for s, d in todo], todo, done)
    return BatchReport(command, results, time.perf_counter() - t0)


def verify_paths(original: Path, protected: Path, key: Optional[bytes], *, workers: int = 0, ray: Optional[str] = None,
                 allow_keyless: bool = False,
                 on_start: Callable[[int], None] = lambda n: None, on_result: Callable[[FileResult], None] = lambda r: None,
                 command: str = "verify") -> BatchReport:
    """Restore each protected file in memory and compare it with its original, bit for bit.
    ``ray``: as for :func:`protect_paths`."""
    if ray is not None:
        from .cluster import run_on_cluster

        return run_on_cluster("verify", original, protected, key, address=ray, workers=workers, on_start=on_start,
                              on_result=on_result, command=command, allow_keyless=allow_keyless)
    t0 = time.perf_counter()
    results, done, todo = _start_verify(verify_pairs(original, protected), on_start, on_result)
    n = auto_workers(workers, len(todo))
    with executor(n) as pool:
        _run_ordered(pool, n, _verify_one, [(str(o), str(p), key, allow_keyless) for o, p in todo], todo, done)
    return BatchReport(command, results, time.perf_counter() - t0)


def _run_ordered(pool: Executor, workers: int, fn, arglists: list[tuple], pairs: list, done: Callable[[FileResult], None]) -> None:
    """``fn(*args)`` for each of ``arglists`` in ``pool``, results reported in input order, at most
    two calls per worker in flight; once :data:`STOP` is set nothing more starts and the ``pairs``
    not started are reported skipped."""
    from collections import deque

    window: deque = deque()
    started = 0
    while started < len(arglists) or window:
        while started < len(arglists) and len(window) < 2 * max(1, workers) and not STOP.is_set():
            window.append(pool.submit(fn, *arglists[started]))
            started += 1
        if not window:
            break
        done(window.popleft().result())
    for r in interrupted(pairs[started:]):
        done(r)