"""`diffperception evaluate --benchmark NAME`: a benchmark registered in the test runs on a saved
model and on a preset, its options arrive parsed, and its results land in a JSON file and the
card's model-index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from diffperception import DiffusionPerceptionForImageClassification
from diffperception.cli import main
from diffperception.data import class_names, load_image_dataset
from diffperception.evaluation import (
    Benchmark,
    BenchmarkResult,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)

CALLS: list[dict] = []


@register_benchmark("test-agreement")
class AgreementBenchmark(Benchmark):
    """Fraction of the first `limit` digits whose argmax logit is the label (a top-1 written
    against the model's own forward)."""

    task_type = "image-classification"

    def run(self, model, data, split, *, batch_size=32, seed=0, progress=True, limit=8,
            tag="none"):
        CALLS.append({"data": data, "split": split, "limit": limit, "tag": tag, "seed": seed})
        ds = load_image_dataset(data, split).select(range(limit))
        images = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in ds["image"]]))
        with torch.no_grad():
            pred = model(images).logits.argmax(-1)
        right = (pred == torch.tensor(ds["label"])).float().mean().item()
        return BenchmarkResult(self.name, split, limit, {"agreement": right},
                               {"agreement": "Agreement"}, {"predicted": pred.tolist()},
                               dataset_name="digits")


def test_registry_lists_and_refuses_unknown_names():
    assert "test-agreement" in list_benchmarks()
    assert isinstance(get_benchmark("test-agreement"), AgreementBenchmark)
    with pytest.raises(ValueError, match="test-agreemen"):
        get_benchmark("test-agreemen")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    labels = class_names(load_image_dataset("digits", "test"))
    model = DiffusionPerceptionForImageClassification.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50],
        head={"type": "linear", "pool": 1}, labels=labels)
    folder = tmp_path_factory.mktemp("bench") / "model"
    model.save_pretrained(folder)
    return folder, model


def test_evaluate_runs_a_benchmark_on_a_saved_model(saved, capsys):
    folder, model = saved
    CALLS.clear()
    assert main(["evaluate", str(folder), "--benchmark", "test-agreement", "--data", "digits",
                 "--benchmark-option", "limit=6", "--benchmark-option", "tag=abc",
                 "--no-progress"]) == 0
    assert CALLS == [{"data": "digits", "split": "test", "limit": 6, "tag": "abc", "seed": 0}]
    written = json.loads((folder / "eval_test-agreement_test.json").read_text())
    ds = load_image_dataset("digits", "test").select(range(6))
    images = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in ds["image"]]))
    with torch.no_grad():
        expected = model(images).logits.argmax(-1)
    assert written["details"]["predicted"] == expected.tolist()
    right = float((expected == torch.tensor(ds["label"])).float().mean())
    assert written["metrics"]["agreement"] == pytest.approx(right)
    results = ModelCard.load(folder / "README.md").data.eval_results
    entry = [r for r in results if r.metric_type == "agreement"]
    assert len(entry) == 1 and entry[0].metric_value == pytest.approx(right, abs=1e-6)
    assert "Agreement:" in capsys.readouterr().out


def test_evaluate_runs_a_benchmark_on_a_preset(tmp_path):
    CALLS.clear()
    assert main(["evaluate", "--preset", "gd-linear-digits", "--benchmark", "test-agreement",
                 "--data", "digits", "--benchmark-option", "limit=3", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert CALLS[0]["limit"] == 3
    written = json.loads((tmp_path / "eval_test-agreement_test.json").read_text())
    assert written["model"] == "preset:gd-linear-digits" and written["num_samples"] == 3


@pytest.mark.parametrize("argv,message", [
    (["--benchmark", "test-agreement", "--data", "digits"], "not both and not neither"),
    (["--preset", "gd-linear-digits", "--data", "digits"], "--preset needs --benchmark"),
    (["--preset", "gd-linear-digits", "--benchmark", "test-agreement", "--data", "digits"],
     "pass --out DIR"),
])
def test_bad_command_lines_are_clear_errors(argv, message, capsys):
    assert main(["evaluate", *argv]) != 0
    assert message in capsys.readouterr().err
