"""Task heads: one per file, registered by name, built from ``feature_info`` and their config.

A head config is ``{"type": <registered name>, **the head's __init__ arguments}``; ``build_head``
checks the arguments against the head's signature and builds it from the backbone's
``feature_info``. ``forward({tap: tensor}, labels=None)`` returns a ``HeadOutput``.

Example:
    >>> list_heads()
    ['attention', 'diffeed', 'difformer', 'identity', 'linear']
    >>> head = build_head({"type": "linear", "pool": 2}, backbone.feature_info, num_labels=10)
"""

from __future__ import annotations

from .base import Head, HeadOutput, build_head, get_head_class, list_heads, register_head

__all__ = ["Head", "HeadOutput", "build_head", "get_head_class", "list_heads", "register_head"]

from . import (  # noqa: E402,F401  (registration)
    attention, correspondence, cross_attention_score, diffeed, difformer, identity, linear,
    segmentation, upernet, vermouth)
