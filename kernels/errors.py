"""Exceptions raised by the bitstream stage.

Every failure to protect or restore is one of these, never a wrong image.
"""


class MedraeError(Exception):
    """Base class of all medrae kernel errors."""


class CapacityError(MedraeError):
    """The payload does not fit into the image with the chosen RDH method.

    Attributes
    ----------
    needed_bits, capacity_bits : int
        Bits asked for and bits that fit (``capacity_bits`` may be an estimate).
    """

    def __init__(self, message: str, needed_bits: int = 0, capacity_bits: int = 0):
        super().__init__(message)
        self.needed_bits = int(needed_bits)
        self.capacity_bits = int(capacity_bits)


class NotProtectedError(MedraeError):
    """The image carries no medrae payload (or its side information is unreadable)."""


class PayloadError(MedraeError):
    """The payload is corrupt, truncated, tampered with or inconsistent with the image."""


class KeyMismatchError(MedraeError):
    """The payload was encrypted under a different key (or a key is missing)."""


class KeylessError(KeyMismatchError):
    """A key was given but the payload carries none (made with ``--no-encrypt``): anyone with
    medrae could have made it, so it authenticates nothing. Restore it only when asked to
    (``allow_keyless``)."""
