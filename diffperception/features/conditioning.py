"""Text conditioning of a diffusion trunk: null, fixed, per-image and learnable prompts.

``PromptConditioner`` turns a prompt setting into the text context (and added conditions) the
trunk takes. A constant prompt (null, fixed) is encoded once and kept as a buffer, so the text
encoder is not kept; a learnable prompt is a trainable text embedding initialised from a text;
per-image prompts keep the text encoder(s) and encode every call. This is the place where learned
prompts and learned K/V prompts live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import PromptConfig

__all__ = ["LearnablePrompt", "Learnable", "PromptConditioner", "prompt_config"]


class LearnablePrompt:
    """A trainable prompt: a text embedding initialised from ``init_text``.

    Example:
        >>> backbone = DiffusionBackbone.from_diffusers(
        ...     repo, taps=["up_ft.1"], prompt=LearnablePrompt("a photo of a dog"))
    """

    def __init__(self, init_text: str = "") -> None:
        self.init_text = init_text


#: The earlier name of ``LearnablePrompt``.
Learnable = LearnablePrompt


def prompt_config(prompt: Any) -> PromptConfig:
    """The ``PromptConfig`` of a user-facing prompt argument.

    Args:
        prompt: ``""`` / None (null prompt), a text (fixed), a list of texts (one per image),
            ``LearnablePrompt(text)`` or a ``PromptConfig``.

    Raises:
        TypeError: Any other type.
    """
    if isinstance(prompt, PromptConfig):
        return prompt
    if isinstance(prompt, LearnablePrompt):
        return PromptConfig(kind="learnable", text=prompt.init_text)
    if prompt is None or prompt == "":
        return PromptConfig(kind="null")
    if isinstance(prompt, str):
        return PromptConfig(kind="fixed", text=prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return PromptConfig(kind="per_image", text=list(prompt))
    raise TypeError(
        f"prompt must be '' (null prompt), a string, a list of strings (one per image) or "
        f"LearnablePrompt(init_text); got {type(prompt).__name__}."
    )


class PromptConditioner(nn.Module):
    """The text context and added conditions of every trunk call.

    State-dict entries: ``context`` (constant prompts), ``embedding`` (learnable prompt),
    ``pooled`` (SDXL pooled text embedding), ``text_encoder*.`` (per-image prompts).

    Args:
        family: The backbone family (encodes prompts, builds added conditions).
        network_config: The network's ``config.json``.
        prompt: The prompt setting.
        folder: The diffusers folder (tokenizer length for placeholders).
        encoders: Loaded (or meta) text encoders, ``{}`` for text-free families.
        tokenizers: Their tokenizers.
        dtype: The network's dtype (of the context placeholders a saved model fills).
    """

    def __init__(self, family: type, network_config: dict[str, Any], prompt: PromptConfig,
                 folder: Path, encoders: dict[str, nn.Module], tokenizers: dict[str, Any],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.family, self.network_config, self.setting = family, network_config, prompt
        self.tokenizers = tokenizers
        self._encoder_names: list[str] = []
        if not family.text_conditioned:
            return
        if not prompt.is_constant:  # per_image, caption, shuffled
            for name, encoder in encoders.items():
                setattr(self, name, encoder)  # kept: prompts are encoded every call
            self._encoder_names = list(encoders)
            return
        text = prompt.text if prompt.kind in ("fixed", "learnable") else ""
        if encoders and not any(p.is_meta for e in encoders.values() for p in e.parameters()):
            context, pooled = family.encode_prompt([text], encoders, tokenizers, network_config)
        else:  # the values come from a saved task model: shapes only, on the meta device
            (length, width), pooled_dim = family.context_shape(folder, network_config)
            context = torch.empty(1, length, width, device="meta", dtype=dtype)
            pooled = torch.empty(1, pooled_dim, device="meta", dtype=dtype) if pooled_dim else None
        if prompt.kind == "learnable":
            self.embedding = nn.Parameter(context.float().clone())
        else:
            self.register_buffer("context", context)
        if pooled is not None:
            self.register_buffer("pooled", pooled)

    @property
    def keeps_text_encoders(self) -> bool:
        """Whether prompts are encoded every call (the text encoders are part of the model)."""
        return bool(self._encoder_names)

    def forward(self, prompt: Sequence[str] | str | None, batch: int, image_hw: tuple[int, int],
                n: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """Text context ``(1 or n, L, D)`` and added conditions for ``n`` trunk samples.

        Args:
            prompt: Call-time texts (one per image), or None for the configured prompt.
            batch: Number of images ``B``.
            image_hw: ``(H, W)`` of the network input in pixels (SDXL's micro-conditions).
            n: Trunk batch ``T * E * B``.
            dtype: Activation dtype.

        Raises:
            ValueError: A prompt for a text-free network, a call-time prompt without a kept text
                encoder, or a number of texts other than ``batch``.
        """
        if not self.family.text_conditioned:
            if prompt is not None:
                raise ValueError("This model is text-free: it takes no prompt.")
            return None, None
        if prompt is not None or not self.setting.is_constant:
            texts = self._per_image_texts(prompt, batch)
            encoders = {name: getattr(self, name) for name in self._encoder_names}
            context, pooled = self.family.encode_prompt(texts, encoders, self.tokenizers,
                                                        self.network_config)
            reps = n // batch
            context = context.to(dtype).repeat(reps, 1, 1)  # (T*E*B, L, D)
            pooled = pooled.to(dtype).repeat(reps, 1) if pooled is not None else None
        else:
            context = self.embedding if self.setting.kind == "learnable" else self.context
            pooled = getattr(self, "pooled", None)
        return context, self.family.added_conditions(pooled, *image_hw, self.network_config)

    def _per_image_texts(self, prompt: Sequence[str] | str | None, batch: int) -> list[str]:
        if not self._encoder_names:
            raise ValueError(
                "A call-time prompt needs the text encoder, which this model does not keep (its "
                "prompt is fixed). Build it with prompt=[...] (one text per image) instead."
            )
        texts = prompt if prompt is not None else self.setting.text
        if isinstance(texts, str):
            texts = [texts] * batch
        if texts is None or len(texts) != batch:
            raise ValueError(
                f"Got {0 if texts is None else len(texts)} prompt(s) for {batch} image(s); pass "
                "one text per image (prompt=[...])."
            )
        return list(texts)
