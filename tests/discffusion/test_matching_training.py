"""Prompt learning through the shared training loop: image-caption splits and ComVG rows.

Checks that training moves only the K/V prompts (the trunk the saved model carries is the base
plus the folded prompts), that the saved model scores as the trained one, and that each batch's
loss is the matching loss of the model's own score table (positive first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_score import TEXTS, matching_config

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageTextMatching


def _caption_split(n=6):
    import datasets

    generator = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, 64, 64, generator=generator).numpy()
    features = datasets.Features({"image": datasets.Array3D(shape=(3, 64, 64), dtype="float32"),
                                  "label": datasets.ClassLabel(names=TEXTS)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]},
                                      features=features)


def _model(tiny_repos, **kw):
    torch.manual_seed(0)
    config = matching_config(tiny_repos["sd2"], adaptation="kv", labels=TEXTS, timesteps=[599],
                             **kw)
    config["task"]["num_negatives"] = 2
    return DiffusionPerceptionForImageTextMatching(config)


def test_training_moves_only_the_prompts_and_saves_them_folded(tiny_repos, tmp_path):
    from diffperception.training import TrainingArguments, train

    model = _model(tiny_repos)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    history = train(model, _caption_split(), TrainingArguments(
        str(tmp_path / "run"), epochs=2, batch_size=3, learning_rate=1e-2, augment="none",
        progress=False, cpu=True))
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(k.startswith("adapter.prompts.") for k in changed)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "run")
    assert torch.allclose(loaded.score(images), model.score(images), atol=1e-5)


def test_step_loss_is_the_matching_loss_of_the_score_table(tiny_repos):
    from diffperception.training.matching_loss import matching_loss
    from diffperception.training.matching_task import ImageTextMatchingTask

    model = _model(tiny_repos).eval()
    task = ImageTextMatchingTask()
    view = task.view(model, _caption_split(), augment="none", seed=0, train=True)
    batch = task.collate([view[i] for i in range(3)])
    assert all(c[0] == TEXTS[i % 3] and len(c) == 3 and len(set(c)) == 3
               for i, c in enumerate(batch["candidates"]))
    out = task.step(model, batch)
    scores = model.score(batch["pixel_values"], TEXTS)  # every image against every caption
    table = torch.stack([scores[i, [TEXTS.index(t) for t in c]]
                         for i, c in enumerate(batch["candidates"])])
    assert torch.allclose(out.loss, matching_loss(table, 0, margin=0.1), atol=1e-5)
    assert torch.equal(out.per_sample["accuracy"], (table[:, :1] > table[:, 1:]).all(1).float())


def test_comvg_rows_train_with_image_candidates(tiny_repos, tmp_path):
    from PIL import Image

    from diffperception.data.matching import load_comvg
    from diffperception.training.matching_task import ImageTextMatchingTask

    root = tmp_path / "comvg"
    (root / "vg_concept").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("1", "2", "3"):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(
            root / "vg_concept" / f"{name}.jpg")
    (root / "comvg_train.csv").write_text(
        "sentence,pos_image_id,neg_image_id,neg_value\n"
        "a man riding a horse,1,2,subject\nthe cup on a table,3,1,predicate\n")
    rows = load_comvg(root, "train")
    model, task = _model(tiny_repos).eval(), ImageTextMatchingTask()
    task.check_data(model, rows, "training")
    batch = task.collate([task.view(model, rows, augment="none", seed=0, train=True)[i]
                          for i in range(2)])
    assert batch["pixel_values"].shape == (2, 2, 3, 64, 64)
    out = task.step(model, batch)
    with torch.no_grad():
        pos = model.score(batch["pixel_values"][:, 0], batch["texts"]).diagonal()
        neg = model.score(batch["pixel_values"][:, 1], batch["texts"]).diagonal()
    expected = (neg - pos + 0.1).clamp(min=0).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
