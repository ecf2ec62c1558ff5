"""`diffperception evaluate` end to end on a tiny classifier saved in the test, and the seeded,
every-image evaluation behind it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageClassification
from diffperception.cli import main
from diffperception.data import class_names, load_image_dataset
from diffperception.evaluation import evaluate_classifier, knn_accuracy, pooled_features

NUM_TEST, NUM_TRAIN = 21, 30


@pytest.fixture(scope="module")
def digits_subset(tmp_path_factory):
    """A saved DatasetDict: 30 train and 21 test digits (32 px arrays)."""
    import datasets

    folder = tmp_path_factory.mktemp("digits_subset")
    train = load_image_dataset("digits", "train").select(range(NUM_TRAIN))
    test = load_image_dataset("digits", "test").select(range(NUM_TEST))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return folder


def _classifier(noise: str = "fixed") -> DiffusionPerceptionForImageClassification:
    torch.manual_seed(0)  # the head's initialisation
    labels = class_names(load_image_dataset("digits", "test"))
    return DiffusionPerceptionForImageClassification.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50], noise=noise,
        head={"type": "linear", "pool": 2}, labels=labels)


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    """The tiny classifier with its linear head fit (logistic regression) on 200 train digits,
    so that top-1 is far from both 0 and 1."""
    from sklearn.linear_model import LogisticRegression

    model = _classifier()
    train = load_image_dataset("digits", "train").select(range(200, 400))
    feats, labels = pooled_features(model.backbone, train, pool=2, progress=False)
    fit = LogisticRegression(max_iter=2000).fit(feats["mid_block"][:, 0], labels)
    model.head.classifier.weight.data = torch.from_numpy(fit.coef_).float()
    model.head.classifier.bias.data = torch.from_numpy(fit.intercept_).float()
    folder = tmp_path_factory.mktemp("classifier") / "digits-linear"
    model.save_pretrained(folder)
    return folder


def _direct(folder, images):
    model = AutoDiffusionPerception.from_pretrained(folder)
    with torch.no_grad():
        return model(torch.from_numpy(images)).logits.double().numpy()  # (N, 10)


def test_evaluate_writes_json_png_and_card(saved_classifier, digits_subset, capsys):
    rc = main(["evaluate", str(saved_classifier), "--data", str(digits_subset),
               "--batch-size", "8", "--no-progress"])  # 21 = 8 + 8 + 5: the short batch counts
    assert rc == 0
    report = json.loads((saved_classifier / "eval_test.json").read_text())
    assert (saved_classifier / "confusion_test.png").stat().st_size > 1000

    test = load_image_dataset(digits_subset, "test").with_format("numpy")[:]
    logits, labels = _direct(saved_classifier, test["image"]), test["label"]
    ranked = np.argsort(-logits, axis=1, kind="stable")
    top1 = float(np.mean(ranked[:, 0] == labels))
    top5 = float(np.mean([label in row[:5] for label, row in zip(labels, ranked)]))
    assert report["num_images"] == NUM_TEST
    assert 0.3 < top1 < 1.0 and top1 < top5  # the check below can tell top-1 from top-5
    assert report["top1"] == pytest.approx(top1, abs=1e-12)
    assert report["top5"] == pytest.approx(top5, abs=1e-12)
    confusion = np.array(report["confusion"])
    assert confusion.sum() == NUM_TEST
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    assert np.trace(confusion) == round(top1 * NUM_TEST)
    out = capsys.readouterr().out
    assert f"top-1: {100 * top1:.2f}% ({round(top1 * NUM_TEST)} of {NUM_TEST})" in out

    from huggingface_hub import ModelCard

    results = ModelCard.load(saved_classifier / "README.md").data.eval_results
    values = {r.metric_type: r.metric_value for r in results}
    assert values == {"accuracy": pytest.approx(top1), "top_5_accuracy": pytest.approx(top5)}
    assert {r.dataset_split for r in results} == {"test"}

    # a second run replaces the card's entries rather than adding to them, and gives the same
    # numbers (seeded); the folder still loads
    assert main(["evaluate", str(saved_classifier), "--data", str(digits_subset),
                 "--batch-size", "5", "--no-progress"]) == 0
    again = json.loads((saved_classifier / "eval_test.json").read_text())
    assert again["top1"] == report["top1"] and again["confusion"] == report["confusion"]
    assert len(ModelCard.load(saved_classifier / "README.md").data.eval_results) == 2
    AutoDiffusionPerception.from_pretrained(saved_classifier)


def test_evaluate_knn_on_the_backbone_features(saved_classifier, digits_subset, tmp_path):
    out = tmp_path / "results"
    rc = main(["evaluate", str(saved_classifier), "--data", str(digits_subset), "--knn",
               "--knn-k", "5,20,200", "--out", str(out), "--no-card", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "eval_test.json").read_text())
    assert report["knn_settings"]["skipped_k"] == [200]  # only 30 train images
    assert report["knn_settings"]["temperature"] == 0.07

    model = AutoDiffusionPerception.from_pretrained(saved_classifier)
    train = load_image_dataset(digits_subset, "train")
    test = load_image_dataset(digits_subset, "test")
    train_x, train_y = pooled_features(model.backbone, train, pool=1, progress=False)
    test_x, test_y = pooled_features(model.backbone, test, pool=1, progress=False)
    expected = knn_accuracy(train_x["mid_block"], train_y, test_x["mid_block"], test_y, ks=[5, 20])
    assert set(report["knn"]) == {"5", "20"}
    for k in (5, 20):
        assert report["knn"][str(k)] == pytest.approx(expected[k])
    assert not (saved_classifier / "results").exists()


def test_random_noise_is_seeded_and_every_image_counts(digits_subset):
    model = _classifier(noise="random")
    test = load_image_dataset(digits_subset, "test")
    before = torch.random.get_rng_state()
    a = evaluate_classifier(model, test, batch_size=4, seed=3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator untouched
    b = evaluate_classifier(model, test, batch_size=4, seed=3, progress=False)
    assert a.num_images == NUM_TEST and a.confusion.sum() == NUM_TEST
    assert a.top1 == b.top1 and np.array_equal(a.confusion, b.confusion)

    from diffperception.evaluation.classification import classifier_logits

    with torch.random.fork_rng():
        torch.manual_seed(3)
        first, _ = classifier_logits(model, test, batch_size=4, progress=False)
        torch.manual_seed(4)
        other, _ = classifier_logits(model, test, batch_size=4, progress=False)
    assert not np.allclose(first, other)  # the noise is random, so the seed matters


def test_image_folder_classes_map_by_name(saved_classifier, tmp_path):
    from PIL import Image

    digits = load_image_dataset("digits", "test").with_format("numpy")[:]
    names = class_names(load_image_dataset("digits", "test"))
    root = tmp_path / "folder"
    kept = []
    for label, count in ((0, 4), (1, 3)):  # 4 zeros, 3 ones
        for i in np.flatnonzero(digits["label"] == label)[:count]:
            (root / "test" / names[label]).mkdir(parents=True, exist_ok=True)
            pixels = (np.transpose(digits["image"][i], (1, 2, 0)) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / "test" / names[label] / f"{i}.png")
            kept.append(label)
    model = AutoDiffusionPerception.from_pretrained(saved_classifier)
    result = evaluate_classifier(model, load_image_dataset(root, "test"), batch_size=3,
                                 progress=False)
    assert result.num_images == len(kept)
    # folder classes are sorted ("one", "zero"), the model's are "zero", "one", ...
    np.testing.assert_array_equal(result.confusion.sum(axis=1)[:2],
                                  [kept.count(0), kept.count(1)])
    assert result.confusion[2:].sum() == 0


def test_evaluate_refuses_what_it_cannot_evaluate(saved_classifier, digits_subset, tmp_path,
                                                 capsys):
    from diffperception import DiffusionPerceptionForFeatureExtraction

    features = tmp_path / "features"
    DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50]).save_pretrained(features)
    assert main(["evaluate", str(features), "--data", str(digits_subset)]) == 2
    assert "evaluates image classifiers" in capsys.readouterr().err
    assert main(["evaluate", str(saved_classifier), "--data", str(digits_subset),
                 "--split", "validation"]) == 2
    assert "not 'validation'" in capsys.readouterr().err
