"""An attention processor for tapped and specialised ``Attention`` modules.

It computes what diffusers' ``AttnProcessor2_0`` computes, with three differences:
- the batch size is taken from the hidden states, so a text context (or baked K/V) of batch 1
  serves any batch by broadcasting;
- when the module has a ``probs_tap`` or ``logits_tap`` child, the attention is computed
  explicitly and the probabilities (the ``:attn`` tap) or the pre-softmax scores times the scale
  (the ``:logits`` tap) pass through it (an identity module a forward hook can read); the scores
  are computed in float32 when the module says ``upcast_attention`` and the softmax when it says
  ``upcast_softmax``, as diffusers' ``Attention.get_attention_scores`` does;
- when the module has ``fixed_key`` / ``fixed_value`` buffers (a specialised cross-attention of a
  fixed prompt), they replace ``to_k(context)`` / ``to_v(context)``.
It is a plain callable, not a module, so it adds no key to the state dict.

Attention modules whose processor does more than plain self / cross attention (SD3's joint
attention over image and text tokens, FLUX's attention and anything that goes through diffusers'
``dispatch_attention_fn``) keep their own processor, wrapped by ``SdpaTapProcessor``: while the
module runs, ``torch.nn.functional.scaled_dot_product_attention`` (what those processors and
dispatch's native backend call) is computed explicitly, and the scores / probabilities pass
through ``logits_tap`` / ``probs_tap`` with the shape the processor gives SDPA: ``(B, heads, Q, K)``
over the joint token sequence in the processor's order (SD3: image then text; FLUX: text then
image). Under that wrapper the native backend is selected for the call. The swap is process-wide
for the duration of the module's call, so two threads must not run tapped attention at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TapAttnProcessor", "SdpaTapProcessor", "AttentionProbs", "AttentionLogits",
           "install_processor"]


class AttentionProbs(nn.Identity):
    """Identity on attention probabilities ``(B, heads, queries, keys)``; a hook reads them."""


class AttentionLogits(nn.Identity):
    """Identity on pre-softmax attention scores ``(B, heads, queries, keys)``; a hook reads them."""


class TapAttnProcessor:
    """Attention processor honouring ``probs_tap`` and ``fixed_key`` / ``fixed_value``."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, Q, inner)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, Q, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        key, value = self._key_value(attn, hidden_states, encoder_hidden_states, batch, head_dim)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
        probs_tap, logits_tap = getattr(attn, "probs_tap", None), getattr(attn, "logits_tap", None)
        if probs_tap is not None or logits_tap is not None:
            hidden_states = self._explicit(attn, query, key, value, mask, probs_tap, logits_tap)
        else:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=attn.scale
            )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _explicit(attn, query, key, value, mask, probs_tap, logits_tap) -> torch.Tensor:
        """Attention with the scores and probabilities as tensors hooks can read."""
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale  # (B, h, Q, K)
        if mask is not None:
            scores = scores + mask
        if logits_tap is not None:
            scores = logits_tap(scores)
        if attn.upcast_softmax:
            scores = scores.float()
        probs = scores.softmax(dim=-1).to(value.dtype)
        if probs_tap is not None:
            probs = probs_tap(probs)
        return torch.matmul(probs, value)  # (B, h, Q, d)

    @staticmethod
    def _key_value(attn, hidden_states, encoder_hidden_states, batch, head_dim):
        if getattr(attn, "fixed_key", None) is not None:
            # (1, h, K, d) constants computed once from the fixed prompt; broadcast over the batch.
            return (attn.fixed_key.expand(batch, -1, -1, -1),
                    attn.fixed_value.expand(batch, -1, -1, -1))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        ctx_batch = context.shape[0]
        key = attn.to_k(context).view(ctx_batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = attn.to_v(context).view(ctx_batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if ctx_batch != batch:
            key, value = key.expand(batch, -1, -1, -1), value.expand(batch, -1, -1, -1)
        return key, value


#: Processors ``TapAttnProcessor`` reproduces (plain self / cross attention).
_PLAIN_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0")


def _explicit_sdpa(attn: nn.Module):
    """An SDPA replacement computing scores and probabilities through the module's taps."""
    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if is_causal or enable_gqa:
            raise ValueError("Attention taps do not support causal or grouped-query attention.")
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale  # (B, h, Q, K)
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float("-inf"))
                      if attn_mask.dtype == torch.bool else scores + attn_mask)
        logits_tap = getattr(attn, "logits_tap", None)
        if logits_tap is not None:
            scores = logits_tap(scores)
        probs = scores.float().softmax(dim=-1).to(value.dtype)
        probs_tap = getattr(attn, "probs_tap", None)
        if probs_tap is not None:
            probs = probs_tap(probs)
        return torch.matmul(probs, value)  # (B, h, Q, d)
    return sdpa


class SdpaTapProcessor:
    """Wraps any attention processor: its SDPA call is computed explicitly through the taps.

    Args:
        inner: The module's own processor (kept, and called with the same arguments).
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn: nn.Module, *args, **kwargs):
        from diffusers.models.attention_dispatch import attention_backend

        original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _explicit_sdpa(attn)
        try:
            with attention_backend("native"):
                return self.inner(attn, *args, **kwargs)
        finally:
            F.scaled_dot_product_attention = original


def install_processor(attn: nn.Module) -> None:
    """Gives an attention module the tap-aware processor (idempotent).

    Plain self / cross attention (``AttnProcessor2_0``) gets ``TapAttnProcessor``; any other
    processor (joint attention, dispatch-based ones) is wrapped by ``SdpaTapProcessor``.
    """
    processor = attn.processor
    if isinstance(processor, (TapAttnProcessor, SdpaTapProcessor)):
        return
    plain = (type(processor).__name__ in _PLAIN_PROCESSORS
             and getattr(attn, "add_q_proj", None) is None
             and getattr(attn, "added_kv_proj_dim", None) is None)
    if plain:
        attn.set_processor(TapAttnProcessor())
    elif getattr(attn, "probs_tap", None) is not None or getattr(attn, "logits_tap", None) is not None:
        attn.set_processor(SdpaTapProcessor(processor))
