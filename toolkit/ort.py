"""ONNX Runtime sessions: CUDA when this onnxruntime build has it, else CPU, and say which."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger("medrae")
_logged: set[tuple[str, ...]] = set()
_started = False  # a session (and so its thread pools) has existed in this process


def sessions_started() -> bool:
    """Whether this process has created an ONNX Runtime session (batch then spawns, not forks)."""
    return _started


def providers(device: str = "auto") -> list[str]:
    """Execution providers to ask for. Only providers this build reports are requested, so a
    machine without CUDA gets no error spam from a failed CUDA provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    want = ["CUDAExecutionProvider"] if device in ("auto", "cuda") and "CUDAExecutionProvider" in available else []
    return want + ["CPUExecutionProvider"]


def session(path: Path | str, device: str = "auto", threads: int = 0):
    """An ``InferenceSession`` for ``path``; logs the providers it really got, once per set."""
    import onnxruntime as ort

    global _started
    _started = True
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))
    got = tuple(sess.get_providers())
    if got not in _logged:
        _logged.add(got)
        log.info("onnxruntime providers: %s", ", ".join(got))
    return sess


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file (model cards record it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
