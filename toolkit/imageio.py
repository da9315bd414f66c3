"""Read and write the images medrae protects: PNG, TIFF, JPEG (read only) and DICOM.

Every reader returns an :class:`Image`: 2-D ``uint8``/``uint16`` pixels, the largest value they may
take (``ceiling``: 255, 65535, or ``2**BitsStored - 1`` for DICOM) and what is needed to write the
same kind of file back. Every failure is an :class:`ImageError` naming the file and the reason.
Outputs are always lossless: PNG for PNG and JPEG inputs, TIFF (deflate) for TIFF, DICOM for DICOM
with only the pixel data replaced.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrae.kernels.rdh import MIN_SIDE, SIDE_BITS

from ._quiet import quiet_stderr

MAX_PIXELS = 100_000_000  # declared sizes above this are refused before decoding (decompression bombs)
RASTER_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


class ImageError(Exception):
    """A file that cannot be read or written as a medrae image; ``str()`` is one line."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Image:
    """Pixels plus what is needed to write them back as the same kind of file."""

    pixels: np.ndarray
    ceiling: int
    kind: str  # png | tiff | jpeg | dicom
    monochrome1: bool = False  # DICOM: high values are dark; networks see the inverted view
    dataset: Any = field(default=None, repr=False)  # pydicom Dataset for DICOM

    @property
    def kernel_ceiling(self) -> int | None:
        """The ``ceiling`` argument of the kernels: None when it is the dtype's own maximum."""
        return None if self.ceiling == np.iinfo(self.pixels.dtype).max else self.ceiling


def is_dicom(path: Path) -> bool:
    """DICOM by suffix or by the ``DICM`` magic at byte 128 (DICOM files often have no suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_image_path(path: Path) -> bool:
    """Files a directory walk picks up: known image suffixes and suffix-less DICOM."""
    return path.suffix.lower() in RASTER_SUFFIXES or path.suffix.lower() in DICOM_SUFFIXES or (not path.suffix and is_dicom(path))


def _check_size(path: Path, h: int, w: int) -> None:
    if h * w > MAX_PIXELS:
        raise ImageError(path, f"declared size {w}x{h} exceeds the limit of {MAX_PIXELS:,} pixels")
    if min(h, w) < MIN_SIDE or 2 * (h + w) - 4 < SIDE_BITS:
        raise ImageError(path, f"image {w}x{h} is too small to carry a payload (both sides >= {MIN_SIDE}, at least 35x35)")


def read_image(path: Path | str) -> Image:
    """Read a grayscale image (PNG/TIFF/JPEG 8 or 16 bit, RGB with equal channels, or DICOM)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if is_dicom(path):
        return _read_dicom(path)
    return _read_raster(path)


def _read_raster(path: Path) -> Image:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": a bad file gets one ImageError line, not warnings
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                fmt = (im.format or "").upper()
                if fmt not in ("PNG", "TIFF", "JPEG", "MPO"):
                    raise ImageError(path, f"unsupported image format {fmt or 'unknown'} (PNG, TIFF, JPEG or DICOM)")
                w, h = im.size
                _check_size(path, h, w)
                if getattr(im, "n_frames", 1) > 1:
                    raise ImageError(path, f"{im.n_frames} frames; medrae protects single-frame images")
                im.load()
                mode = im.mode
                arr = np.array(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not a PNG, TIFF, JPEG or DICOM image (unrecognised content)") from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImageError(path, f"declared size exceeds the limit ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on garbage (TypeError, KeyError, struct.error...)
        raise ImageError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
    kind = {"PNG": "png", "TIFF": "tiff", "JPEG": "jpeg", "MPO": "jpeg"}[fmt]
    pixels = _grayscale(path, arr, mode)
    return Image(pixels, 255 if pixels.dtype == np.uint8 else 65535, kind)


def _grayscale(path: Path, arr: np.ndarray, mode: str) -> np.ndarray:
    """PIL array → 2-D uint8/uint16, or ImageError."""
    if mode == "L":
        return arr.astype(np.uint8, copy=False)
    if mode.startswith("I;16") or mode == "I":
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(path, f"{mode} pixels outside 0..65535; medrae handles 8- and 16-bit images")
        return arr.astype(np.uint16)
    if mode in ("RGB", "RGBA", "LA"):
        if mode in ("RGBA", "LA") and (arr[..., -1] != 255).any():
            raise ImageError(path, f"{mode} image with transparency; medrae handles opaque grayscale images")
        chans = arr[..., :3] if mode != "LA" else arr[..., :1]
        if not (chans == chans[..., :1]).all():
            raise ImageError(path, "colour image (RGB channels differ); medrae handles grayscale images only")
        return np.ascontiguousarray(chans[..., 0]).astype(np.uint8, copy=False)
    raise ImageError(path, f"unsupported pixel mode {mode!r} (8/16-bit grayscale or gray-valued RGB)")


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def _transfer_syntax(ds: Any) -> str:
    """The dataset's transfer syntax UID (explicit VR little endian when the file meta has none)."""
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2.1"))


def _pixel_dtype(ds: Any, itemsize: int) -> str:
    """NumPy dtype string of the stored pixel words, in the file's byte order."""
    return f"{'>' if _transfer_syntax(ds) == _BIG_ENDIAN else '<'}u{itemsize}"


def _read_dicom(path: Path, source: Any = None) -> Image:
    """DICOM from ``path`` (or from the file object ``source``, named ``path`` in errors)."""
    try:
        return _parse_dicom(path, source)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or garbled element; pydicom raises many types
        raise ImageError(path, f"DICOM element missing or invalid ({type(exc).__name__}: {exc})") from None


def _parse_dicom(path: Path, source: Any = None) -> Image:
    try:
        import pydicom
    except ModuleNotFoundError:
        raise ImageError(path, "DICOM needs pydicom (pip install pydicom)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid VRs and the like: reported below if they matter
            ds = pydicom.dcmread(path if source is None else source)
    except Exception as exc:  # pydicom raises several types for bad files
        raise ImageError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise ImageError(path, "DICOM file has no pixel data")
    ts = _transfer_syntax(ds)
    if ts not in _UNCOMPRESSED:
        raise ImageError(path, f"compressed DICOM transfer syntax {ts} is not supported (decompress it first, e.g. with gdcmconv --raw)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(path, f"PhotometricInterpretation {photometric or 'missing'}; medrae handles MONOCHROME1/2")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageError(path, "multi-sample or multi-frame DICOM; medrae handles single-frame grayscale")
    if int(ds.get("PixelRepresentation", 0)) != 0:
        raise ImageError(path, "signed DICOM pixel data (PixelRepresentation 1) is not supported")
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if allocated not in (8, 16) or not 8 <= stored <= allocated:
        raise ImageError(path, f"BitsAllocated {allocated} / BitsStored {stored}: medrae handles 8-16 bit data")
    _check_size(path, int(ds.Rows), int(ds.Columns))
    try:
        raw = np.frombuffer(ds.PixelData, dtype=_pixel_dtype(ds, allocated // 8))
        pixels = raw[: int(ds.Rows) * int(ds.Columns)].reshape(int(ds.Rows), int(ds.Columns))
    except ValueError:
        raise ImageError(path, "pixel data is shorter than Rows x Columns") from None
    pixels = pixels.astype(np.uint8 if allocated == 8 else np.uint16)
    ceiling = (1 << stored) - 1
    if int(pixels.max()) > ceiling:
        raise ImageError(path, f"pixel value {int(pixels.max())} exceeds BitsStored={stored}")
    return Image(pixels, ceiling, "dicom", monochrome1=photometric == "MONOCHROME1", dataset=ds)


def encode_image(image: Image, pixels: np.ndarray) -> bytes:
    """The file bytes of ``image`` with ``pixels`` in place of its own (lossless)."""
    import io

    if pixels.shape != image.pixels.shape or pixels.dtype != image.pixels.dtype:
        raise ValueError(f"pixels {pixels.shape} {pixels.dtype} do not match the image {image.pixels.shape} {image.pixels.dtype}")
    buf = io.BytesIO()
    if image.kind == "dicom":
        ds = image.dataset.copy()
        ds.PixelData = pixels.astype(_pixel_dtype(ds, pixels.dtype.itemsize)).tobytes()
        ds.save_as(buf, enforce_file_format=False)
        return buf.getvalue()
    from PIL import Image as PILImage

    im = PILImage.fromarray(pixels)
    if image.kind == "tiff":
        im.save(buf, format="TIFF", compression="tiff_adobe_deflate")
    else:
        im.save(buf, format="PNG", compress_level=1)  # lossless; level 1 is ~5x faster than 6 here
    return buf.getvalue()


class OutputExists(ImageError):
    """The output is already there (another process may have finished it meanwhile)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_ELSEWHERE_S = 3600  # a temporary written on another host (shared filesystem) counts as abandoned after this


def _host() -> str:
    """This machine's name as it goes into temporary names (no dots: they separate the fields)."""
    import socket

    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname()) or "host"


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of ``path`` left by a process that no longer runs (killed mid-write). A
    temporary names its writer's pid and host: one of this host is stale when the pid is gone, one
    of another host (a cluster node on a shared filesystem) when it is older than an hour."""
    legacy = path.with_name(f".{path.name}.medrae-tmp")  # before temporaries carried a pid
    stale = [legacy] if legacy.exists() else []
    here = _host()
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.medrae-tmp"):
        fields = tmp.name[len(path.name) + 2 : -len(".medrae-tmp")].split(".")
        try:
            pid = int(fields[0])
        except ValueError:
            continue
        host = fields[1] if len(fields) == 3 else here  # pid.hex: written before temporaries named their host
        if host != here:
            try:
                if time.time() - tmp.stat().st_mtime > STALE_ELSEWHERE_S:
                    stale.append(tmp)
            except OSError:
                pass
        elif pid != os.getpid() and not _alive(pid):
            stale.append(tmp)
    return stale


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_atomic(path: Path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to a temporary name beside ``path`` (unique to this process), sync it, then
    give it its name: never a half-written file under the final name, whatever kills the process.

    Without ``overwrite`` the name is taken with ``os.link``, which fails if it exists, so two
    commands writing one output tree never replace each other's finished files (the second gets
    :class:`OutputExists`); with it, ``os.replace``. Temporaries of the same output left by a
    killed process are removed."""
    import errno
    import secrets

    if path.exists() and not overwrite:
        raise OutputExists(path, "output exists (use --overwrite to replace it)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_host()}.{secrets.token_hex(4)}.medrae-tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            # on disk before the name appears: after a crash an output either is complete or is
            # absent, never an empty file that a resumed batch would skip as done
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExists(path, "output exists (another process wrote it meanwhile)") from None
            except OSError as exc:  # a filesystem without hard links: rename (atomic, may replace a racing twin)
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.replace(tmp, path)
        _sync_dir(path.parent)
    except OSError as exc:
        raise ImageError(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        _remove(tmp)
    for stale in _stale_temporaries(path):
        _remove(stale)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. a read-only filesystem: nothing was written there either
        pass


def _sync_dir(directory: Path) -> None:
    """The rename itself on disk (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def decode_bytes(data: bytes, like: Image, name: str = "<memory>") -> Image:
    """Read back bytes produced by :func:`encode_image` (the check before a file is kept)."""
    import io

    if like.kind == "dicom":
        return _read_dicom(Path(name), io.BytesIO(data))
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        im.load()
        return Image(_grayscale(Path(name), np.array(im), im.mode), like.ceiling, like.kind)


def output_name(rel: Path) -> Path:
    """Output path relative to the output root: same tree and name; JPEG inputs become .png."""
    return rel.with_suffix(".png") if rel.suffix.lower() in (".jpg", ".jpeg") else rel
