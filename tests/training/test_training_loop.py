"""The training loop on the shipped digits model: seeded, resumable, cached, saved, refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import linear_classifier  # tests/training/conftest.py

from diffperception.modeling import AutoDiffusionPerception
from diffperception.training import TrainingArguments, class_names, latest_checkpoint, train


def _head(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.head.state_dict().items()}


def _run(data, out: Path, cache: Path, seed: int = 0, **options):
    train_data, eval_data = data
    model = linear_classifier(class_names(train_data), seed=seed)
    args = TrainingArguments(str(out), seed=seed, cache_dir=str(cache), progress=False,
                             batch_size=8, **{"epochs": 2, **options})
    history = train(model, train_data, args, eval_data=eval_data)
    return model, history


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("augment", ["code", "none"])
def test_same_seed_same_weights_and_resume_after_a_kill_loses_nothing(tmp_path, digits_small,
                                                                      augment):
    cache = tmp_path / "cache"
    straight, _ = _run(digits_small, tmp_path / "a", cache, augment=augment)
    again, _ = _run(digits_small, tmp_path / "b", cache, augment=augment)
    assert _same(_head(straight), _head(again))
    other, _ = _run(digits_small, tmp_path / "c", cache, seed=1, augment=augment)
    assert not _same(_head(straight), _head(other))

    # "killed" during epoch 2: one checkpoint, a half-written one, and a fresh process
    _run(digits_small, tmp_path / "d", cache, augment=augment, epochs=1)
    (tmp_path / "d" / "checkpoints" / "epoch-002.tmp").mkdir()
    for name in ("model.safetensors", "config.json", "training_log.json"):
        (tmp_path / "d" / name).unlink()
    resumed, history = _run(digits_small, tmp_path / "d", cache, seed=0, augment=augment,
                            resume=True)
    assert _same(_head(straight), _head(resumed))
    assert [h["epoch"] for h in history] == [1, 2]
    assert latest_checkpoint(tmp_path / "d").name == "epoch-002"


def test_outputs_log_curves_and_a_loadable_model(tmp_path, digits_small):
    model, history = _run(digits_small, tmp_path / "run", tmp_path / "cache", augment="paper",
                          epochs=3, lr_step_epochs=2)
    out = tmp_path / "run"
    log = json.loads((out / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    assert [e["lr"] for e in log["epochs"]] == pytest.approx([1e-2, 1e-2, 1e-3])  # StepLR
    assert log["arguments"]["learning_rate"] == 1e-2 and log["arguments"]["optimizer"] == "sgd"
    assert all(0 <= e["eval_accuracy"] <= 1 and e["train_loss"] > 0 for e in log["epochs"])
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-002", "epoch-003"]
    saved = load_file(str(out / "checkpoints" / "epoch-003" / "trainable.safetensors"))
    assert {f"head.{k}" for k in model.head.state_dict()} <= saved.keys()
    assert not [k for k in saved if k.startswith(model.trunk_prefixes)]  # no copy of the trunk
    loaded = AutoDiffusionPerception.from_pretrained(out)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, model.eval()(images).logits)
    assert loaded.config.labels == class_names(digits_small[0])


def test_cached_training_reuses_features_and_matches_images(tmp_path, digits_small):
    cache = tmp_path / "cache"
    cached, history = _run(digits_small, tmp_path / "a", cache, augment="none")
    assert all(h["cached"] for h in history)
    (folder,) = cache.iterdir()
    shards = sorted(p.name for p in folder.glob("shard-*"))
    _run(digits_small, tmp_path / "b", cache, augment="none")
    assert sorted(p.name for p in folder.glob("shard-*")) == shards  # nothing computed again
    plain, history = _run(digits_small, tmp_path / "c", cache, augment="none", feature_cache="off")
    assert not any(h["cached"] for h in history)
    for key, value in _head(cached).items():
        torch.testing.assert_close(value, _head(plain)[key], rtol=1e-4, atol=1e-5)


def test_refusals(tmp_path, digits_small):
    cache = tmp_path / "cache"
    _run(digits_small, tmp_path / "run", cache, augment="none", epochs=1)
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        _run(digits_small, tmp_path / "run", cache, augment="none")
    with pytest.raises(ValueError, match="options differ.*learning_rate"):
        _run(digits_small, tmp_path / "run", cache, augment="none", resume=True,
             learning_rate=0.5)
    with pytest.raises(ValueError, match="cannot be cached.*augment = 'code'"):
        _run(digits_small, tmp_path / "x", cache, augment="code", feature_cache="on")
    with pytest.raises(ValueError, match="optimizer = 'lbfgs' is invalid"):
        _run(digits_small, tmp_path / "y", cache, optimizer="lbfgs")
    train_data, _ = digits_small
    model = linear_classifier(["a", "b"])
    with pytest.raises(ValueError, match="has 10 classes.*2 labels"):
        train(model, train_data, TrainingArguments(str(tmp_path / "z"), progress=False))
    shutil.rmtree(tmp_path / "run")


def test_a_head_that_trains_through_the_trunk_is_never_cached(tmp_path, digits_small):
    from diffperception.training import is_cacheable

    train_data, _ = digits_small
    model = linear_classifier(class_names(train_data))
    model.head.trains_through_trunk = True  # as DifFeed's feedback layers do
    assert not is_cacheable(model)[0]
    args = dict(progress=False, epochs=1, augment="none", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="changes the trunk's features"):
        train(model, train_data, TrainingArguments(str(tmp_path / "a"), feature_cache="on", **args))
    history = train(model, train_data, TrainingArguments(str(tmp_path / "b"), **args))
    assert not history[0]["cached"] and not (tmp_path / "cache").exists()
