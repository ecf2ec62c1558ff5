"""Backbone families: how a kind of diffusers model is checked, conditioned and encoded.

One file per family, registered by decorator (``register_family``); ``family_for_unet`` picks the
family from the U-Net class named in ``unet/config.json``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["register_family", "get_family", "list_families", "family_for_unet"]

_FAMILIES: dict[str, Any] = {}


def register_family(name: str):
    """Class decorator registering a backbone family under ``name``."""

    def wrap(cls):
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return wrap


def list_families() -> list[str]:
    """Names of the registered backbone families."""
    return sorted(_FAMILIES)


def get_family(name: str):
    """The family class registered under ``name``."""
    if name not in _FAMILIES:
        raise ValueError(f"Unknown backbone family {name!r}; registered: {list_families()}.")
    return _FAMILIES[name]


def family_for_unet(unet_class: str):
    """The family whose U-Net class is ``unet_class``."""
    for cls in _FAMILIES.values():
        if cls.unet_class == unet_class:
            return cls
    raise ValueError(f"No backbone family handles a {unet_class}; families: {list_families()}.")


from . import pixel, sd  # noqa: E402,F401  (registration)
