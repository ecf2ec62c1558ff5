"""Bad input at the public edge raises a clear error naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction, list_taps


@pytest.fixture(scope="module")
def sd_model(tiny_repos):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["mid_block"])


def _images(b=1, c=3, h=64, w=64):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("images,error,match", [
    (_images(c=4), ValueError, "3 \\(RGB\\) channels.*got 4"),
    (_images(h=60, w=64), ValueError, "multiples of 32"),
    (_images(b=0), ValueError, "empty batch"),
    (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN or inf"),
    (torch.full((1, 3, 64, 64), float("inf")), ValueError, "NaN or inf"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "value_range=\\(0, 255\\)"),
    (np.zeros((64, 64, 3), dtype=np.uint8), TypeError, "without a stated range"),
    ("not an image", TypeError, "torch.Tensor"),
    ([], ValueError, "empty list"),
    (torch.rand(64, 64), ValueError, "\\(B, 3, H, W\\)"),
])
def test_bad_images(sd_model, images, error, match):
    with pytest.raises(error, match=match):
        sd_model(images)


def test_integer_images_with_range_and_pil_are_accepted(sd_model):
    from PIL import Image

    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        from_int = sd_model(arr, value_range=(0, 255))["mid_block"]
        from_pil = sd_model(Image.fromarray(arr))["mid_block"]
        from_float = sd_model(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)["mid_block"]
    assert torch.allclose(from_int, from_float, atol=1e-5)
    assert torch.allclose(from_pil, from_float, atol=1e-5)


def test_unknown_tap_suggests_close_names(tiny_repos):
    with pytest.raises(ValueError, match="Unknown tap 'up_block.1'.*Closest valid names.*up_blocks.1"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["up_block.1"])


@pytest.mark.parametrize("tap,match", [
    ("up_blocks.7", "no module 'up_blocks.7'"),
    ("up_blocks.1:attn", "':attn' needs an Attention module"),
    ("mid_block:weights", "unknown suffix ':weights'"),
    ("adm.99", "numbered adm.1 .. adm."),
])
def test_taps_the_model_lacks(tiny_repos, tap, match):
    with pytest.raises(ValueError, match=match):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=[tap])


@pytest.mark.parametrize("timesteps", [[1000], [-1], [10, 5000]])
def test_timestep_outside_schedule(tiny_repos, timesteps):
    with pytest.raises(ValueError, match=r"outside \[0, 1000\)"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["pixel"], taps=["mid_block"], timesteps=timesteps)


def test_text_prompt_for_text_free_model(tiny_repos):
    with pytest.raises(ValueError, match="text-free.*takes no prompt"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["pixel"], taps=["mid_block"], prompt="a cat")


def test_bad_options(tiny_repos):
    with pytest.raises(ValueError, match="noise'\\]\\['kind'\\] = 'gaussian'"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["pixel"], taps=["mid_block"], noise="gaussian")
    with pytest.raises(ValueError, match="ensemble.*>= 1"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["pixel"], taps=["mid_block"], ensemble=0)
    with pytest.raises(TypeError, match="prompt must be"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=["mid_block"], prompt=3)


def test_bad_noise_shape(sd_model):
    with pytest.raises(ValueError, match="noise has shape \\(1, 4, 4, 4\\).*\\(1, 4, 8, 8\\)"):
        sd_model(_images(), noise=torch.zeros(1, 4, 4, 4))


def test_missing_folder_and_weights(tmp_path, tiny_repos):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(str(tmp_path / "nope" / "x"), taps=["mid_block"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers model"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(tmp_path / "empty", taps=["mid_block"])
    import shutil

    broken = tmp_path / "binonly"
    shutil.copytree(tiny_repos["pixel"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").rename(
        broken / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="loads safetensors only"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(broken, taps=["mid_block"])


def test_truncated_weights(tmp_path, tiny_repos):
    import shutil

    broken = tmp_path / "truncated"
    shutil.copytree(tiny_repos["pixel"], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RuntimeError, match="truncated or not a safetensors file"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(broken, taps=["mid_block"])


def test_offline_hub_repo_without_cache(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not in the local cache.*some-org/missing-model"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            "some-org/missing-model", taps=["mid_block"], local_files_only=True,
            cache_dir=tmp_path)


def test_call_time_prompt_needs_text_encoder(sd_model):
    with pytest.raises(ValueError, match="does not keep"):
        sd_model(_images(), prompt=["a cat"])


def test_list_taps_unknown_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_taps(str(tmp_path / "a" / "b"))
