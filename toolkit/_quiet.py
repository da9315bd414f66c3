"""Silence what C and C++ libraries print on file descriptor 2, where medrae says it in one line."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (Python's ``sys.stderr`` writes too): libtiff
    and zlib report a corrupt file there, Ray's C++ core every failed connection attempt, a line a
    second, while the error medrae raises says it once."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
