"""Presets (hub_configs/*.json): valid, complete, buildable on tiny stand-ins, round-trip, shipped.

The presets name full-size Hub models that cannot be downloaded in CI; each is built on a tiny
model of the same family instead (``repo_id=`` override), keeping its taps, timesteps, noise and
prompt, and at 64 px (``size=`` override).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from diffperception import AutoDiffusionPerception, list_models, list_presets
from diffperception.config import TaskConfig
from diffperception.default_model import DEFAULT_MODEL_PATH
from diffperception.modeling.presets import load_preset, preset_config

ROOT = Path(__file__).resolve().parents[2]
# Base model of a preset -> the tiny stand-in of the same family (tests/tiny_models.py).
STAND_INS = {
    "stabilityai/stable-diffusion-2-1": "sd2",
    "stabilityai/stable-diffusion-2-1-base": "sd2",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd1",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "diffperception:default": "default",  # the shipped model itself: no stand-in needed
    # the folder `diffperception convert-adm` writes; its presets (classifiers) are built on a tiny
    # ADM-256-layout network in tests/modeling/test_classification_heads.py
    "adm256/": "adm256",
}


def _images(batch: int = 2, size: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, size, size, generator=gen)  # (B, 3, H, W) in [0, 1]


def test_shipped_presets_are_listed_by_file_stem():
    stems = sorted(p.stem for p in (ROOT / "hub_configs").glob("*.json"))
    assert list_presets() == stems
    assert {"dift-sd21", "sd15-features", "sdxl-features", "digits-default"} <= set(stems)
    assert list_presets("sdxl-*") == ["sdxl-features"]


@pytest.mark.parametrize("name", list_presets())
def test_preset_is_a_complete_valid_config(name):
    data = load_preset(name)
    config = TaskConfig.from_dict(data)
    assert config.to_dict() == data  # every key written out: the file is the whole config.json
    assert config.architecture in list_models()
    assert data["backbone"]["repo_id"] in STAND_INS, "add a tiny stand-in for this base model"


def test_dift_preset_matches_the_paper_settings():
    config = preset_config("dift-sd21")
    assert config.backbone.repo_id == "stabilityai/stable-diffusion-2-1"
    assert config.features.taps == ["up_ft.1"] and config.features.timesteps == [261]
    assert config.features.noise.ensemble == 8 and config.features.prompt.kind == "null"
    assert config.preprocess.size == [768, 768]


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown preset 'dift-sd2'\. Did you mean \['dift-sd21'"):
        AutoDiffusionPerception.from_preset("dift-sd2")


def test_overrides_apply_and_are_validated():
    config = preset_config("dift-sd21", repo_id="some/other", taps=["mid_block"], timesteps=[10],
                           dtype="bfloat16", size=(256, 320))
    assert (config.backbone.repo_id, config.backbone.revision) == ("some/other", None)
    assert config.features.taps == ["mid_block"] and config.features.timesteps == [10]
    assert config.backbone.dtype == "bfloat16" and config.preprocess.size == [256, 320]
    assert config.features.noise.ensemble == 8  # what is not overridden stays
    with pytest.raises(ValueError, match=r"config\['backbone'\]\['dtype'\] = 'float8'"):
        preset_config("dift-sd21", dtype="float8")


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds_on_tiny_stand_in_and_round_trips(name, tiny_repos, tmp_path):
    preset = TaskConfig.from_dict(load_preset(name))
    if preset.architecture != "DiffusionPerceptionForFeatureExtraction":
        pytest.skip("classification presets are built, run and round-tripped (with labels) in "
                    "tests/modeling/test_classification_heads.py")
    kind = STAND_INS[preset.backbone.repo_id]
    stand_in = DEFAULT_MODEL_PATH if kind == "default" else tiny_repos[kind]
    size = 32 if kind == "default" else 64
    model = AutoDiffusionPerception.from_preset(name, repo_id=stand_in, size=(size, size))
    assert type(model).__name__ == preset.architecture
    assert model.config.features == preset.features
    with torch.no_grad():
        expected = model(_images(size=size))
    for tap in preset.features.taps:
        assert expected[tap].shape[0] == 2 and torch.isfinite(expected[tap]).all()

    model.save_pretrained(tmp_path / name)
    saved = TaskConfig.from_dict(json.loads((tmp_path / name / "config.json").read_text()))
    assert saved.features == preset.features and saved.backbone.repo_id == str(stand_in)
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / name)
    with torch.no_grad():
        actual = loaded(_images(size=size))
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_presets_ship_in_a_plain_non_editable_install(tmp_path):
    """Builds a wheel from a copy of the sources, installs it into a folder, lists the presets."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "weights", "*.egg-info")
    for name in ("diffperception", "export", "hub_configs", "benchmarks"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    if not (src / "README.md").is_file():
        (src / "README.md").write_text("diffperception\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                          str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("diffperception-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"diffperception/hub_configs/{n}.json" for n in list_presets()} <= set(names)

    target = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import diffperception.modeling.presets as p, json; "
            "print(json.dumps([p.__file__, p.list_presets()]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    module_file, presets = json.loads(out.strip().splitlines()[-1])
    assert Path(module_file).is_relative_to(target)  # the installed copy, not the checkout
    assert presets == list_presets()
