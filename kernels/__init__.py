"""medrae bitstream stage: reversible data hiding, perturbation codecs and the payload container.

Public API (other parts of medrae build on these names)::

    kernels.capacity(image, method=None) -> int                  # payload bits that fit
    kernels.embed(image, payload, method=None, frozen=None) -> marked  # raises CapacityError
    kernels.extract(marked) -> (image, payload)                  # exact inverse
    kernels.encode_perturbation(p, codec=None, **hints) -> bytes
    kernels.decode_perturbation(data) -> np.ndarray
    kernels.protect_array(original, adversarial, key, eps=...) -> (marked, info)
    kernels.restore_array(marked, key) -> original
"""
from .codecs import CODECS, decode_perturbation, encode_perturbation
from .container import KEY_BYTES, key_check_value, pixel_digest, read_header, seal, unseal
from .errors import CapacityError, KeylessError, KeyMismatchError, MedraeError, NotProtectedError, PayloadError
from .rdh import MIN_SIDE, RDH_METHODS, SIDE_BITS, band_region, capacity, embed, extract, frozen_region, hiding_bounds
from .resample import downsample, grid_shape, upsample
from .reversible import ProtectInfo, inspect_array, protect_array, restore_array, restore_with_metadata

__all__ = [
    "CODECS", "RDH_METHODS", "KEY_BYTES", "MIN_SIDE", "SIDE_BITS",
    "capacity", "embed", "extract", "frozen_region", "band_region", "hiding_bounds", "encode_perturbation", "decode_perturbation",
    "protect_array", "restore_array", "restore_with_metadata", "inspect_array", "ProtectInfo",
    "seal", "unseal", "read_header", "pixel_digest", "key_check_value",
    "upsample", "downsample", "grid_shape",
    "MedraeError", "CapacityError", "KeyMismatchError", "KeylessError", "NotProtectedError", "PayloadError",
]
