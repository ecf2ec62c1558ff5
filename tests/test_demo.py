"""The shipped default model and the demo (the README's main job), offline, on real data."""

from __future__ import annotations

import json
import re

import pytest

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction
from diffperception.cli import main
from diffperception.config import TaskConfig
from diffperception.default_model import DEFAULT_MODEL_PATH, load_digits_split

# Bounds chosen well inside the measured values (README "The offline default model and the
# demo" lists them), so that they hold robustly with the seeded split, noise and probes.
ZERO_SHOT_MIN = 0.6  # chance is 0.1; measured 0.92 (--quick: first 100 test images)
MARGIN_OVER_RANDOM = 0.003  # about 2 of the 599 test images; measured about 0.013 (--quick)


def test_default_model_loads_offline_through_the_public_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (DEFAULT_MODEL_PATH / "model_index.json").is_file()
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        DEFAULT_MODEL_PATH, taps=["mid_block"], timesteps=[50])
    TaskConfig.from_dict(model.config.to_dict())  # the config validates
    data = load_digits_split()
    assert data["train_images"].shape[1:] == (3, 32, 32)
    assert len(data["test_labels"]) == pytest.approx(1797 / 3, abs=10)
    feats = model(data["test_images"][:4])
    assert feats["mid_block"].shape[0] == 4


def test_default_model_preset_builds():
    model = AutoDiffusionPerception.from_preset("digits-default")
    assert model.config.backbone.repo_id == "diffperception:default"
    assert model.source.folder.resolve() == DEFAULT_MODEL_PATH.resolve()


def _parse_table(text: str) -> dict[tuple[str, str], list[float]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1] in ("trained", "random"):
            rows[(cells[0], cells[1])] = [float(c) for c in cells[2:]]
    return rows


def test_reduced_demo_runs_and_its_claims_hold(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    table = _parse_table(printed)
    assert set(table) == {(tap, kind) for tap in ("mid_block", "up_blocks.1")
                          for kind in ("trained", "random")}
    assert all(len(v) == 2 and all(0 <= x <= 100 for x in v) for v in table.values())
    result = json.loads((out / "demo_results.json").read_text())
    assert (out / "probe_accuracy.png").stat().st_size > 10_000
    # the printed numbers are the measured ones
    assert table[("mid_block", "trained")][0] == pytest.approx(
        100 * result["trained"]["mid_block"]["50"], abs=0.051)
    best_trained = max(v for grid in result["trained"].values() for v in grid.values())
    best_random = max(v for grid in result["random"].values() for v in grid.values())
    assert best_trained >= best_random + MARGIN_OVER_RANDOM
    assert result["zero_shot"] >= ZERO_SHOT_MIN
    assert re.search(r"zero-shot image-text matching .*: \d+\.\d% \(chance 10\.0%\)", printed)
