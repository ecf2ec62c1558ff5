"""Lazy public names for a package (PEP 562): import a submodule when one of its names is used.

The kit uses it so that importing it stays light; the diffperception library uses the same
helper for its own package ``__init__`` files (the kit never imports the library).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for ``package``.

    Args:
        package: The package's ``__name__``.
        table: Public name -> the (relative) submodule that defines it, e.g.
            ``{"OnnxRunner": ".run"}``.

    Returns:
        ``(__getattr__, __dir__, __all__)`` to assign in the package's ``__init__``.

    A public name must not also be a submodule's name: once the submodule is imported, the
    package attribute is the module.

    Example:
        >>> __getattr__, __dir__, __all__ = attach(__name__, {"OnnxRunner": ".run"})
    """
    names = sorted(table)

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name], package), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__, names
