"""Cross-attention over candidate texts: ``M`` text contexts serve a trunk batch of ``k * M``.

Scoring ``N`` images against ``M`` texts runs one trunk batch laid out ``(T, E, N, M)`` (texts
innermost): sample ``s`` takes text ``s mod M``. The text side of every cross-attention (K and V,
77 tokens) is computed once per text, not once per sample, and repeated over the batch; the
image side (the noisy latent of each image) is computed once per image and repeated over its
texts. The same layout serves aligned pairs (``M = N``, pair ``i`` = image ``i`` with text
``i``).

``CandidateAttnProcessor`` is ``TapAttnProcessor`` (the ``:logits`` / ``:attn`` taps, baked
K/V) with that rule; :func:`bake_candidate_kv` precomputes the K/V of a fixed candidate set for
a specialised (exported) module, with any trained K/V prompts already in the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import TapAttnProcessor

__all__ = ["CandidateAttnProcessor", "install_candidate_processor", "bake_candidate_kv",
           "tile_rows"]


def tile_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(M, ...)`` -> ``(batch, ...)`` where row ``s`` is ``x[s mod M]`` (``batch = k * M``).

    Written as expand + reshape (not ``repeat``) so that it exports with a dynamic batch.
    """
    rows = x.shape[0]
    if rows == batch:
        return x
    if rows == 1:
        return x.expand(batch, *x.shape[1:])
    return x.unsqueeze(0).expand(batch // rows, *x.shape).reshape(batch, *x.shape[1:])


class CandidateAttnProcessor(TapAttnProcessor):
    """``TapAttnProcessor`` where a context (or baked K/V) of ``M`` rows serves ``k * M`` samples.

    Raises:
        ValueError: A batch that is not a multiple of the number of context rows.
    """

    @staticmethod
    def _key_value(attn, hidden_states, encoder_hidden_states, batch, head_dim):
        fixed = getattr(attn, "fixed_key", None)
        if fixed is not None:
            key, value = attn.fixed_key, attn.fixed_value  # (M, h, L, d)
        else:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if encoder_hidden_states is not None and attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            rows = context.shape[0]
            key = attn.to_k(context).view(rows, -1, attn.heads, head_dim).transpose(1, 2)
            value = attn.to_v(context).view(rows, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
        rows = key.shape[0]
        if batch % rows:
            raise ValueError(f"A cross-attention got {batch} samples for {rows} text contexts; "
                             "the samples must be a whole number of rounds over the texts.")
        return tile_rows(key, batch), tile_rows(value, batch)


def install_candidate_processor(network: nn.Module) -> None:
    """Gives every cross-attention of ``network`` the candidate processor."""
    from diffusers.models.attention_processor import Attention

    for module in network.modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            if not isinstance(module.processor, CandidateAttnProcessor):
                module.set_processor(CandidateAttnProcessor())


@torch.no_grad()
def bake_candidate_kv(network: nn.Module, context: torch.Tensor) -> None:
    """Precomputes K / V of every cross-attention for ``M`` texts ``context`` ``(M, L, D)``.

    ``to_k`` / ``to_v`` are dropped; the module then takes ``k * M`` samples (texts innermost).
    Fold trained K/V prompts into the weights first (``AttentionAdapter.fold_into``).
    """
    from diffusers.models.attention_processor import Attention

    for attn in network.modules():
        if not isinstance(attn, Attention) or not attn.is_cross_attention:
            continue
        ctx = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
        rows, head_dim = ctx.shape[0], attn.to_k.out_features // attn.heads
        key = attn.to_k(ctx).view(rows, -1, attn.heads, head_dim).transpose(1, 2)  # (M, h, L, d)
        value = attn.to_v(ctx).view(rows, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        attn.register_buffer("fixed_key", key.contiguous())
        attn.register_buffer("fixed_value", value.contiguous())
        attn.to_k, attn.to_v = None, None
        attn.set_processor(CandidateAttnProcessor())
