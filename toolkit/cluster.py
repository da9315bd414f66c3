"""Protect, restore and verify on a Ray cluster (the ``ray`` extra), with the bytes of one machine.

The driver lists the files (paths only: it never holds the images), cuts the work into the same
chunks as the single-machine batch (``batch_size`` files) and hands them to long-lived actors,
one per CPU by default. Each actor loads its ONNX Runtime sessions once and runs a chunk through
exactly the code the single-machine command runs (:func:`medrae.toolkit.filework.protect_chunk`: decode,
segment, perturb, code, embed, check the encoded file restores, write atomically), so a file
protected here is the file ``medrae protect`` writes on one machine with the same key and options
(the encryption nonce aside, which is random: the ciphertext then differs, and with it the pixels
the payload moves, while the restored original, the decrypted payload and every pixel the RDH
restores to are equal; ``--no-encrypt`` files are byte-identical).

Input and output trees live on a filesystem every node sees (NFS-style): actors read and write
them by path. A worker process that dies is restarted by Ray and its chunk retried (files it had
already written are then reported ``skipped``); a file that fails for its own reason fails once,
as on one machine.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ._quiet import quiet_stderr
from .filework import BatchReport, FileResult, _chunks, describe, _restore_one, _start, _start_verify, _verify_one, pair_paths, protect_chunk, verify_pairs
from .settings import ProtectSettings
from .stopping import STOP, interrupted

RAY_HINT = "pip install 'medrae[ray]'"
TASK_RETRIES = 3  # a chunk whose worker died is retried this often (on the restarted actor) before its files fail
IN_FLIGHT_PER_ACTOR = 2  # chunks queued on each actor, so that none waits for the driver between chunks
log = logging.getLogger("medrae")


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


CONNECT_TIMEOUT_S = 10.0  # a cluster address that does not answer within this is reported, not waited on


def _check_reachable(address: str) -> None:
    """A one-line error, at once, for a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray reports what it makes of it
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RuntimeError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


# Run by the reaper process (Linux): while the command lives, note every process below it; when it is
# gone without saying "done" (SIGKILL), kill what is left of them. ``ray.init`` starts the local Ray's
# processes below the command, and some of them (its agents) outlive a killed command otherwise.
_REAPER = r"""
import os, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the command's to handle
parent, me = int(sys.argv[1]), os.getpid()
said = []
threading.Thread(target=lambda: said.append(sys.stdin.read()), daemon=True).start()
def below(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                kids.setdefault(int(fields[1]), []).append((int(d), fields[19]))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            out.append((pid, start)); todo.append(pid)
    return out
seen = {}
while os.getppid() == parent and not said:
    seen.update(below(parent)); time.sleep(0.5)
time.sleep(0.2)
if said and "done" in said[0]:
    sys.exit(0)
for pid, start in seen.items():
    if pid == me:
        continue
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""


def _reaper():
    """A watcher that kills the local Ray's processes if this command dies without stopping them
    (Linux; elsewhere None)."""
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


def _dismiss(reaper) -> None:
    """The command stopped its Ray itself: the reaper leaves."""
    try:
        reaper.stdin.write("done")
        reaper.stdin.close()
        reaper.wait(timeout=10)
    except (OSError, ValueError, Exception):  # noqa: BLE001 - a reaper that is already gone is fine
        reaper.kill()


@contextmanager
def connected(address: str) -> Iterator[object]:
    """Ray, connected for the duration: ``local`` starts a Ray on this machine and stops it after,
    ``auto`` joins the cluster this machine belongs to, anything else is a cluster address. A
    program already connected (``ray.init`` called before) keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    reaper = None
    if address != "local":
        _check_reachable(address)
    try:
        with quiet_stderr():  # Ray's C++ core logs each failed connection attempt there
            if address == "local":
                ray.init(num_cpus=os.cpu_count() or 1, **quiet)
                reaper = _reaper()
            else:
                ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        # `ray start` turns token authentication on; a driver given the address (not `auto`) must
        # be told to use a token (Ray reads RAY_AUTH_MODE once, at import: no retry here can)
        hint = (" (the cluster wants its authentication token: export RAY_AUTH_MODE=token, with the head node's "
                "~/.ray/auth_token here or in RAY_AUTH_TOKEN)") if _auth_refused(exc) else ""
        raise RuntimeError(f"--ray {address}: cannot connect to a Ray cluster: {str(exc).splitlines()[0]}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if address == "local" and reaper is not None:
            _dismiss(reaper)


def _auth_refused(exc: BaseException) -> bool:
    """Whether Ray refused the connection for a missing or wrong authentication token."""
    seen: set = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class Job:
    """What every actor of one command does: ``kind`` is protect, restore or verify."""

    kind: str
    key: Optional[bytes]
    overwrite: bool = False
    settings: Optional[ProtectSettings] = None
    allow_keyless: bool = False  # restore / verify: keyless files although a key was given


class MedraeWorker:
    """A Ray actor (made one by :func:`_actor`): holds the ONNX Runtime sessions of one job for its
    life and runs chunks through the single-machine code. Its process title is ``ray::MedraeWorker``."""

    def __init__(self, job: Job, threads: int):
        from . import ort

        ort.set_threads(threads)
        self.job, self.error, self.protector = job, None, None
        self.node = f"{socket.gethostname()}/{_ray().get_runtime_context().get_node_id()[:8]}"
        try:
            if job.kind == "protect":
                self.protector = job.settings.protector()
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            self.error = str(exc)  # reported by describe(), as the command's one-line error

    def describe(self) -> dict:
        """The protector's provenance (mode, ROI rule, eps, model files) and the providers this actor got."""
        p = self.protector
        if self.error or p is None:
            return {"error": self.error, "node": self.node}
        return {"error": None, "node": self.node, **describe(p)}

    def run(self, chunk: list[tuple[str, ...]]) -> list[FileResult]:
        job = self.job
        if job.kind == "protect":
            results = protect_chunk(self.protector, chunk, job.key, job.settings, job.overwrite)
        elif job.kind == "restore":
            results = [_restore_one(s, d, job.key, job.overwrite, job.allow_keyless) for s, d in chunk]
        else:
            results = [_verify_one(o, p, job.key, job.allow_keyless) for o, p in chunk]
        for r in results:
            r.node = self.node
        return results


def _actor(ray, n_cpus: float, n_gpus: float):
    return ray.remote(num_cpus=n_cpus, num_gpus=n_gpus, max_restarts=-1, max_task_retries=TASK_RETRIES)(MedraeWorker)


def run_on_cluster(kind: str, src: Path, dst: Path, key: Optional[bytes], *, address: str, settings: Optional[ProtectSettings] = None,
                   workers: int = 0, overwrite: bool = False, gpus_per_actor: float = 0.0,
                   on_start: Callable[[int], None] = lambda n: None, on_result: Callable[[FileResult], None] = lambda r: None,
                   command: Optional[str] = None, allow_keyless: bool = False) -> BatchReport:
    """The batch of ``toolkit.batch.{protect,restore,verify}_paths`` on a Ray cluster.

    ``kind``: protect | restore | verify (for verify, ``src`` is the originals and ``dst`` the
    protected tree). ``workers``: actors (0: one per CPU of the cluster). ``gpus_per_actor``: GPUs
    Ray reserves for each actor (e.g. 0.25: four actors share one GPU); with 0 an actor still uses
    CUDA where its node's onnxruntime-gpu has it and it loads (toolkit.ort)."""
    if kind not in ("protect", "restore", "verify"):
        raise ValueError(f"kind must be protect, restore or verify, got {kind!r}")
    settings = settings or ProtectSettings()
    t0 = time.perf_counter()
    if kind == "verify":
        results, done, todo = _start_verify(verify_pairs(src, dst), on_start, on_result)
    else:
        results, done, todo = _start(pair_paths(src, dst, map_name=kind == "protect"), overwrite, on_start, on_result)
    described: list[dict] = []
    if todo:
        with connected(address) as ray:
            n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            job = Job(kind, key, overwrite, settings if kind == "protect" else None, allow_keyless)
            actors = [_actor(ray, 1, gpus_per_actor).remote(job, 1) for _ in range(n)]
            try:
                described = ray.get([a.describe.remote() for a in actors])
            except ray.exceptions.RayError as exc:  # e.g. a driver whose auth mode the cluster's workers refuse
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise RuntimeError(f"--ray {address}: the workers did not start ({type(exc).__name__}: {first})") from None
            errors = [d["error"] for d in described if d["error"]]
            if errors:
                raise RuntimeError(errors[0])
            _schedule(ray, actors, [[(str(s), str(d)) for s, d in c] for c in _chunks(todo, settings.batch_size)], done)
    seconds = time.perf_counter() - t0
    first = described[0] if described else {}
    providers = sorted({p for d in described for p in d.get("providers", [])})
    rep = BatchReport(command or kind, results, seconds, providers, first.get("mode"), first.get("roi"), first.get("eps"),
                      first.get("strength"), first.get("models", {}))
    rep.cluster = {"address": address, "actors": len(described), "nodes": sorted({d["node"] for d in described})}
    return rep


def _schedule(ray, actors: list, chunks: list[list[tuple[str, str]]], done: Callable[[FileResult], None]) -> None:
    """Keep every actor busy with ``IN_FLIGHT_PER_ACTOR`` chunks; report each chunk's results as it
    ends. A chunk that still fails after Ray's retries (its worker kept dying) fails its files."""
    queue = list(reversed(chunks))
    running: dict = {}  # ObjectRef -> (actor, chunk)

    def submit(actor) -> None:
        if queue and not STOP.is_set():
            chunk = queue.pop()
            running[actor.run.remote(chunk)] = (actor, chunk)

    for actor in actors:
        for _ in range(IN_FLIGHT_PER_ACTOR):
            submit(actor)
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        actor, chunk = running.pop(ref)
        try:
            for r in ray.get(ref):
                done(r)
        except ray.exceptions.RayError as exc:
            reason = f"the worker died {TASK_RETRIES + 1} times on this file's chunk ({type(exc).__name__}); not written"
            for s, d in chunk:
                done(FileResult(s, d, "failed", reason))
        submit(actor)
    for r in interrupted([pair for chunk in reversed(queue) for pair in chunk]):  # empty unless stopped
        done(r)
