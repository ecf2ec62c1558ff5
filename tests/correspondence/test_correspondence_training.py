"""GDF's conv aggregator trained by the shared loop (the correspondence training task): the task's
loss equals ``correspondence_loss`` on the model's descriptors of the resized pair, training runs
through ``train()`` with GDF's optimiser, lowers the loss on its own pairs and saves a model that
reloads with the trained head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForSemanticCorrespondence
from diffperception.data.correspondence import CorrespondencePair
from diffperception.modeling.semantic_correspondence import correspondence_loss
from diffperception.training import TrainingArguments, train, training_task


def _pairs(n: int, seed: int = 0) -> list[CorrespondencePair]:
    """Smooth random images and their translated copies (shift known exactly)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        base = rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)
        image = np.kron(base, np.ones((8, 8, 1), np.uint8))  # (96, 96, 3), blocky texture
        dx, dy = (int(v) for v in rng.integers(-16, 17, 2))
        target = np.roll(image, (dy, dx), axis=(0, 1))
        src = rng.uniform(20, 76, (5, 2)).astype(np.float32)
        pairs.append(CorrespondencePair(image, target, src, src + np.array([dx, dy], np.float32),
                                        category="texture", name=f"pair-{i}"))
    return pairs


def _model(tiny_repos):
    torch.manual_seed(0)
    return DiffusionPerceptionForSemanticCorrespondence({
        "architecture": "DiffusionPerceptionForSemanticCorrespondence",
        "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
        "features": {"taps": ["up_ft.1", "up_blocks.2"], "timesteps": [261]},
        "preprocess": {"size": [64, 64], "crop": "none"},
        "head": {"type": "correspondence", "aggregator": "conv"},
    })


def test_task_loss_is_the_gdf_loss_on_the_resized_pair(tiny_repos):
    model = _model(tiny_repos).eval()
    task = training_task(model)
    assert task.recipe(model) == {"optimizer": "adamw", "learning_rate": 5e-4}
    pairs = _pairs(2)
    view = task.view(model, pairs, augment="none", seed=0, train=True)
    batch = task.collate([view[0], view[1]])
    with torch.no_grad():
        out = task.step(model, batch)
        expected = []
        for pair in pairs:
            src = model(pair.source[None].transpose(0, 3, 1, 2) / 255.0).embeddings[0]
            tgt = model(pair.target[None].transpose(0, 3, 1, 2) / 255.0).embeddings[0]
            # the model resizes the 96 px images to 64 px itself; points scale by 64 / 96
            expected.append(correspondence_loss(src, tgt, torch.from_numpy(pair.source_points),
                                                torch.from_numpy(pair.target_points),
                                                (96, 96), (96, 96)))
    # the view resizes with antialiasing, the model's preprocess too (bicubic): same images
    assert out.loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-3)
    assert out.per_sample["pck@0.1"].shape == (2,)


def test_training_lowers_the_loss_and_saves_the_head(tiny_repos, tmp_path):
    model = _model(tiny_repos)
    before = model.head.conv.weight.detach().clone()
    history = train(model, _pairs(6), TrainingArguments(
        output_dir=str(tmp_path / "run"), epochs=3, batch_size=2, weight_decay=0.01,
        progress=False, cpu=True, feature_cache="off"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "train_pck@0.1" in history[-1]
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "run")
    assert not torch.equal(loaded.head.conv.weight, before)
    assert torch.equal(loaded.head.conv.weight, model.head.conv.weight.cpu())


def test_other_data_is_a_clear_error(tiny_repos, tmp_path):
    with pytest.raises(ValueError, match="list of CorrespondencePair"):
        train(_model(tiny_repos), [1, 2, 3], TrainingArguments(output_dir=str(tmp_path),
                                                                epochs=1, progress=False))


def test_train_command_on_an_spair_layout(tiny_repos, tmp_path):
    """`diffperception train` with a correspondence config reads keypoint pairs (SPair-71k's
    layout) instead of labelled images."""
    import json

    from PIL import Image

    from diffperception.cli import main

    root = tmp_path / "SPair-71k"
    (root / "PairAnnotation" / "trn").mkdir(parents=True)
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    for i, pair in enumerate(_pairs(2)):
        Image.fromarray(pair.source).save(root / "JPEGImages" / "cat" / f"s{i}.jpg")
        Image.fromarray(pair.target).save(root / "JPEGImages" / "cat" / f"t{i}.jpg")
        ann = {"src_imname": f"s{i}.jpg", "trg_imname": f"t{i}.jpg", "category": "cat",
               "src_kps": pair.source_points.tolist(), "trg_kps": pair.target_points.tolist(),
               "trg_bndbox": [0, 0, 95, 95]}
        (root / "PairAnnotation" / "trn" / f"{i:06d}.json").write_text(json.dumps(ann))
    config = _model(tiny_repos).saved_config()
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["train", "--config", str(tmp_path / "config.json"), "--data", str(root),
                 "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "1",
                 "--quiet", "--cpu"]) == 0
    assert type(AutoDiffusionPerception.from_pretrained(tmp_path / "out")).__name__ == \
        "DiffusionPerceptionForSemanticCorrespondence"
