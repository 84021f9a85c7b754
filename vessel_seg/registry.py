"""Name -> implementation tables for the parts users extend: losses, networks, normalisation schemes, planner
presets and trainer variants.

Each table is a :class:`Registry`. Adding a part is one file with one registration (a decorator or a call),
imported by the package for built-in parts or named in ``VS_PLUGINS`` (:mod:`vessel_seg.plugins`) for a
user's; nothing else changes. The same idea as MONAI's factories, without their string-parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of ``T`` that refuses silent overwrites and names the registered entries in its errors.

    Parameters
    ----------
    kind : str
        What the entries are ("loss", "network"...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace_existing: bool = False) -> T:
        """Register ``entry`` as ``name`` (letters, digits, ``_`` and ``-``); ``ValueError`` for a taken name."""
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a {self.kind} name is letters, digits, '_' and '-', got {name!r}")
        if name in self._entries and not replace_existing:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, *, replace_existing: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")`` above a function or class."""

        def decorate(entry: T) -> T:
            return self.add(name, entry, replace_existing=replace_existing)

        return decorate

    def get(self, name: str) -> T:
        """The entry ``name``; ``ValueError`` naming every registered entry otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}: use one of {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and plugins that register temporarily)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
