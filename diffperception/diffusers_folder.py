"""Writing diffusers pipeline folders: components, ``model_index.json``, a character-level tokenizer.

A diffusers pipeline folder holds one sub-folder per component (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) and a ``model_index.json`` that names each
component's library and class. :class:`DiffusersFolderWriter` saves components one at a time, so a
large model never holds all of them in memory, and writes the index last. :func:`save_char_tokenizer`
writes a CLIP tokenizer with a character-level vocabulary, for models built with random weights (the
tiny test models and the benchmark architectures), where no released vocabulary is at hand.

The default model, the benchmarks and the tests all write their folders with this module. It
imports nothing of diffperception (only diffusers, transformers and torch, lazily).

Example:
    >>> writer = DiffusersFolderWriter("out/tiny", "DDPMPipeline")
    >>> writer.add("unet", UNet2DModel(...))
    >>> writer.add("scheduler", DDPMScheduler())
    >>> folder = writer.write_index()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DiffusersFolderWriter", "save_char_tokenizer"]


class DiffusersFolderWriter:
    """Saves pipeline components under a folder and writes its ``model_index.json``.

    Each component is saved with its own ``save_pretrained`` (safetensors for models) into
    ``<folder>/<name>`` and recorded in the index as ``[library, class]``, as diffusers'
    ``DiffusionPipeline.save_pretrained`` records it. The writer keeps no reference to a component.

    Args:
        folder: Target folder (created if needed).
        pipeline_class: The index's ``_class_name`` (``StableDiffusionPipeline``, ``DDPMPipeline``,
            ``DiffusionPipeline``...).
    """

    def __init__(self, folder: str | Path, pipeline_class: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pipeline_class = pipeline_class
        self.entries: dict[str, list[str | None]] = {}

    def add(self, name: str, component: Any, *, save: bool = True) -> None:
        """Saves ``component`` into ``<folder>/<name>`` and records it in the index.

        Args:
            name: Component slot (``unet``, ``text_encoder_2``...).
            component: A diffusers / transformers model, tokenizer or scheduler.
            save: False when the component is already saved in ``<folder>/<name>`` (only record it).
        """
        if save:
            import torch

            kwargs = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
            component.save_pretrained(str(self.folder / name), **kwargs)
        self.entries[name] = [type(component).__module__.split(".")[0], type(component).__name__]

    def write_index(self, **extra: Any) -> Path:
        """Writes ``model_index.json`` (sorted keys, as diffusers writes configs).

        Args:
            **extra: More index entries, e.g. ``safety_checker=[None, None]`` or
                ``requires_safety_checker=False``.

        Returns:
            The folder.
        """
        import diffusers

        index = {"_class_name": self.pipeline_class, "_diffusers_version": diffusers.__version__,
                 **self.entries, **extra}
        (self.folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return self.folder


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2's table)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
            + list(range(ord("\xae"), ord("\xff") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def save_char_tokenizer(folder: str | Path, max_length: int = 77) -> Any:
    """Saves (and returns) a CLIP tokenizer with a character-level vocabulary (no merges).

    Every byte is a token, alone and word-final (``</w>``), plus CLIP's two special tokens: any
    text tokenizes, and a text encoder built on it runs on ``max_length`` positions as CLIP does.

    Args:
        folder: Target folder (created if needed).
        max_length: The tokenizer's ``model_max_length``.

    Returns:
        The ``transformers.CLIPTokenizer``.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
