"""One small registry type for models, datasets, criteria and anything else chosen by name.

Unknown names raise ``ValueError`` naming the closest valid name and listing the valid ones (the
message of :mod:`prunelab.validate`), so the CLI can print a single helpful line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from prunelab.validate import check_name, unknown_name_message

__all__ = ["Factory", "Registry", "check_name", "unknown_name_message"]

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> object, plus free-form metadata per name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any):
        """``reg.register("x", f)`` or as a decorator ``@reg.register("x", key=value)``."""

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its object (a test's own entry, after the test)."""
        obj = self.get(name)
        del self._items[name], self._meta[name]
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(unknown_name_message(self.kind, name, list(self._items))) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


Factory = Callable[..., Any]
