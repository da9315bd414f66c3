"""A tiny timm-style registry for interchangeable parts (RDH methods, perturbation codecs)."""
from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object map with a numeric id for the on-disk formats."""

    def __init__(self, kind: str):
        self.kind = kind
        self._by_name: Dict[str, T] = {}
        self._by_id: Dict[int, T] = {}

    def register(self, obj: T) -> T:
        name, ident = obj.name, obj.id  # type: ignore[attr-defined]
        if name in self._by_name or ident in self._by_id:
            raise ValueError(f"{self.kind} {name!r} (id {ident}) registered twice")
        self._by_name[name] = obj
        self._by_id[ident] = obj
        return obj

    def get(self, name: str) -> T:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._by_name)}") from None

    def by_id(self, ident: int) -> T:
        return self._by_id[ident]

    def has_id(self, ident: int) -> bool:
        return ident in self._by_id

    def names(self) -> list[str]:
        return sorted(self._by_name)


def register(registry: Registry) -> Callable[[type], type]:
    """Class decorator: instantiate the class and add the instance to ``registry``."""

    def deco(cls: type) -> type:
        registry.register(cls())
        return cls

    return deco
