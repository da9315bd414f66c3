"""What a report records so that an audit can tell which code produced it (model files: their
SHA-256, :func:`toolkit.ort.file_sha256`)."""
from __future__ import annotations


def medrae_version() -> str:
    """The installed package's version, or a note that it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medrae")
    except PackageNotFoundError:
        return "unknown (not installed)"
