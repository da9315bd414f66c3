"""Where a batch's files live: the listing and the I/O of protect / restore / verify, behind one
small interface, so that another store (an object store, a bucket) can come later without touching
the pipelines.

Today there is one implementation, :class:`LocalFiles`: directory trees on a filesystem (on a Ray
cluster, one that every node mounts, NFS-style). A store must give the pipelines four things:
list the images below a root, tell whether an output exists, read and decode an image, and write an
output atomically (complete or absent under its name, never overwritten unless asked). Paths stay ``pathlib.Path`` objects; a remote store would map
them onto its keys.
"""
from __future__ import annotations

from pathlib import Path

from .imageio import Image, is_image_path, read_image, write_atomic


class LocalFiles:
    """Files on a (possibly network-mounted) filesystem."""

    def images(self, root: Path) -> list[Path]:
        """Image files below ``root`` in sorted order (hidden files, e.g. temporaries, left out)."""
        return [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".") and is_image_path(p)]

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def read(self, path: Path | str) -> Image:
        """The decoded image (``toolkit.imageio.ImageError`` with a one-line reason otherwise)."""
        return read_image(path)

    def write(self, path: Path | str, data: bytes, overwrite: bool = False) -> None:
        """Atomically: fsynced under a temporary name, then named (``OutputExists`` if it is there)."""
        write_atomic(Path(path), data, overwrite)


STORE = LocalFiles()  # the store every batch uses
