"""The two ways diffusion features are extracted today, written as their users write them.

- ``FullForward``: load the diffusers components, hook the tapped modules, run the whole
  ``UNet2DConditionModel`` (generic extraction code). The prompt is encoded once at load time,
  which is the favourable variant for this baseline.
- ``BlockCutEager``: DIFT's procedure (``MyUNet2DConditionModel``): the U-Net's blocks are run by
  hand and the loop stops after the tapped block; the text encoder runs and fresh noise is drawn
  on every call.

Both draw their noise per call from a generator seeded with the scenario seed, so their noise
equals the library's fixed noise and all backends see the same noisy latent. The full forward is
the reference every scenario is checked against. The VAE's posterior mean (not a sample) is used
so that features are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .scenario import Scenario

__all__ = ["FullForward", "BlockCutEager", "hook_modules", "make_inputs", "input_shape", "DTYPES"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def input_shape(s: Scenario, folder: Path) -> tuple[int, ...]:
    """``(B, C, h, w)`` of the latent (trunk view) or ``(B, 3, H, W)`` of the image (e2e)."""
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    has_vae = (folder / "vae" / "config.json").is_file()
    if s.view == "e2e":
        return (s.batch, 3, s.resolution, s.resolution)
    side = s.resolution // 8 if has_vae else s.resolution
    return (s.batch, int(unet_cfg["in_channels"]), side, side)


def make_inputs(s: Scenario, folder: Path) -> torch.Tensor:
    """Seeded inputs: standard-normal latents (trunk) or uniform [0, 1] images (e2e)."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    shape = input_shape(s, folder)
    x = torch.randn(shape, generator=gen) if s.view == "trunk" else torch.rand(shape, generator=gen)
    return x.to(s.device, DTYPES[s.precision])


class _AttentionProbsHook:
    """Captures an ``Attention`` module's probabilities; ``remove()`` restores the module."""

    def __init__(self, module: torch.nn.Module, name: str, store: dict[str, torch.Tensor]) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        self.module, self.processor = module, module.processor
        module.set_processor(AttnProcessor())  # the classic processor computes probabilities
        original = module.get_attention_scores

        def scores(query, key, attention_mask=None):
            probs = original(query, key, attention_mask)  # (B*heads, Q, K)
            store[name] = probs.view(-1, module.heads, *probs.shape[1:])  # (B, heads, Q, K)
            return probs

        module.get_attention_scores = scores

    def remove(self) -> None:
        del self.module.get_attention_scores  # back to the class's method
        self.module.set_processor(self.processor)


def hook_modules(model: torch.nn.Module,
                 taps: Iterable[tuple[str, str, str]]) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks the tapped modules of a FULL diffusers model: the reference for every feature.

    Diffusers' own forward runs unchanged; forward hooks copy what the tapped modules see. This
    uses torch hooks and diffusers only (no code of the package's trunk), so it is an independent
    reference for the trunk's outputs. The tests use it too (``tests/testing_utils/reference.py``).

    Args:
        model: The diffusers model (``UNet2DConditionModel``, ``UNet2DModel``...).
        taps: ``(name, module path, kind)`` triples; kind ``"out"`` (the module's output),
            ``"in"`` (its first input) or ``"attn"`` (an ``Attention`` module's probabilities,
            ``(B, heads, Q, K)``; its processor is the classic one while hooked).

    Returns:
        ``(store, handles)``: ``store`` maps each name to the tensor of the last forward;
        ``handle.remove()`` on each handle restores the model.

    Raises:
        ValueError: Unknown tap kind.
    """
    store: dict[str, torch.Tensor] = {}
    handles: list = []
    modules = dict(model.named_modules())
    for name, path, kind in taps:
        module = modules[path]
        if kind == "attn":
            handles.append(_AttentionProbsHook(module, name, store))
        elif kind == "in":
            def pre(mod, args, kwargs, _name=name):
                store[_name] = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        elif kind == "out":
            def post(mod, args, out, _name=name):
                store[_name] = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
            handles.append(module.register_forward_hook(post))
        else:
            raise ValueError(f"Tap {name!r}: unknown kind {kind!r}; use 'out', 'in' or 'attn'.")
    return store, handles


def _hook_taps(unet: torch.nn.Module, taps: tuple[str, ...]) -> tuple[dict, list]:
    """The reference hooks on a scenario's taps (``:out`` and ``:in`` taps only)."""
    from diffperception.features.taps import resolve_taps

    resolved = resolve_taps(list(taps), unet)
    for tap in resolved:
        if tap.kind == "attn":
            raise ValueError(f"Tap {tap.name!r}: the baselines hook module outputs and inputs only; "
                             "':attn' taps are not benchmarked.")
    return hook_modules(unet, [(tap.name, tap.path, tap.kind) for tap in resolved])


class _Components:
    """The diffusers / transformers components of a folder, loaded as a pipeline loads them."""

    def __init__(self, folder: Path, s: Scenario, *, need_vae: bool) -> None:
        import diffusers
        import transformers

        dtype, device = DTYPES[s.precision], s.device
        self.unet = diffusers.UNet2DConditionModel.from_pretrained(
            str(folder), subfolder="unet", torch_dtype=dtype).eval().to(device)
        self.vae = None
        if need_vae and (folder / "vae").is_dir():
            self.vae = diffusers.AutoencoderKL.from_pretrained(
                str(folder), subfolder="vae", torch_dtype=dtype).eval().to(device)
        index = json.loads((folder / "model_index.json").read_text())
        self.encoders, self.tokenizers = [], []
        for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if index.get(enc) and index[enc][1]:
                cls = getattr(transformers, index[enc][1])
                self.encoders.append(cls.from_pretrained(str(folder / enc), dtype=dtype).eval().to(device))
                self.tokenizers.append(transformers.CLIPTokenizer.from_pretrained(str(folder / tok)))
        self.sdxl = self.unet.config.get("addition_embed_type") == "text_time"
        sched = diffusers.DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
        abar = sched.alphas_cumprod[s.timestep].to(torch.float64)
        self.sqrt_a, self.sqrt_1ma = float(abar.sqrt()), float((1 - abar).sqrt())
        self.scenario = s

    def encode_prompt(self, prompt: str = "") -> tuple[torch.Tensor, dict | None]:
        """Text context ``(1, L, D)`` (and SDXL added conditions), as the pipelines compute it."""
        contexts, pooled = [], None
        for encoder, tokenizer in zip(self.encoders, self.tokenizers):
            ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.unet.device)
            if self.sdxl:
                out = encoder(ids, output_hidden_states=True)
                contexts.append(out.hidden_states[-2])
                pooled = out[0]
            else:
                contexts.append(encoder(ids)[0])
        context = torch.cat(contexts, dim=-1)
        if not self.sdxl:
            return context, None
        side = self.scenario.resolution
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=context.dtype,
                                device=context.device)
        return context, {"text_embeds": pooled, "time_ids": time_ids}

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        if self.scenario.view == "trunk" or self.vae is None:
            return x if self.scenario.view == "trunk" else x * 2 - 1
        return self.vae.encode(x * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def noisy(self, latent: torch.Tensor) -> torch.Tensor:
        """``(E*B, C, h, w)``: fresh seeded noise per call, shared by the images of a batch."""
        s = self.scenario
        gen = torch.Generator().manual_seed(s.seed)
        eps = torch.randn((s.ensemble, 1, *latent.shape[1:]), generator=gen)
        eps = eps.to(latent.device, latent.dtype)
        z = self.sqrt_a * latent.unsqueeze(0) + self.sqrt_1ma * eps  # (E, B, C, h, w)
        return z.reshape(-1, *latent.shape[1:])

    def conditioning(self, context: torch.Tensor, added: dict | None, n: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"encoder_hidden_states": context.expand(n, -1, -1)}
        if added is not None:
            kw["added_cond_kwargs"] = {k: v.expand(n, -1) for k, v in added.items()}
        return kw

    def reduce(self, store: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        return {name: store[name].reshape(self.scenario.ensemble, batch, *store[name].shape[1:])
                .mean(0) for name in self.scenario.taps}


class FullForward(_Components):
    """The whole diffusers U-Net with forward hooks (the reference)."""

    def __init__(self, folder: Path, s: Scenario) -> None:
        super().__init__(folder, s, need_vae=s.view == "e2e")
        self.store, self.handles = _hook_taps(self.unet, s.taps)
        with torch.no_grad():
            self.context, self.added = self.encode_prompt("")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.noisy(self.latent(x))  # (E*B, C, h, w)
        t = torch.full((z.shape[0],), self.scenario.timestep, device=z.device)
        self.store.clear()
        self.unet(z, t, **self.conditioning(self.context, self.added, z.shape[0]))
        return self.reduce(self.store, x.shape[0])


def _stop_point(unet: torch.nn.Module, taps: tuple[str, ...]) -> tuple[str, int]:
    """The block after which DIFT's loop may stop: ``("down", i)``, ``("mid", 0)``, ``("up", i)``."""
    from diffperception.features.taps import resolve_taps

    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    best = (-1, -1)
    for tap in resolve_taps(list(taps), unet):
        parts = tap.path.split(".")
        if parts[0] not in order:
            return ("out", 0)  # conv_in / conv_out / embeddings: run everything
        index = int(parts[1]) if parts[0] != "mid_block" else 0
        best = max(best, (order[parts[0]], index))
    return (("down", "mid", "up")[best[0]], best[1])


class BlockCutEager(_Components):
    """DIFT's block loop: stops after the tapped block; text encoder and noise every call."""

    def __init__(self, folder: Path, s: Scenario) -> None:
        super().__init__(folder, s, need_vae=True)  # DIFT loads the whole pipeline
        self.store, self.handles = _hook_taps(self.unet, s.taps)
        self.stop = _stop_point(self.unet, s.taps)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        context, added = self.encode_prompt("")
        z = self.noisy(self.latent(x))  # (E*B, C, h, w)
        t = torch.full((z.shape[0],), self.scenario.timestep, device=z.device)
        self.store.clear()
        cond = self.conditioning(context, added, z.shape[0])
        if self.stop[0] == "out":
            self.unet(z, t, **cond)
        else:
            self._blocks(z, t, cond["encoder_hidden_states"], cond.get("added_cond_kwargs"))
        return self.reduce(self.store, x.shape[0])

    def _blocks(self, sample, t, context, added) -> None:
        unet, (stage, stop) = self.unet, self.stop
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context,
                                 added_cond_kwargs=added or {})
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(context, added or {})
        sample = unet.conv_in(sample)
        residuals = (sample,)
        call = _block_caller(emb, context)
        for i, block in enumerate(unet.down_blocks):
            sample, res = call(block, sample)
            residuals += res
            if stage == "down" and i == stop:
                return
        sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
        if stage == "mid":
            return
        for i, block in enumerate(unet.up_blocks):
            res = residuals[-len(block.resnets):]
            residuals = residuals[: -len(block.resnets)]
            sample = call(block, sample, res_hidden_states_tuple=res)
            if i == stop:
                return


def _block_caller(emb: torch.Tensor, context: torch.Tensor) -> Callable:
    def call(block, sample, **kw):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=context, **kw)
        return block(hidden_states=sample, temb=emb, **kw)

    return call
