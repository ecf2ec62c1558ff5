"""Folders saved by config_format 1 (backbone tensors at the top level, untyped head) load."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction

# How format 1 named the backbone's tensors, written out independently of the library's table.
FORMAT1 = {"backbone.unet.": "unet.", "backbone.vae.": "vae.",
           "backbone.prompt.text_encoder.": "text_encoder.",
           "backbone.prompt.context": "text_context", "backbone.prompt.embedding": "prompt_embedding"}


def _to_format1(key: str) -> str:
    for new, old in FORMAT1.items():
        if key.startswith(new):
            return old + key[len(new):]
    raise AssertionError(f"unexpected key {key}")


def test_a_format1_folder_loads_with_the_same_outputs(tiny_repos, tmp_path):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["up_ft.1"], prompt="a red square")
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({_to_format1(k): v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config.update(config_format=1, head=None)
    (folder / "config.json").write_text(json.dumps(config))

    loaded = AutoDiffusionPerception.from_pretrained(folder)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images)["up_ft.1"], loaded(images)["up_ft.1"])
    loaded.save_pretrained(tmp_path / "again")  # saved in the current format
    assert json.loads((tmp_path / "again" / "config.json").read_text())["config_format"] == 2
    assert all(k.startswith("backbone.") for k in load_file(str(tmp_path / "again" / "model.safetensors")))
