"""Safety: download only what is read, and publish no local path.

Kind 6 of the safety issue. Downloads are counted on the session LocalHub (real
huggingface_hub client) and read off the cache folder: configs for ``list_taps``, one weight
variant for ``from_diffusers``, a task model's own files for a pull. A model built from a local
folder names it ``local:<folder name>`` wherever it is published (pushed config and card, ONNX
metadata), never by its path.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction, list_taps

ALICE = "hf_alice_token"


def _upload(folder: Path, name: str) -> str:
    from huggingface_hub import HfApi

    repo = f"alice/{name}-{uuid.uuid4().hex[:8]}"
    api = HfApi(token=ALICE)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=folder)
    return repo


def _weights_in(cache: Path) -> set[str]:
    """The weight files in the cache's snapshot folder(s), relative to the snapshot."""
    return {p.relative_to(snap).as_posix()
            for snap in cache.glob("models--*/snapshots/*") for p in snap.rglob("*.safetensors")}


def _weight_requests(local_hub) -> int:
    return len(local_hub.requests_matching(path_contains=".safetensors"))


@pytest.fixture(scope="module")
def variant_repo(tiny_repos, tmp_path_factory) -> str:
    """The tiny SD 1 model with fp16 and non-EMA variants of its U-Net, VAE and text encoder."""
    folder = tmp_path_factory.mktemp("variants") / "sd1"
    shutil.copytree(tiny_repos["sd1"], folder)
    for component, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                            ("text_encoder", "model")):
        tensors = load_file(str(folder / component / f"{stem}.safetensors"))
        save_file({k: v.half() for k, v in tensors.items()},
                  str(folder / component / f"{stem}.fp16.safetensors"))
        save_file(tensors, str(folder / component / f"{stem}.non_ema.safetensors"))
    return _upload(folder, "variants")


def test_list_taps_downloads_configs_only(local_hub, variant_repo, tiny_repos, tmp_path):
    before = _weight_requests(local_hub)
    taps = list_taps(variant_repo, cache_dir=tmp_path)
    assert taps == list_taps(tiny_repos["sd1"])
    assert _weight_requests(local_hub) == before
    assert _weights_in(tmp_path) == set()


@pytest.mark.parametrize("variant,expected", [
    (None, {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"}),
    ("fp16", {"unet/diffusion_pytorch_model.fp16.safetensors",
              "vae/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.safetensors"}),
])
def test_from_diffusers_downloads_only_the_variant_it_reads(local_hub, variant_repo, tmp_path, variant,
                                                            expected):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        variant_repo, taps=["mid_block"], variant=variant, cache_dir=tmp_path)
    assert _weights_in(tmp_path) == expected
    before = len(local_hub.request_log)  # offline, from the same cache: no request at all
    again = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        variant_repo, taps=["mid_block"], variant=variant, cache_dir=tmp_path,
        revision=model.config.backbone.revision, local_files_only=True)
    assert len(local_hub.request_log) == before
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images)["mid_block"], again(images)["mid_block"])


def test_a_missing_variant_is_not_replaced_by_another(local_hub, variant_repo, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No weights diffusion_pytorch_model.bf16.safetensors"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            variant_repo, taps=["mid_block"], variant="bf16", cache_dir=tmp_path)
    assert _weights_in(tmp_path) == set()


def test_a_pull_downloads_only_the_task_model_files(local_hub, tiny_repos, tmp_path):
    from huggingface_hub import HfApi

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["mid_block"])
    repo = f"alice/pull-{uuid.uuid4().hex[:8]}"
    model.push_to_hub(repo, token=ALICE)
    api = HfApi(token=ALICE)
    for name in ("model_ema.safetensors", "models/teacher.safetensors", "backbone/NOTES.md"):
        api.upload_file(path_or_fileobj=b"not read", path_in_repo=name, repo_id=repo)
    AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path)
    snapshot = next(tmp_path.glob("models--*/snapshots/*"))
    got = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert "model.safetensors" in got and "config.json" in got and "backbone/unet/config.json" in got
    assert not {"model_ema.safetensors", "models/teacher.safetensors", "backbone/NOTES.md",
                "README.md"} & got


@pytest.fixture(scope="module")
def local_model(tiny_repos, tmp_path_factory):
    """A model built from a local folder with a recognisable name and path."""
    folder = tmp_path_factory.mktemp("private-place") / "my-base-model"
    shutil.copytree(tiny_repos["sd2"], folder)
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(folder, taps=["up_ft.1"])


def test_a_push_publishes_no_local_path(local_hub, local_model, tmp_path):
    from diffperception.cli import main

    base_path = str(Path(local_model.config.backbone.repo_id).parent)
    for how in ("push_to_hub", "cli"):
        repo = f"alice/local-{how}-{uuid.uuid4().hex[:8]}"
        if how == "push_to_hub":
            local_model.push_to_hub(repo, token=ALICE)
        else:
            local_model.save_pretrained(tmp_path / "saved")
            saved = json.loads((tmp_path / "saved" / "config.json").read_text())
            assert saved["backbone"]["repo_id"] == local_model.config.backbone.repo_id  # local: kept
            assert main(["push", str(tmp_path / "saved"), repo, "--token", ALICE]) == 0
        config = json.loads(local_hub.read_file(repo, "config.json"))
        assert config["backbone"]["repo_id"] == "local:my-base-model"
        card = local_hub.read_file(repo, "README.md").decode()
        assert "local folder `my-base-model`" in card and "no local path is published" in card
        for name, entry in local_hub.files_at(repo).items():
            if not name.endswith(".safetensors"):
                text = local_hub.read_file(repo, name).decode("utf-8", errors="replace")
                assert base_path not in text and str(tmp_path) not in text, name
        pulled = AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path / f"c-{how}")
        assert pulled.config.backbone.repo_id == "local:my-base-model"


def test_an_export_publishes_no_local_path(local_model):
    from diffperception.export.contract import build_contract, build_metadata

    special = local_model.specialize()
    metadata = build_metadata(special, build_contract(special))
    assert metadata["diffperception.source_repo"] == "local:my-base-model"
    base_path = str(Path(local_model.config.backbone.repo_id).parent)
    assert not [k for k, v in metadata.items() if base_path in v]


def test_a_pulled_local_named_model_cannot_be_saved_unbundled(local_hub, local_model, tmp_path):
    repo = f"alice/local-again-{uuid.uuid4().hex[:8]}"
    local_model.push_to_hub(repo, token=ALICE)
    pulled = AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="local folder whose path is not recorded.*bundle_trunk=True"):
        pulled.save_pretrained(tmp_path / "head-only", bundle_trunk=False)
    pulled.save_pretrained(tmp_path / "bundled")  # bundled, it saves and reloads as before
    AutoDiffusionPerception.from_pretrained(tmp_path / "bundled")
