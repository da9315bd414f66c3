"""medrae models: PyTorch definitions and training (the optional ``train`` extra).

Architectures register themselves in :data:`ARCHITECTURES`; build one with :func:`create`.
"""
from .registry import ARCHITECTURES, create, register  # noqa: F401
from . import advgan, classifiers, unet  # noqa: F401,E402  (registration side effects)
