"""timm-style registry of model constructors."""
from __future__ import annotations

from typing import Callable, Dict

ARCHITECTURES: Dict[str, Callable] = {}


def register(fn: Callable) -> Callable:
    """Register a constructor under its function name."""
    if fn.__name__ in ARCHITECTURES:
        raise ValueError(f"architecture {fn.__name__!r} registered twice")
    ARCHITECTURES[fn.__name__] = fn
    return fn


def create(name: str, **kwargs):
    """Build a registered architecture by name."""
    try:
        return ARCHITECTURES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None
