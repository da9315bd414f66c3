"""Key files: 256-bit AES keys stored as 64 hex digits, created with mode 0600."""
from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Optional

from medrae.kernels import KEY_BYTES

ENV_VAR = "MEDRAE_KEY_FILE"
log = logging.getLogger("medrae")


class KeyFileError(Exception):
    """A key file that is missing, unreadable or malformed; ``str()`` is one line."""


def keygen(path: Path | str) -> Path:
    """Create a new random key file (mode 0600). Refuses to overwrite an existing file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def load_key(path: Optional[Path | str]) -> bytes:
    """The 32-byte key in ``path`` (or in ``$MEDRAE_KEY_FILE`` when ``path`` is None).

    Accepts the 64-hex-digit text written by :func:`keygen` or 32 raw bytes.
    """
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise KeyFileError(f"no key: pass --key KEYFILE or set {ENV_VAR} (create one with: medrae keygen KEYFILE)")
    path = Path(path)
    data = _read_key_file(path)
    _warn_if_shared(path)
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: not a medrae key (expected {2 * KEY_BYTES} hex digits or {KEY_BYTES} raw bytes)")
    return key


MAX_KEY_FILE_BYTES = 1024  # a key file is 65 bytes (64 hex digits and a newline) or 32 raw ones


def _read_key_file(path: Path) -> bytes:
    """The bytes of a key file, read only once it is known to be a small regular file: a FIFO, a
    device (/dev/zero) or a huge file is refused before anything is read. Opened without blocking
    (a FIFO with no writer would hang a plain open), then checked on the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file"
            raise KeyFileError(f"{path}: not a key file ({kind}); a key file is a regular file written by medrae keygen")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: not a medrae key ({st.st_size:,} bytes; a key file has {2 * KEY_BYTES} hex digits or {KEY_BYTES} raw bytes)")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _warn_if_shared(path: Path) -> None:
    """Warn (once per use) when other users may read or change the key file: whoever can read it
    can restore every image protected with it. A warning, not a refusal: some sites share keys
    through a group on purpose."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        log.warning("%s: key file is accessible to other users (mode %03o); chmod 600 it unless that is intended", path, mode)
