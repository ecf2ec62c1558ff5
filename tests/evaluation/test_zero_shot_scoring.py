"""Zero-shot scoring against diffusers' own full U-Net, text encoding and noising."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.evaluation import caption_errors, noise_prediction_model, zero_shot_accuracy

CAPTIONS = ["a red cat", "a dog", "two birds"]
LATENT_SHAPE = (4, 8, 8)  # tiny SD: 64 px images, VAE factor 8


@pytest.fixture(scope="module")
def sd_pipe(tiny_repos):
    import diffusers

    return diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_repos["sd1"]), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def _images(n: int = 2) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 64, 64, generator=gen).numpy()  # (N, 3, H, W) in [0, 1]


@torch.no_grad()
def reference_errors(pipe, images: np.ndarray, captions, timesteps, seeds: int) -> np.ndarray:
    """The documented rule, on the pipeline's parts: draw s is randn((T, 1, N, C, h, w)) seeded
    1000 + s; each (image, caption) pair is noised by the scheduler, denoised by the full U-Net
    under the caption's pipeline encoding, and its squared error averaged over t and elements."""
    x = torch.from_numpy(images) * 2 - 1
    latent = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (N, 4, 8, 8)
    contexts = [pipe.encode_prompt(c, "cpu", 1, False)[0] for c in captions]  # each (1, L, D)
    errors = np.zeros((len(images), len(captions)))
    for s in range(seeds):
        gen = torch.Generator().manual_seed(1000 + s)
        eps = torch.randn(len(timesteps), 1, len(images), *latent.shape[1:], generator=gen)
        for i in range(len(images)):
            for c, context in enumerate(contexts):
                for j, t in enumerate(timesteps):
                    noise = eps[j, 0, i: i + 1]  # (1, 4, 8, 8)
                    t_batch = torch.tensor([t])
                    z = pipe.scheduler.add_noise(latent[i: i + 1], noise, t_batch)
                    pred = pipe.unet(z, t_batch, encoder_hidden_states=context).sample
                    errors[i, c] += (pred - noise).pow(2).mean().item() / len(timesteps)
    return errors / seeds


@pytest.mark.parametrize("timesteps,seeds", [([250], 1), ([100, 600], 2)])
def test_caption_errors_match_full_unet(tiny_repos, sd_pipe, timesteps, seeds):
    images = _images()
    model = noise_prediction_model(tiny_repos["sd1"], timesteps=timesteps, captions=CAPTIONS)
    got = caption_errors(model, images, CAPTIONS, seeds=seeds, batch_size=1,
                         latent_shape=LATENT_SHAPE, progress=False)
    ref = reference_errors(sd_pipe, images, CAPTIONS, timesteps, seeds)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # the batch size changes nothing: the noise is drawn for all images at once
    again = caption_errors(model, images, CAPTIONS, seeds=seeds, batch_size=2,
                           latent_shape=LATENT_SHAPE, progress=False)
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-6)


def test_zero_shot_accuracy_is_the_lowest_error_caption(tiny_repos, sd_pipe):
    images, labels = _images(3), np.array([0, 2, 1])
    ref = reference_errors(sd_pipe, images, CAPTIONS, [300], 1)
    expected = float((ref.argmin(axis=1) == labels).mean())
    got = zero_shot_accuracy(tiny_repos["sd1"], images, labels, CAPTIONS, timesteps=[300],
                             latent_shape=LATENT_SHAPE, progress=False)
    assert got == pytest.approx(expected, abs=1e-6)


def test_scorer_refuses_bad_input(tiny_repos, tmp_path):
    images = _images(1)
    model = noise_prediction_model(tiny_repos["sd1"], timesteps=[100], captions=CAPTIONS)
    kw = dict(latent_shape=LATENT_SHAPE, progress=False)
    with pytest.raises(ValueError):  # pixel-shaped noise for a latent model
        caption_errors(model, images, CAPTIONS, latent_shape=(3, 64, 64), progress=False)
    with pytest.raises(ValueError, match="empty"):
        caption_errors(model, images, [], **kw)
    with pytest.raises(TypeError, match="list of strings"):
        caption_errors(model, images, "a cat", **kw)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        caption_errors(model, images[0], CAPTIONS, **kw)
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        caption_errors(model, images.tolist(), CAPTIONS, **kw)
    with pytest.raises(ValueError, match="seeds"):
        caption_errors(model, images, CAPTIONS, seeds=0, **kw)
    with pytest.raises(ValueError, match="timesteps is empty"):
        noise_prediction_model(tiny_repos["sd1"], timesteps=[], captions=CAPTIONS)
    with pytest.raises(ValueError, match="indices into the 3 captions"):
        zero_shot_accuracy(tiny_repos["sd1"], images, np.array([3]), CAPTIONS, timesteps=[100], **kw)
    with pytest.raises(ValueError, match="one per image"):
        zero_shot_accuracy(tiny_repos["sd1"], images, np.array([0, 1]), CAPTIONS, timesteps=[100], **kw)
    features = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["mid_block"], timesteps=[100], prompt=CAPTIONS)
    with pytest.raises(ValueError, match="conv_out"):
        caption_errors(features, images, CAPTIONS, **kw)
    ensemble = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["conv_out"], timesteps=[100], prompt=CAPTIONS, ensemble=2)
    with pytest.raises(ValueError, match="ensemble=1"):
        caption_errors(ensemble, images, CAPTIONS, **kw)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_scorer_reads_the_output_as_the_scheduler_says(tiny_repos, tmp_path, prediction_type):
    """A v / sample network's output is the noise diffusers' own scheduler infers from it."""
    import diffusers

    folder = shutil.copytree(tiny_repos["sd1"], tmp_path / prediction_type)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": prediction_type}))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    scheduler = diffusers.DDPMScheduler.from_config(
        {**pipe.scheduler.config, "clip_sample": False, "thresholding": False})
    images, t = _images(1), 300
    model = noise_prediction_model(folder, timesteps=[t], captions=CAPTIONS)
    got = caption_errors(model, images, CAPTIONS, progress=False)
    eps = torch.randn(1, 1, 1, 4, 8, 8, generator=torch.Generator().manual_seed(1000))[0, 0]
    with torch.no_grad():
        x = torch.from_numpy(images) * 2 - 1
        latent = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        z = scheduler.add_noise(latent, eps, torch.tensor([t]))
        abar = scheduler.alphas_cumprod[t]
        expected = []
        for caption in CAPTIONS:
            out = pipe.unet(z, torch.tensor([t]),
                            encoder_hidden_states=pipe.encode_prompt(caption, "cpu", 1, False)[0]).sample
            x0 = scheduler.step(out, t, z).pred_original_sample
            eps_hat = (z - abar.sqrt() * x0) / (1 - abar).sqrt()
            expected.append((eps_hat - eps).pow(2).mean().item())
    np.testing.assert_allclose(got[0], expected, rtol=1e-4)
