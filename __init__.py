"""medrae: reversible adversarial protection of medical images.

Protect an image against unauthorized AI analysis while keeping its diagnostic region (the
lungs) untouched, and restore the original exactly with the key::

    import medrae

    key = medrae.new_key()
    result = medrae.protect(pixels, key)          # any 2-D uint8 / uint16 array
    original = medrae.restore(result.pixels, key)

The public API is :mod:`medrae.api` (re-exported here); the command line is ``medrae``.
Subpackages: ``medrae.kernels`` (the bitstream stage), ``medrae.toolkit`` (runtime pipelines),
``medrae.evaluation``, ``medrae.models`` and ``medrae.export`` (training and export; PyTorch).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.4.1"

_API = ("protect", "restore", "verify", "inspect", "protect_file", "restore_file", "verify_file", "new_key", "load_key",
        "Protected", "ProtectSettings", "ProtectError", "MedraeError", "CapacityError", "KeyMismatchError", "NotProtectedError",
        "KeylessError", "PayloadError", "HeaderChangedError", "ImageError", "KeyFileError", "ModelsError")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # lazy: ``import medrae`` (and the CLI's start-up) stays cheap; numpy, numba and ONNX Runtime load on first use
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'medrae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
