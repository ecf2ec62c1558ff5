"""Open-vocabulary classification by cosine with CLIP text features (S000 §3.3 Eq. 9; METHODS.md
§3.6).

Each class name is put into every template (``"a photo of a {}."``), encoded by a CLIP text
encoder, the template embeddings of a class averaged and L2-normalised. "w. projection" is
``CLIPTextModelWithProjection.text_embeds`` (the projected EOS token); "w.o. projection" is the
final-layer EOS hidden state (``pooler_output``, after the final LayerNorm). Logits are
``logit_scale * cos(v, t_c) / temperature`` (classification: scale 1, tau 0.2; the released
ZS-SBIR code: scale 4.6052, tau 0.2).

The text features are a buffer: constants of a saved, specialised or exported model; the text
encoder is loaded only to (re-)encode labels and is never part of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextClassifier", "encode_class_prompts", "load_text_model", "class_prompts"]


def class_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """``[[template.format(label) for template]]`` per label.

    Raises:
        ValueError: A template without ``{}``.
    """
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"config['head']['templates'] = {list(templates)!r} is invalid: a "
                         "non-empty list of texts with '{}' where the class name goes.")
    return [[t.format(label) for t in templates] for label in labels]


def load_text_model(text_model: str, base_folder: Path | None, *, projection: bool
                    ) -> tuple[nn.Module, Any]:
    """The CLIP text encoder and tokenizer the class prompts go through.

    Args:
        text_model: ``"base"`` (the diffusion model's own ``text_encoder`` / ``tokenizer``), or a
            Hub repo id / local folder of a CLIP model (``"openai/clip-vit-large-patch14"``,
            SD 1.5's text encoder with its projection).
        base_folder: The diffusers folder of the diffusion model (for ``"base"``).
        projection: Load ``CLIPTextModelWithProjection`` (needs the projection weights).

    Raises:
        ValueError: ``"base"`` with ``projection`` when the base text encoder has no projection.
        OSError: What transformers raises for a missing repo or folder.
    """
    import json

    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    if text_model == "base":
        if base_folder is None:
            raise ValueError("text_model 'base' needs the diffusion model's folder.")
        folder = Path(base_folder)
        arch = json.loads((folder / "text_encoder" / "config.json").read_text()).get(
            "architectures", [""])[0]
        if projection and arch != "CLIPTextModelWithProjection":
            raise ValueError(
                f"config['head']['projection'] = True needs a text encoder with its projection, "
                f"but {folder / 'text_encoder'} holds a {arch}; set projection to false or "
                "text_model to a CLIP repo (e.g. 'openai/clip-vit-large-patch14').")
        model = cls.from_pretrained(str(folder / "text_encoder"), use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    else:
        model = cls.from_pretrained(text_model, use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(text_model)
    return model.eval(), tokenizer


@torch.no_grad()
def encode_class_prompts(prompts: Sequence[Sequence[str]], model: nn.Module, tokenizer: Any, *,
                         projection: bool) -> torch.Tensor:
    """Class text features ``(K, D)``: template embeddings averaged per class, L2-normalised.

    Args:
        prompts: Per class, its texts (``class_prompts``).
        model: ``CLIPTextModel`` or ``CLIPTextModelWithProjection``.
        tokenizer: Its tokenizer (padding to ``model_max_length``, truncation).
        projection: ``text_embeds`` (True) or the final EOS hidden state (False).
    """
    features = []
    for texts in prompts:
        ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        encoder = getattr(model, "text_model", model)  # the projection model wraps the encoder
        out = encoder(input_ids=ids.to(model.device))
        emb = out.pooler_output  # (n, hidden): the final-layer EOS token
        if projection:
            emb = model.text_projection(emb)  # (n, projection_dim) = text_embeds
        features.append(emb.float().mean(dim=0))
    return F.normalize(torch.stack(features), dim=-1)  # (K, D)


class TextClassifier(nn.Module):
    """Cosine logits against fixed class text features.

    Args:
        num_labels: ``K``.
        embed_dim: ``D``, the text feature width.
        temperature: ``tau`` (0.2).
        logit_scale: Linear factor (1; the released ZS-SBIR code's 4.6052).

    Shapes:
        ``(B, D)`` -> ``(B, K)``; dense ``(B, D, h, w)`` -> ``(B, K, h, w)`` (per-pixel cosine).
    """

    def __init__(self, num_labels: int, embed_dim: int, *, temperature: float = 0.2,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"config['head']['temperature'] = {temperature!r} is invalid: > 0.")
        self.temperature, self.logit_scale = float(temperature), float(logit_scale)
        self.register_buffer("text_features", torch.zeros(num_labels, embed_dim))

    def set_text_features(self, features: torch.Tensor) -> None:
        """Replaces the class features ``(K', D)`` (K' may differ from K).

        Raises:
            ValueError: Another width ``D``.
        """
        if features.dim() != 2 or features.shape[1] != self.text_features.shape[1]:
            raise ValueError(f"Text features of shape {tuple(features.shape)} do not match the "
                             f"head's width {self.text_features.shape[1]}: the text encoder's "
                             "output width must equal config['head']['embed_dim'].")
        self.text_features = features.to(self.text_features)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        t = self.text_features.to(v.dtype)
        scale = self.logit_scale / self.temperature
        if v.dim() == 4:
            return torch.einsum("bdhw,kd->bkhw", F.normalize(v, dim=1), t) * scale
        return F.normalize(v, dim=-1) @ t.t() * scale
