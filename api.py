"""medrae's public Python API: protect, restore and verify images in memory or on disk.

Everything here is re-exported by the package (``medrae.protect`` is :func:`protect`). Arrays are
2-D grayscale ``uint8`` or ``uint16`` of any size (both sides >= 35), exactly as the command line
takes them; files are PNG, TIFF, JPEG (written back as PNG) or DICOM. Errors are typed:

* :class:`ProtectError` (a :class:`MedraeError`): the image cannot be protected (its payload does
  not fit, quality control refused its lung mask, it already carries a payload); ``.result`` has
  the details.
* :class:`KeyMismatchError`, :class:`KeylessError`, :class:`PayloadError` (damaged or tampered;
  :class:`HeaderChangedError` for an edited DICOM header), :class:`NotProtectedError`: restore
  refused the image. Restore never returns pixels the payload does not authenticate.
* :class:`ImageError`: a file that cannot be read or written; :class:`KeyFileError`: a bad key
  file; :class:`ModelsError`: a missing or unloadable model; ``TypeError`` / ``ValueError``: a bad
  argument (the message names the shape or dtype).
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .kernels.rdh import value_ceiling
from .kernels import KEY_BYTES, CapacityError, KeylessError, KeyMismatchError, MedraeError, NotProtectedError, PayloadError, inspect_array, restore_array
from .toolkit.imageio import Image, ImageError, OutputExists, encode_image, read_image, write_atomic
from .toolkit.headers import HeaderChangedError
from .toolkit.keys import KeyFileError, load_key as _load_key_file
from .toolkit.ort import ModelsError
from .toolkit.settings import ProtectSettings

__all__ = ["protect", "restore", "verify", "inspect", "protect_file", "restore_file", "verify_file", "new_key", "load_key",
           "Protected", "ProtectSettings", "ProtectError", "MedraeError", "CapacityError", "KeyMismatchError", "NotProtectedError",
           "KeylessError", "PayloadError", "HeaderChangedError", "ImageError", "KeyFileError", "ModelsError"]

class ProtectError(MedraeError):
    """An image that could not be protected; ``str()`` is the reason, ``result`` the full report."""

    def __init__(self, reason: str, result: Optional[dict] = None):
        super().__init__(reason)
        self.reason, self.result = reason, result or {}


@dataclass(frozen=True)
class Protected:
    """A protected image and what protect measured on it.

    Attributes
    ----------
    pixels : numpy.ndarray
        The protected image: same shape and dtype as the input, restorable with the key.
    report : dict
        Per-image report, the fields of ``medrae protect --report`` (``payload_bits``, ``psnr``,
        ``roi_fraction``, ``roi_max_change``, ``white_box_margin`` (< 0: the white-box classifier
        is fooled), ``roi_flags``, ...).
    """

    pixels: np.ndarray
    report: dict

    @property
    def psnr(self) -> float:
        """PSNR of the protected image against the original, dB (``data_range``: the image's ceiling)."""
        return float(self.report["psnr"])

    @property
    def fooled(self) -> Optional[bool]:
        """Whether the white-box classifier is fooled on the 224x224 view (None: not refined)."""
        m = self.report.get("white_box_margin")
        return None if m is None else bool(m < 0)


def new_key() -> bytes:
    """A new random 256-bit key (32 bytes). Keep it secret: it restores every image protected with it.
    ``medrae keygen FILE`` writes one to a file; :func:`load_key` reads it."""
    return secrets.token_bytes(KEY_BYTES)


def load_key(path: Optional[str | Path] = None) -> bytes:
    """The key in ``path`` (a ``medrae keygen`` file), or in ``$MEDRAE_KEY_FILE`` when ``path`` is None.

    Raises
    ------
    KeyFileError
        The file is missing, unreadable or not a medrae key.
    """
    return _load_key_file(path)


def _as_image(pixels: Any, ceiling: Optional[int], name: str) -> Image:
    """``pixels`` as an :class:`Image` protect and restore take; the kernels' own checks name a bad
    type, dtype, shape or ceiling."""
    ceiling = value_ceiling(pixels, ceiling, name)
    return Image(np.ascontiguousarray(pixels), ceiling, "png")


@lru_cache(maxsize=4)
def _protector(settings: ProtectSettings):
    return settings.protector()  # ONNX Runtime sessions, loaded once per settings


def _settings(settings: Optional[ProtectSettings], options: dict) -> ProtectSettings:
    if settings is not None and not isinstance(settings, ProtectSettings):
        raise TypeError(f"settings: expected medrae.ProtectSettings, got {type(settings).__name__}")
    return replace(settings or ProtectSettings(with_ssim=True), **options)


def protect(pixels: np.ndarray, key: Optional[bytes], settings: Optional[ProtectSettings] = None, *, ceiling: Optional[int] = None,
            **options: Any) -> Protected:
    """Protect one image: an adversarial perturbation outside the lungs, its exact undo hidden in the pixels.

    Parameters
    ----------
    pixels : numpy.ndarray
        2-D ``uint8`` or ``uint16`` grayscale image of any size (both sides >= 35). A deeper image
        is seen through its own range (``medrae protect`` uses a DICOM's window where it has one).
    key : bytes or None
        32-byte key (:func:`new_key`, :func:`load_key`). ``None``: the paper's keyless mode, which
        anyone with medrae can restore.
    settings : ProtectSettings, optional
        The protect options (``medrae protect``'s: ``strength`` ("standard" or "strong"), ``eps``, ``refine_steps``, ``models``, ...).
    ceiling : int, optional
        Largest value a pixel may take (e.g. 4095 for 12-bit data in ``uint16``); default the dtype's maximum.
    **options
        Field overrides of ``settings``, e.g. ``strength="strong"`` or ``eps=4``.

    Returns
    -------
    Protected
        ``.pixels`` (same shape and dtype, checked to restore to ``pixels``) and ``.report``.

    Raises
    ------
    ProtectError
        The payload does not fit, quality control refused the lung mask, or the image is already protected.
    ModelsError
        A shipped or ``models`` network is missing or cannot be loaded.
    """
    from .toolkit.filework import protect_image

    image = _as_image(pixels, ceiling, "pixels")
    if key is not None and len(key) != KEY_BYTES:
        raise ValueError(f"key: expected {KEY_BYTES} bytes, got {len(key)}")
    s = _settings(settings, options)
    result, marked = protect_image(_protector(s), image, key, s)
    report = {k: v for k, v in asdict(result).items() if k not in ("input", "output", "node")}
    if marked is None:
        raise ProtectError(result.reason or "not protected", report)
    return Protected(marked, report)


def restore(pixels: np.ndarray, key: Optional[bytes], *, ceiling: Optional[int] = None, allow_keyless: bool = False) -> np.ndarray:
    """The original image, bit for bit, from a protected one (no neural network runs).

    Parameters
    ----------
    pixels : numpy.ndarray
        A protected image as :func:`protect` returned it (or as read from a protected file).
    key : bytes or None
        The key it was protected with (None for a keyless image).
    ceiling : int, optional
        The ceiling it was protected with (default the dtype's maximum).
    allow_keyless : bool
        With a ``key``, also restore a keyless image (``key=None`` at protect), which anyone with
        medrae could have made; refused by default (:class:`KeylessError`).

    Returns
    -------
    numpy.ndarray
        The original pixels; their SHA-256, stored in the payload, is checked.

    Raises
    ------
    NotProtectedError, KeyMismatchError, KeylessError, PayloadError
        No medrae payload; a key other than the one it was protected with; a key given for a
        keyless image; damaged or tampered.
    """
    image = _as_image(pixels, ceiling, "pixels")
    return restore_array(image.pixels, key, image.kernel_ceiling, allow_keyless)


def verify(original: np.ndarray, protected: np.ndarray, key: Optional[bytes], *, ceiling: Optional[int] = None,
           allow_keyless: bool = False) -> bool:
    """True when ``protected`` restores, with ``key``, to exactly ``original`` (same shape, dtype and pixels).

    Raises what :func:`restore` raises when ``protected`` cannot be restored at all.
    """
    back = restore(protected, key, ceiling=ceiling, allow_keyless=allow_keyless)
    return back.shape == original.shape and back.dtype == original.dtype and bool(np.array_equal(back, original))


def inspect(pixels: np.ndarray, *, ceiling: Optional[int] = None) -> dict:
    """What a protected image carries (format version, RDH method, codec, payload bits, encrypted,
    the share the hiding kept out of, ...); no key needed. Raises :class:`NotProtectedError`."""
    image = _as_image(pixels, ceiling, "pixels")
    return inspect_array(image.pixels, image.kernel_ceiling)


def protect_file(src: str | Path, dst: str | Path, key: Optional[bytes], settings: Optional[ProtectSettings] = None, *,
                 overwrite: bool = False, **options: Any) -> dict:
    """Protect one image file into ``dst`` exactly as ``medrae protect SRC DST`` does (the file is
    written only once its encoded bytes are checked to restore). Returns the file's report.

    Raises
    ------
    ProtectError
        It could not be protected (``str()`` is the reason), or ``dst`` exists and not ``overwrite``.
    """
    from .toolkit.batch import protect_paths

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ImageError(src, "no such file")
    rep = protect_paths(src, dst, key, _settings(settings, options), workers=1, overwrite=overwrite)
    (result,) = rep.results
    if result.status != "protected":
        raise ProtectError(result.reason or result.status, asdict(result))
    return asdict(result)


def restore_file(src: str | Path, dst: str | Path, key: Optional[bytes], *, overwrite: bool = False, allow_keyless: bool = False) -> Path:
    """Restore a protected file into ``dst`` (same format; a DICOM keeps every other element).
    The pixels are the original's bit for bit; see README "What is identical after restore" for the bytes.

    Raises
    ------
    ImageError, NotProtectedError, KeyMismatchError, PayloadError
        Unreadable, not protected, wrong key, damaged or tampered; ``dst`` is not written.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ImageError(dst, "output is the input; medrae never overwrites an input")
    from .toolkit.filework import restore_image

    image = read_image(src)
    original, _ = restore_image(image, key, allow_keyless)  # a DICOM's header is authenticated too
    if dst.exists() and not overwrite:
        raise OutputExists(dst, "output exists (overwrite=True to replace it)")
    write_atomic(dst, encode_image(image, original), overwrite)
    return dst


def verify_file(original: str | Path, protected: str | Path, key: Optional[bytes], *, allow_keyless: bool = False) -> bool:
    """True when the protected file restores to exactly the pixels of the original file and, for
    a DICOM, the header it authenticates is the original's."""
    from .toolkit.filework import restore_image
    from .toolkit.headers import same_header

    ref, prot = read_image(original), read_image(protected)
    back, rec = restore_image(prot, key, allow_keyless)
    same = back.shape == ref.pixels.shape and back.dtype == ref.pixels.dtype and bool(np.array_equal(back, ref.pixels))
    return same and same_header(ref, rec) is None
