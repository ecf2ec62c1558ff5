"""The heads-on-digits benchmark's core on a tiny setting: one linear-probe run (1 image per class,
1 epoch, 20 test images) is scored on the model it saved, a second call resumes it instead of
training again, the random-weight twin is made once, and the table shows exactly the run it got.
No accuracy is asserted."""

from __future__ import annotations

import json

import pytest
import torch

from diffperception.benchmarks.heads_digits import (Scenario, markdown_table, random_weights_folder,
                                                    run_scenario)

TEST_IMAGES = 20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("heads-digits")
    scenario = Scenario("gd-linear-digits", "trained", shots=1, epochs=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = run_scenario(scenario, work, work / "cache", test_limit=TEST_IMAGES)
    finally:
        torch.set_num_threads(previous)
    return scenario, work, record


def test_accuracy_is_the_saved_models_on_the_test_subset(tiny_run):
    from diffperception import AutoDiffusionPerception
    from diffperception.evaluation import load_split
    from diffperception.evaluation.splits import image_batches

    scenario, work, record = tiny_run
    folder = work / "runs" / scenario.key.replace("/", "__")
    model = AutoDiffusionPerception.from_pretrained(folder).eval()
    test = load_split("digits", "test", limit=TEST_IMAGES, seed=scenario.seed)
    names = test.features["label"].names
    (images, labels), = image_batches(test, TEST_IMAGES)  # one batch: the whole subset
    with torch.no_grad():
        predicted = model(images).logits.argmax(-1)  # (N,) in the model's label order
    truth = torch.tensor([model.config.labels.index(names[y]) for y in labels])
    assert record["test_images"] == TEST_IMAGES and record["train_images"] == 10
    assert record["correct"] == int((predicted == truth).sum())
    assert record["top1"] == pytest.approx(record["correct"] / TEST_IMAGES)
    assert record["last_epoch"]["epoch"] == 1 and record["feature_cache_used"]
    log = json.loads((folder / "training_log.json").read_text())
    assert log["epochs"][-1]["train_loss"] == pytest.approx(record["last_epoch"]["train_loss"])


def test_a_second_call_resumes_and_scores_the_same(tiny_run):
    scenario, work, record = tiny_run
    again = run_scenario(scenario, work, work / "cache", test_limit=TEST_IMAGES)
    assert again["last_epoch"] == record["last_epoch"]  # no epoch trained twice
    assert again["top1"] == record["top1"]


def test_random_twin_is_made_once(tmp_path):
    first = random_weights_folder(tmp_path)
    weights = sorted((first / "unet").glob("*.safetensors"))
    stamp = [w.stat().st_mtime_ns for w in weights]
    assert weights and random_weights_folder(tmp_path) == first
    assert [w.stat().st_mtime_ns for w in weights] == stamp


def test_table_shows_each_run_in_its_cell(tiny_run):
    _, _, record = tiny_run
    runs = {Scenario("attention-digits", "random", 5).key: {"top1": 0.5},
            Scenario("gd-linear-digits", "trained", None).key: record}
    lines = markdown_table(runs).splitlines()
    assert lines[0].startswith("| head | all labels, trained weights | all labels, random")
    linear = next(line for line in lines if "`gd-linear-digits`" in line)
    attention = next(line for line in lines if "`attention-digits`" in line)
    assert linear.split(" | ")[1:] == [f"{100 * record['top1']:.1f}", "-", "-", "- |"]
    assert attention.split(" | ")[1:] == ["-", "-", "-", "50.0 |"]
    assert len(lines) == 2 + 4
