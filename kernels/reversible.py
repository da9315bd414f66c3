"""Reversible adversarial examples at the array level: the part of protect/restore with no network.

``protect_array`` turns (original, adversarial) into a marked image that carries its own undo;
``restore_array`` gives the original back bit for bit or raises. The toolkit adds models and IO.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import codecs, container, rdh
from .errors import PayloadError


@dataclass(frozen=True)
class ProtectInfo:
    """What protection cost, for reports."""

    payload_bits: int
    coded_bits: int
    codec: str
    method: str
    passes: int


def applied_perturbation(original: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """``adversarial - original`` as int32, after checking the two images match in shape and dtype."""
    rdh.check_image(original, "original")
    rdh.check_image(adversarial, "adversarial")
    if original.shape != adversarial.shape or original.dtype != adversarial.dtype:
        raise ValueError(
            f"original {original.shape} {original.dtype} and adversarial {adversarial.shape} "
            f"{adversarial.dtype} must match"
        )
    return adversarial.astype(np.int32) - original.astype(np.int32)


def protect_array(
    original: np.ndarray,
    adversarial: np.ndarray,
    key: Optional[bytes],
    *,
    eps: int,
    codec: Optional[str] = None,
    method: Optional[str] = None,
    ceiling: Optional[int] = None,
    check: bool = True,
    frozen: Optional[np.ndarray] = None,
    open_first: bool = False,
    band: int = 0,
    metadata: bytes = b"",
    level: int = 0,
    **hints,
) -> tuple[np.ndarray, ProtectInfo]:
    """Embed the exact applied perturbation into the adversarial image, encrypted under ``key``.

    Parameters
    ----------
    original, adversarial : np.ndarray
        2-D ``uint8``/``uint16`` images of one shape; ``|adversarial - original| <= eps``.
    key : bytes or None
        32-byte AES-256 key; None for the keyless (plaintext) mode.
    eps : int
        Perturbation bound in pixel units, recorded in the payload and checked here.
    codec, method : str, optional
        Perturbation codec and RDH method (defaults: ``auto`` and ``pee``).
    ceiling : int, optional
        Largest value a pixel may take, ``2**b - 1`` (default: the dtype's); restore needs it too.
    check : bool
        Restore the result and compare with ``original`` before returning (default). Turn off only
        when the caller runs that check itself on what it stores (the batch pipeline restores the
        encoded file bytes).
    frozen : np.ndarray, optional
        ``bool`` mask of pixels the hiding must leave bit-exact (the ROI; see :func:`kernels.embed`).
    open_first : bool
        With ``frozen``: the first group of passes may use the region too, at most one level per
        pixel there (:func:`kernels.embed`).
    band : int
        With ``frozen``: blocks around it that only the first group of passes may use, one level
        at most there (:func:`kernels.embed`).
    metadata : bytes
        A record authenticated (and encrypted) with the pixels, returned by
        :func:`restore_with_metadata` (protect: the digests of a DICOM header).
    level : int
        The strength level's id (1..255), recorded in the public header for ``medrae info``; 0: none.
    **hints
        Passed to the codec (e.g. ``grid=``, ``factor=``, ``mode=`` for the coarse-grid codec).

    Returns
    -------
    marked : np.ndarray
        The protected image; it has been restored and checked against ``original`` here.
    info : ProtectInfo

    Raises
    ------
    CapacityError
        The payload does not fit; nothing is produced.
    """
    diff = applied_perturbation(original, adversarial)
    rdh.value_ceiling(original, ceiling, "original")
    rdh.value_ceiling(adversarial, ceiling, "adversarial")
    if np.abs(diff).max(initial=0) > eps:
        raise ValueError(f"perturbation exceeds eps={eps}: max |delta| = {int(np.abs(diff).max())}")
    coded = codecs.encode_perturbation(diff, codec, **hints)
    m = rdh.RDH_METHODS.get(rdh.DEFAULT_METHOD if method is None else method)
    payload = container.seal(
        coded,
        container.pixel_digest(original),
        shape=original.shape,
        dtype=original.dtype,
        eps=eps,
        codec_id=coded[0],
        rdh_id=m.id,
        key=key,
        metadata=metadata,
        level=level,
    )
    marked, passes = rdh.embed_counted(adversarial, payload, m.name, ceiling, frozen, open_first, band)
    if check and not np.array_equal(restore_array(marked, key, ceiling), original):  # never keep an unchecked result
        raise PayloadError("internal error: protected image does not restore to the original")
    return marked, ProtectInfo(8 * len(payload), 8 * len(coded), codecs.codec_name(coded), m.name, passes)


def restore_array(marked: np.ndarray, key: Optional[bytes], ceiling: Optional[int] = None, allow_keyless: bool = False) -> np.ndarray:
    """The original image, bit for bit, from a protected one (``ceiling`` as given to protect); see
    :func:`restore_with_metadata`, which also returns the authenticated metadata record."""
    return restore_with_metadata(marked, key, ceiling, allow_keyless)[0]


def restore_with_metadata(marked: np.ndarray, key: Optional[bytes], ceiling: Optional[int] = None,
                          allow_keyless: bool = False) -> tuple[np.ndarray, bytes]:
    """The original image, bit for bit, from a protected one (``ceiling`` as given to protect).
    ``allow_keyless``: restore a keyless (``--no-encrypt``) image although a ``key`` was given.

    Raises
    ------
    NotProtectedError, KeyMismatchError, KeylessError, PayloadError
        Not protected; wrong or missing key; a key given for a keyless image; corrupt or tampered
        (the pixel SHA-256 is checked).
    """
    adversarial, payload, method = rdh.extract_with_method(marked, ceiling=ceiling)
    opened = container.open_payload(payload, key, allow_keyless)
    hdr, digest, coded = opened.header, opened.digest, opened.coded
    if rdh.RDH_METHODS.get(method).id != hdr.rdh_id:
        raise PayloadError(f"payload names RDH id {hdr.rdh_id} but the image was marked with {method!r}")
    if hdr.shape != marked.shape or hdr.dtype != marked.dtype:
        raise PayloadError(f"payload is for a {hdr.shape} {hdr.dtype} image, not {marked.shape} {marked.dtype}")
    if not coded or coded[0] != hdr.codec_id:
        raise PayloadError("payload codec id does not match its header")
    diff = codecs.decode_perturbation(coded)
    if diff.shape != marked.shape:
        raise PayloadError(f"perturbation shape {diff.shape} does not match the image {marked.shape}")
    original = adversarial.astype(np.int32) - diff
    top = np.iinfo(marked.dtype).max if ceiling is None else ceiling
    if original.min() < 0 or original.max() > top:
        raise PayloadError("restored pixels leave the valid range")
    original = original.astype(marked.dtype)
    if container.pixel_digest(original) != digest:
        raise PayloadError("restored pixels do not match the SHA-256 stored in the payload")
    return original, opened.metadata


def inspect_array(marked: np.ndarray, ceiling: Optional[int] = None) -> dict:
    """Describe the payload of a protected image without a key (for ``medrae info``)."""
    _, payload = rdh.extract(marked, ceiling)
    hdr = container.read_header(payload)
    bounds = rdh.hiding_bounds(marked)
    return {
        "format_version": hdr.version,
        "encrypted": hdr.encrypted,
        "metadata_record": hdr.has_metadata,
        "codec": codecs.CODECS.by_id(hdr.codec_id).name if codecs.CODECS.has_id(hdr.codec_id) else f"id {hdr.codec_id}",
        "rdh_method": rdh.RDH_METHODS.by_id(hdr.rdh_id).name if rdh.RDH_METHODS.has_id(hdr.rdh_id) else f"id {hdr.rdh_id}",
        "shape": list(hdr.shape),
        "dtype": str(hdr.dtype),
        "eps": hdr.eps,
        "level": hdr.level,  # the strength level protect recorded (0: none)
        "payload_bits": 8 * len(payload),
        "rdh_passes": bounds["passes"],
        # share of the pixels the hiding kept out of (protect: the blocks around the lungs)
        "rdh_frozen_fraction": round(bounds["frozen_fraction"], 4),
        # largest change the hiding made there (native units; None: the hiding had no such region)
        "rdh_roi_max_change": bounds["region_max_change"],
        # the band around that region (protect: where a segmenter's misses lie) and the largest change there
        "rdh_band_fraction": round(bounds["band_fraction"], 4),
        "rdh_band_max_change": bounds["band_max_change"],
        "rdh_max_change": bounds["max_change"],
    }
