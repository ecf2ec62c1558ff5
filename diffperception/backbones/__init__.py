"""Backbone families: how a kind of diffusers model is loaded, conditioned, cut and run.

One file per family behind the protocol of ``base.py``, registered by decorator
(``register_family``); ``family_for_folder`` picks the family from the network class named in a
diffusers folder. U-Net code shared by ``sd`` and ``pixel`` lives in ``unet.py``.
"""

from __future__ import annotations

from .base import (
    BackboneFamily,
    family_for_folder,
    get_family,
    list_families,
    network_classes,
    register_family,
)

__all__ = ["BackboneFamily", "register_family", "get_family", "list_families",
           "family_for_folder", "network_classes"]

from . import dit, pixel, sd  # noqa: E402,F401  (registration)
