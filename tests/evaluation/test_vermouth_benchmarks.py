"""The ZS-SBIR, open-vocabulary segmentation and CoOp few-shot benchmarks: each result equals
the metric computed in the test from the model's own outputs (written out here), and a replica
built so that retrieval is perfect scores 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffperception import (
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForImageClassification,
    DiffusionPerceptionForSemanticSegmentation,
)
from diffperception.cli import main
from diffperception.evaluation import get_benchmark, list_benchmarks
from diffperception.evaluation.open_vocabulary import adopt_labels
from diffperception.evaluation.retrieval import retrieval_metrics
from diffperception.evaluation.sbir import (
    EmbeddingOutput,
    PixelEmbedder,
    PooledFeatureEmbedder,
    evaluate_retrieval,
)


def test_benchmarks_are_registered():
    assert {"sketchy", "tuberlin", "quickdraw", "digits-sketch", "digits-canvas",
            "coop-fewshot"} <= set(list_benchmarks())


@pytest.fixture(scope="module")
def sketch_test():
    pytest.importorskip("skimage")
    from diffperception.data import load_image_dataset

    return load_image_dataset("digits-sketch", "test")


def test_digits_sketch_pixels_equal_metrics_written_out(sketch_test):
    result = get_benchmark("digits-sketch").run(PixelEmbedder(32), "digits-sketch", "test",
                                                batch_size=50, progress=False)
    images = np.asarray(sketch_test["image"], dtype=np.float32).reshape(len(sketch_test), -1)
    images = images - images.mean(1, keepdims=True)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    labels, domains = np.asarray(sketch_test["label"]), np.asarray(sketch_test["domain"])
    expected = retrieval_metrics(images[domains == 1], labels[domains == 1],
                                 images[domains == 0], labels[domains == 0])
    assert result.metrics == pytest.approx(expected, abs=1e-6)
    assert result.num_samples == int((domains == 1).sum())
    assert result.details["classes"] == ["seven", "eight", "nine"]


def test_pooled_diffusion_features_as_embeddings(sketch_test):
    small = sketch_test.select(range(24))
    extractor = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[200], noise="fixed", seed=0,
        prompt="").eval()
    out = evaluate_retrieval(PooledFeatureEmbedder(extractor), small, batch_size=5,
                             progress=False)
    images = torch.from_numpy(np.asarray(small["image"], dtype=np.float32))
    with torch.no_grad():
        feats = extractor(images)["mid_block"]  # (24, C, h, w)
    emb = F.normalize(feats.mean(dim=(2, 3)), dim=1)
    labels, domains = np.asarray(small["label"]), np.asarray(small["domain"])
    expected = retrieval_metrics(emb[domains == 1], labels[domains == 1], emb[domains == 0],
                                 labels[domains == 0])
    assert out["metrics"] == pytest.approx(expected, abs=1e-5)
    assert out["num_queries"] + out["num_gallery"] == 24


class ColourEmbedder(torch.nn.Module):
    """Embeds a PIL image by its mean colour, as an angle on the unit circle."""

    def forward(self, images):
        mean = torch.tensor([np.asarray(image, dtype=np.float32).mean() for image in images])
        angle = mean / 255 * torch.pi
        return EmbeddingOutput(embeddings=torch.stack([angle.cos(), angle.sin()], dim=1))


def _sketchy_split2_replica(root: Path, per_class: int = 2) -> int:
    """Sketchy split-2 file lists; every image of a class has that class's colour."""
    split = root / "zeroshot2"
    split.mkdir(parents=True)
    seen = [f"seen{i}" for i in range(104)]
    (split / "cname_cid.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(seen)))
    names = ["hot-air balloon" if i == 0 else f"unseen{i}" for i in range(21)]
    (split / "cname_cid_zero.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    for stem, kind in (("sketch_tx_000000000000_ready_filelist", "sketch"),
                       ("all_photo_filelist", "photo")):
        lines = []
        for cid, name in enumerate(names[:5]):
            for k in range(per_class):
                rel = f"{kind}/{name}/{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((5, 5, 3), 40 * cid, dtype=np.uint8)).save(root / rel)
                lines.append(f"{rel} {cid}\n")
        (split / f"{stem}_zero.txt").write_text("".join(lines))
        (split / f"{stem}_train.txt").write_text("")
    return per_class


def test_sketchy_replica_with_perfect_embeddings_scores_one(tmp_path):
    per_class = _sketchy_split2_replica(tmp_path)
    bench = get_benchmark("sketchy")
    result = bench.run(ColourEmbedder(), tmp_path, "split2", batch_size=3, progress=False)
    assert result.metrics["map@all"] == pytest.approx(1.0)
    assert result.metrics["map@200_class_voc"] == pytest.approx(1.0)
    assert result.metrics["p@100"] == pytest.approx(per_class / 100)
    assert result.num_samples == 5 * per_class
    assert result.details["conventional"] == ["map@200", "p@200"]
    assert "mAP@200: 100.00%" in bench.format(result)
    with pytest.raises(ValueError, match="'limit', not"):
        bench.run(ColourEmbedder(), tmp_path, "split2", progress=False, top=5)
    with pytest.raises(ValueError, match="'embeddings'"):
        bench.run(lambda images: {"logits": torch.zeros(len(images), 3)}, tmp_path, "split2",
                  progress=False)


def _canvas_model(labels):
    torch.manual_seed(0)
    return DiffusionPerceptionForSemanticSegmentation.from_diffusers(
        "diffperception:default", taps=["up_blocks.1"], timesteps=[50], noise="fixed", seed=0,
        prompt="", size=(64, 64), head={"type": "linear_segmentation"}, labels=labels).eval()


def _iou_by_hand(preds: np.ndarray, masks: np.ndarray, k: int) -> list[float]:
    ious = []
    for c in range(k):
        inter = np.sum((preds == c) & (masks == c))
        union = np.sum((preds == c) | (masks == c))
        ious.append(inter / union if union else float("nan"))
    return ious


def test_digits_canvas_through_the_cli(tmp_path):
    from diffperception.data.standins import digits_canvas, segmentation_info

    test = digits_canvas("test", count=4)
    info = segmentation_info(test)
    model = _canvas_model(list(info.labels))
    folder = tmp_path / "seg"
    model.save_pretrained(folder)
    assert main(["evaluate", str(folder), "--benchmark", "digits-canvas", "--data",
                 "digits-canvas", "--benchmark-option", "limit=4", "--batch-size", "3",
                 "--no-progress", "--no-card"]) == 0
    written = json.loads((folder / "eval_digits-canvas_test.json").read_text())
    images = torch.from_numpy(np.asarray(test["image"], dtype=np.float32))
    masks = np.asarray(test["mask"])
    with torch.no_grad():
        preds = model(images).logits.argmax(1).numpy()
    iou = _iou_by_hand(preds, masks, len(info.labels))
    seen = np.nanmean([iou[c] for c in info.seen])
    unseen = np.nanmean([iou[c] for c in info.unseen])
    assert written["metrics"]["miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)
    assert written["metrics"]["miou_seen"] == pytest.approx(seen, abs=1e-6)
    assert written["metrics"]["miou_unseen"] == pytest.approx(unseen, abs=1e-6)
    assert written["metrics"]["hiou"] == pytest.approx(2 * seen * unseen / (seen + unseen),
                                                       abs=1e-6)


def test_labels_are_handed_to_open_vocabulary_models_only():
    closed = _canvas_model(["background", "zero"])
    with pytest.raises(ValueError, match="cannot take new ones"):
        get_benchmark("digits-canvas").run(closed, "digits-canvas", "test", limit=2,
                                           progress=False)

    class OpenVocabulary:
        class config:  # noqa: N801 - mimics model.config
            labels = ["a", "b"]

        def set_labels(self, names):
            self.config.labels = list(names)

    model = OpenVocabulary()
    assert adopt_labels(model, ["x", "y", "z"]) and model.config.labels == ["x", "y", "z"]
    assert not adopt_labels(model, ["x", "y", "z"])

    class TrainedPerClass(OpenVocabulary):
        def set_labels(self, names):
            raise TypeError("the linear head is trained per class")

    with pytest.raises(ValueError, match="trained per class"):
        adopt_labels(TrainedPerClass(), ["p", "q"])


def test_coop_fewshot_top1_equals_the_models_argmax(tmp_path):
    names = ["cat", "dog", "fox"]
    root = tmp_path / "oxford_pets"
    entries = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(0)
    for part in entries:
        for label, name in enumerate(names):
            for i in range(3):
                rel = f"{name}_{part}_{i}.png"
                (root / "images").mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / rel)
                entries[part].append([rel, label, name])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(entries))
    torch.manual_seed(0)
    model = DiffusionPerceptionForImageClassification.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50], noise="fixed", seed=0,
        prompt="", head={"type": "linear", "pool": 1}, labels=names).eval()
    result = get_benchmark("coop-fewshot").run(model, root, "test", batch_size=4,
                                               progress=False)
    images = [Image.open(root / "images" / e[0]).convert("RGB") for e in entries["test"]]
    with torch.no_grad():
        preds = model(images).logits.argmax(1).numpy()
    expected = float(np.mean(preds == np.array([e[1] for e in entries["test"]])))
    assert result.metrics["top1"] == pytest.approx(expected)
    assert result.num_samples == 9
    wrong = DiffusionPerceptionForImageClassification.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50],
        head={"type": "linear", "pool": 1}, labels=["cat", "dog"])
    with pytest.raises(ValueError, match="cannot take new ones"):
        get_benchmark("coop-fewshot").run(wrong, root, "test", progress=False)


def test_retrieval_against_baselines_runs_each_feature_kind(sketch_test):
    from diffperception.default_model import DEFAULT_MODEL_PATH
    from diffperception.evaluation.sbir import retrieval_against_baselines

    small = sketch_test.select(range(20))
    out = retrieval_against_baselines(DEFAULT_MODEL_PATH, small, taps=["mid_block"],
                                      timesteps=[50], progress=False)
    extractor = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50], noise="fixed", seed=0,
        prompt="").eval()
    trained = evaluate_retrieval(PooledFeatureEmbedder(extractor), small, progress=False)
    pixels = evaluate_retrieval(PixelEmbedder(32), small, progress=False)
    assert out["trained"][50] == pytest.approx(trained["metrics"])
    assert out["pixels"] == pytest.approx(pixels["metrics"])
    assert out["random"][50] != out["trained"][50]
