"""Stopping a batch: a request to stop after the files in flight, and worker processes that never
outlive the process that started them.

:data:`STOP` is set by the command's SIGTERM / Ctrl-C handler (``medrae.cli``); the schedulers
(:mod:`medrae.toolkit.batch`, :mod:`medrae.toolkit.cluster`) then start no more files, let the
ones in flight finish (each is complete or absent on disk, as always) and report the rest as
skipped, so a rerun resumes there.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from .filework import FileResult

STOP = threading.Event()
INTERRUPTED = "interrupted before it started (SIGTERM or Ctrl-C): rerun the command to finish"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5


def interrupted(pairs) -> list[FileResult]:
    """Skipped results for the (input, output) pairs a stopped batch did not start."""
    return [FileResult(str(s), str(d), "skipped", INTERRUPTED) for s, d in pairs]


def worker_init(parent: int) -> None:
    """Run first in every worker process: die with ``parent``, and leave Ctrl-C to it (a terminal's
    SIGINT reaches the whole process group; the parent decides to stop after the files in flight)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a fork inherits the command's handler; a SIGTERM sent to a worker ends it
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Exit as soon as ``parent`` is gone, however it died (SIGKILL included). On Linux the kernel
    sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread
    also watches the parent pid (an orphan is re-parented), which covers other platforms and a
    parent that died before the ``prctl`` took effect."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="medrae-parent-watch", daemon=True).start()
