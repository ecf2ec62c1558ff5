"""Registries by decorator, with a listing (timm's ``_registry.py`` idea).

One ``Registry`` per kind of pluggable piece: backbone families, heads, task models, exporters.
A name maps to a class; looking up an unknown name is a ``ValueError`` that names the config key,
the closest registered names and all of them.

Example:
    >>> HEADS = Registry("head", "config['head']['type']")
    >>> @HEADS.register("linear")
    ... class LinearHead(nn.Module): ...
    >>> HEADS.names()
    ['linear']
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> class.

    Args:
        kind: What is registered, for messages (``"head"``, ``"backbone family"``).
        config_key: Where a name comes from, for messages (``"config['head']['type']"``).
        hint: Added to the unknown-name message (e.g. how to upgrade).
    """

    def __init__(self, kind: str, config_key: str, hint: str = "") -> None:
        self.kind, self.config_key, self.hint = kind, config_key, hint
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, set_name: bool = True) -> Callable[[T], T]:
        """Class decorator registering under ``name`` (and setting ``cls.name`` to it).

        Raises:
            ValueError: Another class is already registered under ``name``.
        """

        def wrap(cls: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not cls and (
                    getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)
            ) != (getattr(cls, "__module__", None), getattr(cls, "__qualname__", None)):
                raise ValueError(f"The {self.kind} name {name!r} is already registered by "
                                 f"{existing.__module__}.{existing.__qualname__}; pick another.")
            if set_name:
                cls.name = name
            self._entries[name] = cls
            return cls

        return wrap

    def names(self, filter: str = "") -> list[str]:  # noqa: A002 - timm's name
        """Registered names, sorted; ``filter`` is an fnmatch pattern."""
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatchcase(n, filter)] if filter else names

    def get(self, name: str) -> T:
        """The class registered under ``name``.

        Raises:
            ValueError: ``name`` is not registered (with the closest names and all of them).
        """
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.8)
        close = close or difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        did_you_mean = f" Did you mean {close}?" if close else ""
        raise ValueError(f"{self.config_key} = {name!r} is not a registered {self.kind}."
                         f"{did_you_mean} Registered: {self.names()}.{self.hint}")

    def name_of(self, cls: T) -> str | None:
        """The name ``cls`` is registered under, or None."""
        return next((key for key, value in self._entries.items() if value is cls), None)

    def values(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
