"""Settings of a diffusers model that change the numbers are honoured (against diffusers' own
schedulers, VAE and attention) or refused at load time."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from testing_utils.reference import hook_full_unet

from diffperception import DiffusionBackbone

TOL = 1e-5


def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _copy(tiny_repos, kind, tmp_path, name):
    return shutil.copytree(tiny_repos[kind], tmp_path / name)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_inversion_reads_the_output_as_the_scheduler_says(tiny_repos, tmp_path, prediction_type):
    import diffusers

    folder = _copy(tiny_repos, "sd2", tmp_path, prediction_type)
    _edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type=prediction_type)
    t, steps = 200, 4
    backbone = DiffusionBackbone.from_diffusers(folder, taps=["up_blocks.0"], timesteps=[t],
                                                noise="ddim_inversion", inversion_steps=steps)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    scheduler = diffusers.DDPMScheduler.from_config(
        {**pipe.scheduler.config, "clip_sample": False, "thresholding": False})
    abar = scheduler.alphas_cumprod
    images = _images(1)
    with torch.no_grad():
        context = pipe.encode_prompt("", "cpu", 1, False)[0]
        x = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        a_cur = torch.tensor(1.0)
        grid = torch.linspace(0, t, steps + 1).round().long().tolist()
        for t_cur, t_next in zip(grid[:-1], grid[1:]):  # DDIM inversion, written out
            out = pipe.unet(x, torch.tensor([t_cur]), encoder_hidden_states=context).sample
            x0 = scheduler.step(out, t_cur, x).pred_original_sample  # diffusers' reading
            eps = (x - abar[t_cur].sqrt() * x0) / (1 - abar[t_cur]).sqrt()
            x = abar[t_next].sqrt() * (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt() \
                + (1 - abar[t_next]).sqrt() * eps
            a_cur = abar[t_next]
        store, handles = hook_full_unet(pipe.unet, ["up_blocks.0"])
        pipe.unet(x, torch.tensor([t]), encoder_hidden_states=context)
        for h in handles:
            h.remove()
        ours = backbone(images)["up_blocks.0"]
    assert (ours - store["up_blocks.0"]).abs().max() <= 1e-4


@pytest.mark.parametrize("name,field,value,message", [
    ("edm", "_class_name", "EDMEulerScheduler", "'EDMEulerScheduler' is not supported"),
    ("flow", "_class_name", "FlowMatchEulerDiscreteScheduler", "flow-matching"),
    ("pred", "prediction_type", "x0", "prediction_type = 'x0' is not supported"),
    ("steps", "num_train_timesteps", 10 ** 9, "num_train_timesteps = 1000000000 is invalid"),
])
def test_other_noise_processes_are_refused_at_load(tiny_repos, tmp_path, name, field, value, message):
    folder = _copy(tiny_repos, "pixel", tmp_path, name)
    _edit_json(folder / "scheduler" / "scheduler_config.json", **{field: value})
    with pytest.raises(ValueError, match=message):
        DiffusionBackbone.from_diffusers(folder, taps=["mid_block"])


def _vae_reference(folder, images, dtype=torch.float32):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae").to(dtype)
    return vae.encode((images * 2 - 1).to(dtype)).latent_dist, vae.config


@pytest.mark.parametrize("stats", [{"latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [0.5, 2.0, 1.0, 1.5]},
                                   {"shift_factor": 0.25}])
def test_latent_normalisation_follows_the_pipelines(tiny_repos, tmp_path, stats):
    folder = _copy(tiny_repos, "sdxl", tmp_path, "norm")
    _edit_json(folder / "vae" / "config.json", **stats)
    backbone = DiffusionBackbone.from_diffusers(folder, taps=["mid_block"])
    images = _images()
    with torch.no_grad():
        ours = backbone.encode(backbone.prepare_images(images))
        dist, config = _vae_reference(folder, images)
        if "latents_mean" in stats:  # StableDiffusionXLImg2ImgPipeline.prepare_latents
            mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1)
            std = torch.tensor(config.latents_std).view(1, 4, 1, 1)
            expected = (dist.mean - mean) * config.scaling_factor / std
        else:  # the SD3 pipelines
            expected = (dist.mean - config.shift_factor) * config.scaling_factor
    assert (ours - expected).abs().max() <= TOL


def test_posterior_sample_is_mean_plus_std_times_seeded_noise(tiny_repos):
    backbone = DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["up_ft.1"], seed=4,
                                                size=(64, 64))
    backbone.features.noise.posterior = "sample"
    images = _images()
    with torch.no_grad():
        ours = backbone.encode(backbone.prepare_images(images))
        dist, config = _vae_reference(tiny_repos["sd1"], images)
        # the documented draw: its own generator, seed + 7919, shape (1, C, h, w)
        n = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4 + 7919))
        expected = (dist.mean + dist.std * n) * config.scaling_factor
        assert (ours - expected).abs().max() <= TOL
        assert (ours - dist.mean * config.scaling_factor).abs().max() > 1e-3
        special = backbone.specialize()
        assert (special(images)["up_ft.1"] - backbone(images)["up_ft.1"]).abs().max() <= 1e-4


def test_force_upcast_vae_runs_in_float32_for_a_float16_model(tiny_repos, tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_repos, "sdxl", tmp_path, "upcast")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["encoder.conv_in.weight"] *= 1e5  # activations far beyond float16's 65504
    save_file(tensors, str(weights))
    images = _images()
    for upcast in (False, True):
        _edit_json(folder / "vae" / "config.json", force_upcast=upcast)
        backbone = DiffusionBackbone.from_diffusers(folder, taps=["mid_block"], dtype="float16")
        with torch.no_grad():
            z = backbone.encode(backbone.prepare_images(images))
        assert z.dtype == torch.float16
        if not upcast:
            assert not torch.isfinite(z).all()  # the failure diffusers' upcast avoids
    assert next(backbone.vae.parameters()).dtype == torch.float32
    with torch.no_grad():  # the SDXL pipelines: a float16 image, upcast with the VAE to float32
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
        x = (images * 2 - 1).half().float()
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.equal(z, expected.half())


def test_attention_upcast_flags_are_honoured_in_float16():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from diffperception.features.attention import AttentionProbs, TapAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, upcast_attention=True,
                     upcast_softmax=True).half().eval()
    hidden = (60 * torch.randn(1, 64, 32)).half()  # scores beyond float16 without the upcast
    seen = {}
    attn.probs_tap = AttentionProbs()
    attn.probs_tap.register_forward_hook(lambda m, a, out: seen.setdefault("ours", out))
    attn.set_processor(TapAttnProcessor())
    with torch.no_grad():
        attn(hidden)
        attn.set_processor(AttnProcessor())  # diffusers' own scores, with its upcasting
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(hidden))
        expected = attn.get_attention_scores(q, k).view(1, 2, 64, 64)
    assert torch.isfinite(seen["ours"]).all() and torch.isfinite(expected).all()
    assert (seen["ours"].float() - expected.float()).abs().max() <= 1e-3


def test_logits_tap_is_q_k_times_scale(tiny_repos, reference_pipes):
    path = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    backbone = DiffusionBackbone.from_diffusers(
        tiny_repos["sd1"], taps=[f"{path}:logits", f"{path}:attn"], timesteps=[300])
    pipe = reference_pipes["sd1"]
    images = _images()
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = backbone(images, noise=eps)
        latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        abar = pipe.scheduler.alphas_cumprod[300]
        z = abar.sqrt() * latent + (1 - abar).sqrt() * eps
        store, handles = hook_full_unet(pipe.unet, [f"{path}.to_q", f"{path}.to_k"])
        context = pipe.encode_prompt("", "cpu", 1, False)[0].expand(2, -1, -1)
        pipe.unet(z, torch.full((2,), 300), encoder_hidden_states=context)
        for h in handles:
            h.remove()
    attn = dict(pipe.unet.named_modules())[path]
    q = store[f"{path}.to_q"].unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # (B, h, Q, d)
    k = store[f"{path}.to_k"].unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # (B, h, K, d)
    expected = q @ k.transpose(-1, -2) * attn.scale
    assert ours[f"{path}:logits"].shape == expected.shape
    assert (ours[f"{path}:logits"] - expected).abs().max() <= TOL
    assert (ours[f"{path}:logits"].softmax(-1) - ours[f"{path}:attn"]).abs().max() <= TOL
    assert backbone.feature_info[f"{path}:logits"].layout == "attention"


def test_input_edges_are_clear_errors(tiny_repos, caplog):
    import numpy as np

    backbone = DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["mid_block"], size=(64, 64))
    rgba = np.random.default_rng(0).random((64, 64, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="got 4 channels"):
        backbone(rgba)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*value_range=\(0, 255\)"):
        backbone(_images() * 255)
    with torch.no_grad():
        assert torch.allclose(backbone(_images() * 255, value_range=(0, 255))["mid_block"],
                              backbone(_images())["mid_block"], atol=1e-5)
    special = backbone.specialize()
    with pytest.raises(ValueError, match="takes images of 64x64; got"):
        special(_images(size=32))
    prompt = DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["mid_block"],
                                              prompt=["a " + "very " * 20 + "long prompt"] * 2)
    with caplog.at_level(logging.WARNING):
        prompt(_images())
    assert "truncated because the text encoder can only handle sequences up to 16 tokens" in caplog.text


def test_images_of_different_sizes_form_a_batch_when_a_size_is_set(tiny_repos):
    from PIL import Image

    backbone = DiffusionBackbone.from_diffusers(tiny_repos["pixel"], taps=["mid_block"], size=(32, 32))
    rng = torch.Generator().manual_seed(0)
    arrays = [(torch.rand(h, w, 3, generator=rng) * 255).byte().numpy() for h, w in ((40, 50), (32, 32))]
    pil = [Image.fromarray(a) for a in arrays]
    with torch.no_grad():
        batch = backbone(pil)["mid_block"]
        one_by_one = torch.cat([backbone([image])["mid_block"] for image in pil])
    assert batch.shape[0] == 2 and torch.allclose(batch, one_by_one, atol=1e-5)


def test_ddim_inversion_conditions_on_the_call_time_prompt(tiny_repos, reference_pipes):
    t, steps = 300, 3
    backbone = DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["up_blocks.1"], timesteps=[t],
                                                noise="ddim_inversion", inversion_steps=steps,
                                                prompt=["a cat", "a dog"])
    pipe = reference_pipes["sd1"]
    abar = pipe.scheduler.alphas_cumprod
    images, texts = _images(2), ["two birds", "a red fish"]
    with torch.no_grad():
        latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        context = torch.cat([pipe.encode_prompt(x, "cpu", 1, False)[0] for x in texts])
        x, a_cur = latent, torch.tensor(1.0)
        grid = torch.linspace(0, t, steps + 1).round().long().tolist()
        for t_cur, t_next in zip(grid[:-1], grid[1:]):  # epsilon-prediction DDIM inversion
            eps = pipe.unet(x, torch.full((2,), t_cur), encoder_hidden_states=context).sample
            x = abar[t_next].sqrt() * (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt() \
                + (1 - abar[t_next]).sqrt() * eps
            a_cur = abar[t_next]
        store, handles = hook_full_unet(pipe.unet, ["up_blocks.1"])
        pipe.unet(x, torch.full((2,), t), encoder_hidden_states=context)
        for h in handles:
            h.remove()
        ours = backbone(images, prompt=texts)["up_blocks.1"]
        one = backbone(images[:1], prompt=texts[:1])["up_blocks.1"]  # 1 image, 1 text
    assert (ours - store["up_blocks.1"]).abs().max() <= 1e-4
    assert (one - store["up_blocks.1"][:1]).abs().max() <= 1e-4
