"""What the payload authenticates besides the pixels: a DICOM file's header.

Protect replaces only a DICOM's pixel data; restore writes the protected file's dataset back with
the original pixels. So that the restored file is the original file, the payload carries a
*header record* (docs/FORMAT.md, "Metadata record"): the SHA-256 of every data element but the
pixel data (the file meta group included, sequences whole), and one byte of each element's own
SHA-256, in the file's order. Restore refuses a file whose header no longer matches and names the
elements that changed, appeared or disappeared. The record is sealed with the pixels' SHA-256
(encrypted and authenticated under the key), so it cannot be rewritten to match an edited header.

PNG, TIFF and JPEG carry nothing restore reproduces besides the pixels (restore writes them with
medrae's own encoder), so their payload has no record.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import struct
from typing import Any, Optional

from medrae.kernels import PayloadError

from .imageio import Image

MAGIC = b"DCM1"
PIXEL_DATA = 0x7FE00010
_SHA = 32


class HeaderChangedError(PayloadError):
    """A protected DICOM's header is not the one protect authenticated; ``str()`` names the elements."""


def _elements(ds: Any) -> list[tuple[int, str, bytes]]:
    """(tag, name, canonical bytes) of every element but the pixel data: the file meta group, then
    the dataset, each element written as explicit VR little endian (sequences whole)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    out = []
    groups = [getattr(ds, "file_meta", None) or [], ds]
    for group in groups:
        for elem in group:
            if int(elem.tag) == PIXEL_DATA:
                continue
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, False
            try:
                write_data_element(fp, elem)
                data = fp.getvalue()
            except Exception as exc:  # noqa: BLE001 - an element pydicom cannot write still counts, by its repr
                data = f"{elem.VR}:{elem.value!r}:{type(exc).__name__}".encode()
            name = elem.keyword or elem.name or ""
            out.append((int(elem.tag), f"({int(elem.tag) >> 16:04X},{int(elem.tag) & 0xFFFF:04X}) {name}".rstrip(), data))
    return out


def record(image: Image) -> bytes:
    """The header record of ``image`` as restore will read it back (b"" for PNG, TIFF, JPEG).
    Computed on the dataset written and read once, as protect writes it, so that the protected
    file's header gives the same record."""
    if image.kind != "dicom" or image.dataset is None:  # no header to write back (e.g. pixels in memory)
        return b""
    return _record(_as_written(image))


def _as_written(image: Image) -> Any:
    from pydicom import dcmread

    from .imageio import encode_image

    return dcmread(io.BytesIO(encode_image(image, image.pixels)), force=True)


def _digests(elems: list[tuple[int, str, bytes]]) -> tuple[bytes, bytes]:
    """The SHA-256 over all ``elems`` and one byte of each element's own SHA-256."""
    whole = hashlib.sha256()
    for tag, _, data in elems:
        whole.update(struct.pack("<I", tag) + struct.pack("<I", len(data)) + data)
    return whole.digest(), bytes(hashlib.sha256(data).digest()[0] for _, _, data in elems)


def _record(ds: Any) -> bytes:
    elems = _elements(ds)
    whole, per = _digests(elems)
    return MAGIC + whole + struct.pack(">I", len(elems)) + per


def _parse(rec: bytes) -> tuple[bytes, bytes]:
    if len(rec) < 4 + _SHA + 4 or rec[:4] != MAGIC:
        raise PayloadError("the payload's header record is not a DICOM record")
    n = struct.unpack(">I", rec[4 + _SHA : 8 + _SHA])[0]
    per = rec[8 + _SHA :]
    if len(per) != n:
        raise PayloadError("the payload's header record is truncated")
    return rec[4 : 4 + _SHA], per


def changes(ds: Any, rec: bytes) -> Optional[str]:
    """None when ``ds``'s header is the one ``rec`` records, else what changed, in one line."""
    whole, per = _parse(rec)
    elems = _elements(ds)
    now, mine = _digests(elems)
    if now == whole:
        return None
    named: list[str] = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=list(per), b=list(mine), autojunk=False).get_opcodes():
        if op == "replace" and a1 - a0 == b1 - b0:
            named += [f"{elems[j][1]} changed" for j in range(b0, b1)]
        elif op in ("replace", "insert"):
            named += [f"{elems[j][1]} added or changed" for j in range(b0, b1)]
            if op == "replace":
                named.append(f"{a1 - a0} element(s) removed or changed before {elems[b1][1] if b1 < len(elems) else 'the end'}")
        elif op == "delete":
            named.append(f"{a1 - a0} element(s) removed before {elems[b0][1] if b0 < len(elems) else 'the end'}")
    what = "; ".join(named) if named else "an element changed (which one, its one-byte digest does not tell)"
    return f"DICOM header changed since protect: {what}"


def check(image: Image, rec: bytes) -> None:
    """Raise :class:`HeaderChangedError` when the protected ``image``'s header is not the one ``rec``
    (from its payload) authenticates. A DICOM protected before headers were authenticated has no
    record and is not checked (docs/FORMAT.md)."""
    if image.kind != "dicom" or not rec:
        return
    if image.dataset is None:
        raise HeaderChangedError("the payload authenticates a DICOM header, and this image has none")
    why = changes(image.dataset, rec)
    if why:
        raise HeaderChangedError(why)


def same_header(original: Image, rec: bytes) -> Optional[str]:
    """For verify: None when the ``original`` file's header is the one ``rec`` records, else why not."""
    if original.kind != "dicom" or not rec:
        return None
    why = changes(_as_written(original), rec)
    return None if why is None else why.replace("changed since protect", "of the original differs from the protected file's")
