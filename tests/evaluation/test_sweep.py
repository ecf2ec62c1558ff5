"""The (tap, timestep) sweep on a tiny pixel model: one batched pass equals a backbone built for
each single (tap, t), its accuracies are `linear_probe`'s on those features, its cache is reused,
and `diffperception sweep` writes its table, heatmap and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffperception.cli import main
from diffperception.data import few_shot, load_image_dataset
from diffperception.evaluation import linear_probe, pooled_features, run_sweep
from diffperception.evaluation.sweep import sweep_backbone, sweep_features
from diffperception.features.backbone import DiffusionBackbone

TAPS = ["mid_block", "up_blocks.1"]
TIMESTEPS = [10, 300, 700]


@pytest.fixture(scope="module")
def pixel_repo(tmp_path_factory):
    from testing_utils import tiny_models

    return tiny_models.make_pixel(tmp_path_factory.mktemp("tiny") / "pixel")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """40 train and 20 test digits (32 px; 4 and 2 per class), and the same saved as a
    DatasetDict folder."""
    import datasets

    train = few_shot(load_image_dataset("digits", "train"), 4, seed=0)
    test = few_shot(load_image_dataset("digits", "test"), 2, seed=0)
    folder = tmp_path_factory.mktemp("digits_small")
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return train, test, folder


def test_one_pass_equals_a_backbone_per_cell(pixel_repo, splits):
    train, test, _ = splits
    grid = sweep_backbone(pixel_repo, taps=TAPS, timesteps=TIMESTEPS, seed=0, device="cpu")
    calls = []
    original = grid.forward
    grid.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    feats, labels, cache = sweep_features(grid, train, split="train", pool=2, batch_size=16,
                                          progress=False)
    assert len(calls) == 3  # 40 images in batches of 16: one call per batch for all 6 cells
    assert cache["status"] == "not cached"
    np.testing.assert_array_equal(labels, np.asarray(train["label"]))
    for tap in TAPS:
        assert feats[tap].shape[:2] == (40, len(TIMESTEPS))
        for i, t in enumerate(TIMESTEPS):
            single = DiffusionBackbone.from_diffusers(pixel_repo, taps=[tap], timesteps=[t], seed=0)
            alone, _ = pooled_features(single, train, pool=2, batch_size=7, progress=False)
            assert alone[tap].shape == (40, 1, feats[tap].shape[2])
            np.testing.assert_allclose(feats[tap][:, i], alone[tap][:, 0], rtol=1e-5, atol=1e-6)
    # the timesteps differ, so the cells differ
    assert not np.allclose(feats["mid_block"][:, 0], feats["mid_block"][:, 2])


def test_accuracies_are_linear_probes_on_single_cell_features(pixel_repo, splits, tmp_path):
    train, test, _ = splits
    result = run_sweep(pixel_repo, train, test, taps=TAPS, timesteps=TIMESTEPS, pool=2,
                       batch_size=16, cache_dir=tmp_path / "cache", device="cpu", progress=False)
    assert result.accuracy.shape == (2, 3)
    for a, tap in enumerate(TAPS):
        for b, t in enumerate(TIMESTEPS):
            single = DiffusionBackbone.from_diffusers(pixel_repo, taps=[tap], timesteps=[t], seed=0)
            train_x, train_y = pooled_features(single, train, pool=2, progress=False)
            test_x, test_y = pooled_features(single, test, pool=2, progress=False)
            expected = linear_probe(train_x[tap], train_y, test_x[tap], test_y)
            assert result.accuracy[a, b] == pytest.approx(expected, abs=1e-12), (tap, t)
    tap, t, acc = result.best()
    assert acc == result.accuracy.max()
    assert result.accuracy[TAPS.index(tap), TIMESTEPS.index(t)] == acc
    assert result.cache["train"]["status"] == result.cache["test"]["status"] == "written"
    assert "| mid_block |" in result.table() and "t=700" in result.table()


def test_cache_is_reused_and_keyed_by_the_settings(pixel_repo, splits, tmp_path, monkeypatch):
    train, test, _ = splits
    kw = dict(taps=TAPS, timesteps=TIMESTEPS, batch_size=32, cache_dir=tmp_path / "cache",
              device="cpu", progress=False)
    first = run_sweep(pixel_repo, train, test, **kw)

    def no_forward(*args, **kwargs):
        raise AssertionError("the backbone ran although the cache holds the features")

    monkeypatch.setattr(DiffusionBackbone, "forward", no_forward)
    again = run_sweep(pixel_repo, train, test, **kw)
    assert again.cache["train"]["status"] == again.cache["test"]["status"] == "reused"
    np.testing.assert_array_equal(again.accuracy, first.accuracy)
    monkeypatch.undo()
    pooled1 = run_sweep(pixel_repo, train, test, pool=1, **kw)  # another pool: another file
    assert pooled1.cache["train"]["status"] == "written"
    assert pooled1.feature_dims["mid_block"] * 4 == first.feature_dims["mid_block"]
    other_data = run_sweep(pixel_repo, train.select(range(1, 40)), test, **kw)
    assert other_data.cache["train"]["status"] == "written"
    assert other_data.cache["test"]["status"] == "reused"
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 5


def test_sweep_command_writes_table_heatmap_and_json(pixel_repo, splits, tmp_path, capsys):
    _, _, folder = splits
    out = tmp_path / "sweep"
    rc = main(["sweep", str(pixel_repo), "--data", str(folder), "--taps", ",".join(TAPS),
               "--timesteps", "10,300", "--limit", "25", "--batch-size", "8", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["num_train"] == 25 and report["num_test"] == 20  # test has only 20
    assert set(report["accuracy"]) == set(TAPS)
    assert set(report["accuracy"]["mid_block"]) == {"10", "300"}
    best = report["best"]
    assert best["accuracy"] == max(v for row in report["accuracy"].values() for v in row.values())
    assert (out / "sweep_heatmap.png").stat().st_size > 1000
    table = (out / "sweep.md").read_text()
    printed = capsys.readouterr().out
    assert table.strip() in printed
    cell = 100 * report["accuracy"]["up_blocks.1"]["300"]
    assert f"| up_blocks.1 | {100 * report['accuracy']['up_blocks.1']['10']:.1f} | {cell:.1f} |" \
        in table
    assert len(list((out / "cache").glob("*.safetensors"))) == 2


def test_sweep_refuses_bad_grids(pixel_repo, splits, capsys):
    train, test, folder = splits
    with pytest.raises(ValueError, match="without duplicates"):
        run_sweep(pixel_repo, train, test, taps=["mid_block", "mid_block"], timesteps=[10],
                  device="cpu", progress=False)
    with pytest.raises(ValueError, match="outside"):
        run_sweep(pixel_repo, train, test, taps=["mid_block"], timesteps=[5000], device="cpu",
                  progress=False)
    assert main(["sweep", str(pixel_repo), "--data", str(folder), "--taps", "mid_blok",
                 "--timesteps", "10"]) == 2
    assert "mid_blok" in capsys.readouterr().err


def test_limit_takes_a_seeded_class_balanced_subset():
    from diffperception.evaluation import load_split

    subset = load_split("digits", "train", limit=25, seed=0)
    labels = np.asarray(subset["label"])
    assert len(labels) == 25
    assert np.bincount(labels, minlength=10).min() == 2  # 25 = 10 + 10 + 5: every class twice
    again = load_split("digits", "train", limit=25, seed=0)
    assert again._fingerprint == subset._fingerprint
    other = load_split("digits", "train", limit=25, seed=1)
    assert other._fingerprint != subset._fingerprint
    with pytest.raises(ValueError, match="limit"):
        load_split("digits", "train", limit=0)
