"""DifFormer: the Attention head over several taps and timesteps (S001 §3.2, Fig. 6b;
METHODS.md §1.4).

One tokenizer per tap, shared across timesteps; for each timestep the token sets of the taps are
concatenated in tap order behind the shared CLS token and run through the shared transformer;
the CLS outputs of the T timesteps are concatenated (``width * T``) and classified. The paper's
configuration, T = {90, 150, 300} and B = {19, 24, 30} on ADM-256 at 256 px, gives 64 + 256 + 256
(block 30's 64 x 64 map pooled to 16 x 16) = 576 tokens + CLS per timestep and a
``Linear(3072, classes)``; 28,882,994 parameters on ImageNet-50.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..features.taps import FeatureInfo
from .attention import TokenTransformerHead
from .base import register_head

__all__ = ["DifFormerHead"]


@register_head("difformer")
class DifFormerHead(TokenTransformerHead):
    """Tokens of several taps per timestep, one shared transformer, CLS outputs concatenated.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; the taps must be maps, with several
            timesteps arriving as ``(B, T, C, h, w)``.
        num_labels: Number of classes (supplied by the task model).
        image_size: ``(H, W)`` the model runs at (supplied by the task model).
        taps: The taps read, in the order their tokens are concatenated (default: every tap, in
            the backbone's order; the paper concatenates in block order).
        width, depth, num_heads, mlp_ratio, pool, norm: As for the ``attention`` head.

    Raises:
        ValueError: A bad value (naming key, value and what is allowed) or a tap that is not a
            map.

    Example:
        >>> head = build_head({"type": "difformer"}, backbone.feature_info, num_labels=50,
        ...                   image_size=[256, 256])        # taps adm.19, adm.24, adm.30; T = 3
        >>> head.num_tokens, head.classifier.in_features     # 577, 3072
    """

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 image_size: Sequence[int], taps: Sequence[str] | None = None, width: int = 1024,
                 depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4, pool: int = 16,
                 norm: str = "layer") -> None:
        super().__init__(feature_info)
        if taps is not None and (isinstance(taps, str) or not taps
                                 or not all(isinstance(t, str) for t in taps)):
            raise ValueError(f"config['head']['taps'] = {taps!r} is invalid: a non-empty list of "
                             f"tap names of {list(feature_info)}.")
        self._build(feature_info, num_labels, image_size, list(taps) if taps else None,
                    width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                    pool=pool, norm=norm, head=self.name)
