"""The linear probe on hand-made tables, and probe features through the product API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.evaluation import linear_probe, probe_features, probe_grid, random_weight_copy

CENTRES = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])  # three classes, far apart


def _blobs(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + 0.3 * rng.standard_normal((per_class, 3)) for c in CENTRES])
    y = np.repeat(np.arange(len(CENTRES)), per_class)
    return x, y


def test_separable_table_is_learned_exactly():
    train_x, train_y = _blobs(20, seed=0)
    test_x, test_y = _blobs(10, seed=1)
    assert linear_probe(train_x, train_y, test_x, test_y) == 1.0


def test_accuracy_counts_the_wrong_labels():
    train_x, train_y = _blobs(20, seed=0)
    test_x = np.repeat(CENTRES, 4, axis=0)  # 12 points, each at its class centre
    test_y = np.repeat(np.arange(3), 4)
    test_y[[0, 5, 11]] = [1, 2, 0]  # three deliberately wrong labels
    assert linear_probe(train_x, train_y, test_x, test_y) == pytest.approx(9 / 12)


def test_label_values_and_trailing_dimensions():
    train_x, train_y = _blobs(20, seed=0)
    test_x, test_y = _blobs(10, seed=1)
    values = np.array([7, 3, 11])  # not 0..K-1
    acc = linear_probe(train_x.reshape(-1, 3, 1), values[train_y], test_x.reshape(-1, 1, 3),
                       values[test_y])
    assert acc == 1.0


def test_probe_refuses_bad_tables():
    x, y = _blobs(5, seed=0)
    with pytest.raises(ValueError, match="one label per row"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(x, np.zeros(len(x), dtype=int), x, y)
    with pytest.raises(ValueError, match="that train_y lacks"):
        linear_probe(x, y, x, np.full(len(x), 9))
    with pytest.raises(ValueError, match="features per sample"):
        linear_probe(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="N >= 1"):
        linear_probe(x[:0], y[:0], x, y)


def test_probe_features_are_pooled_model_outputs(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["pixel"], taps=["mid_block", "up_blocks.1"], timesteps=[50, 400])
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    feats = probe_features(model, images, pool=2, batch_size=2, progress=False)
    with torch.no_grad():
        direct = model(torch.from_numpy(images))  # {tap: (B, T, C, h, w)}
    for tap, value in direct.items():
        expected = F.adaptive_avg_pool2d(value.flatten(0, 1), 2).reshape(5, 2, -1)
        assert feats[tap].shape == (5, 2, value.shape[2] * 4)
        np.testing.assert_allclose(feats[tap], expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        probe_features(model, images, pool=0, progress=False)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        probe_features(model, images[0], progress=False)


def test_probe_grid_has_one_accuracy_per_tap_and_timestep(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["pixel"], taps=["mid_block"], timesteps=[50, 400])
    gen = torch.Generator().manual_seed(0)
    labels = np.arange(12) % 2
    images = (torch.rand(12, 3, 32, 32, generator=gen) * 0.2
              + 0.8 * torch.from_numpy(labels).float().view(-1, 1, 1, 1)).numpy()  # bright vs dark
    grid = probe_grid(model, images[:8], labels[:8], images[8:], labels[8:], progress=False)
    assert set(grid) == {"mid_block"} and set(grid["mid_block"]) == {50, 400}
    assert all(0.0 <= acc <= 1.0 for acc in grid["mid_block"].values())


def test_random_weight_copy(tiny_repos, tmp_path):
    from safetensors.torch import load_file

    def weights(folder):
        return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))

    a = random_weight_copy(tiny_repos["pixel"], tmp_path / "a", seed=3)
    b = random_weight_copy(tiny_repos["pixel"], tmp_path / "b", seed=3)
    original, wa, wb = weights(tiny_repos["pixel"]), weights(a), weights(b)
    assert wa.keys() == original.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded
    assert any(not torch.equal(wa[k], original[k]) for k in wa)  # fresh
    assert (a / "scheduler" / "scheduler_config.json").is_file()
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        random_weight_copy(tmp_path / "missing", tmp_path / "c")
