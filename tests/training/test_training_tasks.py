"""The training loop's task hook: a segmentation model trains on image + mask splits, its
per-epoch metric equals a recount from the saved model's own forward, parameters that train
inside the trunk reach the checkpoints, and a model without a task is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import linear_classifier  # tests/training/conftest.py

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForSemanticSegmentation
from diffperception.modeling import load_preset
from diffperception.training import (
    TrainingArguments,
    class_names,
    latest_checkpoint,
    model_from_config,
    train,
    training_task,
)
from diffperception.training.segmentation import SegmentedImages

IGNORE = 255


def _ink_masks(split: str, count: int):
    """Digits with masks: 0 background, 1 ink (pixel > 0.5), 255 on a 2-pixel border."""
    import datasets

    from diffperception.data import load_image_dataset

    rows = load_image_dataset("digits", split).select(range(count))
    images, masks = [], []
    for image in rows["image"]:
        array = np.asarray(image, dtype=np.float32)  # (3, 32, 32) in [0, 1]
        mask = (array.mean(0) > 0.5).astype(np.uint8)
        mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = IGNORE, IGNORE, IGNORE, IGNORE
        images.append(array.transpose(1, 2, 0))
        masks.append(mask)
    return datasets.Dataset.from_dict({"image": images, "mask": masks})


def _segmenter(seed: int = 0) -> DiffusionPerceptionForSemanticSegmentation:
    torch.manual_seed(seed)
    config = load_preset("digits-default")
    config["architecture"] = "DiffusionPerceptionForSemanticSegmentation"
    return model_from_config(config, labels=["background", "ink"], taps=["up_blocks.0"],
                             timesteps=[50], head={"type": "linear_segmentation"})


def test_a_segmentation_model_trains_and_reports_its_pixel_accuracy(tmp_path):
    train_data, eval_data = _ink_masks("train", 12), _ink_masks("test", 6)
    model = _segmenter()
    args = TrainingArguments(str(tmp_path / "run"), epochs=2, batch_size=4, augment="code",
                             learning_rate=0.5, progress=False)
    history = train(model, train_data, args, eval_data=eval_data)
    assert [sorted(h) for h in history][-1] == sorted(
        ["epoch", "lr", "train_loss", "train_pixel_accuracy", "eval_loss",
         "eval_pixel_accuracy", "seconds", "cached"])
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "run")
    assert type(loaded) is DiffusionPerceptionForSemanticSegmentation
    view = SegmentedImages(eval_data, 32)
    per_image, losses = [], []
    for i in range(len(view)):
        sample = view[i]
        with torch.no_grad():
            out = loaded(sample["pixel_values"][None], labels=sample["labels"][None])
        keep = sample["labels"] != IGNORE
        right = (out.logits[0].argmax(0) == sample["labels"]) & keep
        per_image.append(right.sum().item() / keep.sum().item())
        losses.append(out.loss.item())
    assert history[-1]["eval_pixel_accuracy"] == pytest.approx(np.mean(per_image), abs=1e-6)
    assert history[-1]["eval_loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_segmented_images_give_image_and_mask_the_same_geometry():
    data = _ink_masks("train", 3)
    view = SegmentedImages(data, 24, augment="code", seed=3)
    for i in range(3):
        sample = view[i]
        assert sample["pixel_values"].shape == (3, 24, 24) and sample["labels"].shape == (24, 24)
        ink = sample["labels"] == 1
        # ink pixels stay bright and background dark after the shared crop, resize and flip
        brightness = sample["pixel_values"].mean(0)
        assert brightness[ink].mean() > brightness[sample["labels"] == 0].mean() + 0.3
    with pytest.raises(ValueError, match="'image' and 'mask' columns"):
        SegmentedImages(data.remove_columns("mask"), 24)


def test_parameters_trained_inside_the_trunk_reach_the_checkpoint(tmp_path, digits_small):
    train_data, _ = digits_small
    model = linear_classifier(class_names(train_data))
    key = "backbone.unet.down_blocks.0.resnets.0.norm1.weight"
    weight = dict(model.named_parameters())[key]
    weight.requires_grad_(True)
    before = weight.detach().clone()
    args = TrainingArguments(str(tmp_path / "run"), epochs=1, batch_size=8, augment="none",
                             feature_cache="off", progress=False)
    train(model, train_data, args)
    saved = load_file(str(latest_checkpoint(tmp_path / "run") / "trainable.safetensors"))
    assert key in saved and not torch.equal(saved[key], before)
    assert torch.equal(saved[key], weight.detach())
    assert not any(k.startswith("backbone.unet.") and k != key for k in saved)


def test_a_model_without_a_training_task_is_refused(tmp_path):
    from diffperception import DiffusionPerceptionForFeatureExtraction

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50])
    with pytest.raises(ValueError, match="no training task is registered"):
        training_task(model)


def _comvg_replica(root):
    """A ComVG folder in its own layout: the training CSV and vg_concept/<id>.jpg."""
    import csv

    from PIL import Image

    (root / "vg_concept").mkdir(parents=True)
    for image_id in range(1, 5):
        Image.new("RGB", (40, 40), (60 * image_id, 0, 0)).save(root / "vg_concept" /
                                                                f"{image_id}.jpg")
    with (root / "comvg_train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "pos_image_id", "neg_image_id", "neg_value"])
        for i in range(10):
            writer.writerow([f"a digit number {i}", 1 + i % 4, 1 + (i + 1) % 4,
                             ["subject", "object", "verb"][i % 3]])
    return root


def test_each_task_loads_its_own_data_for_the_train_command(tmp_path):
    from diffperception.data.matching import load_comvg
    from diffperception.training.task import task_for_architecture

    root = _comvg_replica(tmp_path / "comvg")
    task = task_for_architecture("DiffusionPerceptionForImageTextMatching")
    every = [r.sentence for r in load_comvg(root, "train")]
    subset = [r.sentence for r in task.load_data(str(root), "train", fraction=0.3, seed=4)]
    again = [r.sentence for r in task.load_data(str(root), "train", fraction=0.3, seed=4)]
    other = [r.sentence for r in task.load_data(str(root), "train", fraction=0.3, seed=5)]
    assert len(subset) == 3 and subset == again and set(subset) < set(every)
    assert subset == [s for s in every if s in subset] and other != subset
    with pytest.raises(ValueError, match="Use --fraction"):
        task.load_data(str(root), "train", shots=2)
    digits = task_for_architecture("DiffusionPerceptionForImageClassification").load_data(
        "digits", "train", shots=2)
    assert len(digits) == 20
    with pytest.raises(ValueError, match="no training task is registered"):
        task_for_architecture("DiffusionPerceptionForFeatureExtraction")


@pytest.mark.slow
def test_train_command_trains_a_matching_model_on_comvg_rows(tmp_path):
    from diffperception.cli import main

    root = _comvg_replica(tmp_path / "comvg")
    out = tmp_path / "run"
    assert main(["train", "--preset", "discffusion-digits", "--data", str(root),
                 "--fraction", "0.4", "--epochs", "1", "--batch-size", "2", "--out", str(out),
                 "--quiet"]) == 0
    log = __import__("json").loads((out / "training_log.json").read_text())
    assert log["arguments"]["optimizer"] == "adamw" and len(log["epochs"]) == 1
