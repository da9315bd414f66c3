"""ONNX Runtime sessions: CUDA when this onnxruntime build has it and it loads, else CPU, and say which.

medrae runs on either ONNX Runtime package, ``onnxruntime`` (CPU, the ``cpu`` extra) or
``onnxruntime-gpu`` (CUDA, the ``gpu`` extra). Both install the same module, ``onnxruntime``, so an
environment must hold exactly one of them: with both, whichever was installed last silently wins.
"""
from __future__ import annotations

import hashlib
import logging
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("medrae")
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
INSTALL_HINT = "pip install 'medrae[cpu]', or 'medrae[gpu]' on a machine with CUDA (one of the two, never both)"
_logged: set[str] = set()
_started = False  # a session (and so its thread pools) has existed in this process
_threads = 0  # intra-op threads of new sessions (0: ONNX Runtime's choice, one per physical core)
_runtimes_checked = False  # the installed runtime packages were looked up (once per process, not per session)
_announce = True  # log the providers sessions get (False in a worker process: its main process logs them)


class ModelsError(FileNotFoundError):
    """A model directory or model file that is missing or cannot be loaded; ``str()`` is one line
    naming the path."""


def require_file(path: Path, what: str = "model file") -> Path:
    """``path`` if it is a file, else :class:`ModelsError` naming it (and the directory, if that is what is missing)."""
    if path.is_file():
        return path
    if not path.parent.is_dir():
        raise ModelsError(f"{path.parent}: models directory not found (--models DIR)")
    raise ModelsError(f"{path}: {what} not found (--models DIR)")


def sessions_started() -> bool:
    """Whether this process has created an ONNX Runtime session (batch then spawns, not forks)."""
    return _started


def set_threads(threads: int) -> None:
    """Intra-op threads of the sessions this process creates from now on (0: one per core). A Ray
    actor that owns one CPU sets 1, so that N actors on N cores do not run N x N threads."""
    global _threads
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    _threads = int(threads)


def _once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def runtime_packages() -> list[str]:
    """The ONNX Runtime distributions installed in this environment (normally exactly one)."""
    found = []
    for name in RUNTIME_PACKAGES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _runtime():
    """The ``onnxruntime`` module, with a one-line error when no runtime is installed and one
    warning when both packages are (they overwrite each other's files)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(f"ONNX Runtime is not installed ({exc}): {INSTALL_HINT}") from None
    global _runtimes_checked
    if not _runtimes_checked:
        _runtimes_checked = True
        if len(runtime_packages()) > 1:
            _once(f"both {' and '.join(RUNTIME_PACKAGES)} are installed; they share the module 'onnxruntime' and the one "
                  "installed last wins: uninstall both, then install one (README, GPU nodes)", logging.WARNING)
    return onnxruntime


def providers(device: str = "auto", available: Optional[Sequence[str]] = None) -> list[str]:
    """Execution providers to ask for, given those this build reports (``available``; default: the
    installed runtime's). Only providers the build has are requested, so a CPU-only machine gets no
    error spam from a CUDA provider it cannot have."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if available is None:
        available = _runtime().get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("--device cuda: this onnxruntime has no CUDA provider (install the gpu extra: onnxruntime-gpu)")
    want = ["CUDAExecutionProvider"] if device in ("auto", "cuda") and "CUDAExecutionProvider" in available else []
    return want + ["CPUExecutionProvider"]


def fallback_note(asked: Sequence[str], got: Sequence[str]) -> Optional[str]:
    """The one line to log when a session did not get a provider it asked for (None: it got them)."""
    lost = [p for p in asked if p not in got and p != "CPUExecutionProvider"]
    if not lost:
        return None
    return (f"{', '.join(lost)} did not load on this machine (onnxruntime-gpu needs a matching CUDA and cuDNN); "
            f"running on {', '.join(got)}")


def session(path: Path | str, device: str = "auto", threads: Optional[int] = None):
    """An ``InferenceSession`` for ``path``; logs the providers it really got, once per set, and one
    line when CUDA was asked for but did not load (the session then runs on the CPU)."""
    ort = _runtime()
    global _started
    _started = True
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    n = _threads if threads is None else threads
    if n:
        opts.intra_op_num_threads = n
    asked = providers(device, ort.get_available_providers())
    if "CUDAExecutionProvider" in asked:
        ort.set_default_logger_severity(4)  # a CUDA library that fails to load is reported once, below, not as a log dump
    require_file(Path(path))
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=asked)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelsError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
    got = list(sess.get_providers())
    note = fallback_note(asked, got)
    if note:
        if device == "cuda":
            raise RuntimeError(f"--device cuda: {note}")
        _once(note, logging.WARNING)
    log_providers(got)
    return sess


def log_providers(got: Sequence[str]) -> None:
    """Log the providers a session got, once per set and process, unless :func:`quiet_providers`."""
    if _announce:
        _once(f"onnxruntime providers: {', '.join(got)}")


def quiet_providers() -> None:
    """Stop logging the providers in this process: a worker process that builds its own sessions
    leaves that line to the main process, which logs what the workers got once
    (:func:`toolkit.batch.protect_paths`); every other message still reaches the log."""
    global _announce
    _announce = False


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file (model cards record it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) → float32 (N, 1, H, W): the input every shipped network takes, ``(x / 255 - 0.5) / 0.25``."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.25)[:, None]
