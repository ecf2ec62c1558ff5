"""Task models on the Hub: save / load / push / pull against LocalHub with the real client.

The session LocalHub (tests/testing_utils/localhub, started by its pytest plugin before huggingface_hub is
imported) serves HTTP on 127.0.0.1; nothing is mocked. Outputs are compared with ``torch.equal``
against the model that was saved.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction, Learnable
from diffperception.config import TaskConfig

ALICE, BOB = "hf_alice_token", "hf_bob_token"


def _repo(name: str) -> str:
    return f"alice/{name}-{uuid.uuid4().hex[:8]}"


def _images(size: int = 64, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, size, size, generator=gen)  # (B, 3, H, W) in [0, 1]


def _outputs(model, images):
    with torch.no_grad():
        return model(images)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _keys(folder: Path) -> set[str]:
    keys = set()
    for file in folder.glob("model*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            keys |= set(f.keys())
    return keys


@pytest.fixture(scope="module")
def sd2_model(tiny_repos):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd2"], taps=["up_ft.1"])


@pytest.fixture(scope="module")
def saved_sd2(sd2_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "sd2"
    sd2_model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ local folders

@pytest.mark.parametrize("kind,prompt,taps", [
    ("sd1", "a red square", ["up_ft.1", "mid_block"]),
    ("sd2", ["a cat", "a dog"], ["up_blocks.1.attentions.0.transformer_blocks.0.attn2:attn"]),
    ("sdxl", Learnable("a photo"), ["up_blocks.0"]),
    ("pixel", "", ["down_blocks.1", "up_blocks.0:in"]),
])
def test_save_load_round_trip(tiny_repos, tmp_path, kind, prompt, taps):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos[kind], taps=taps, prompt=prompt, ensemble=2)
    if isinstance(prompt, Learnable):  # a trained prompt must come back, not its initialisation
        with torch.no_grad():
            model.backbone.prompt.embedding.add_(0.5 * torch.randn_like(model.backbone.prompt.embedding))
    model.save_pretrained(tmp_path / "m")
    names = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "README.md", "backbone/unet/config.json"} <= names
    assert not [n for n in names if n.startswith("backbone/") and "safetensors" in n]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert TaskConfig.from_dict(config).to_dict() == config  # nothing but the TaskConfig

    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "m")
    assert type(loaded) is DiffusionPerceptionForFeatureExtraction
    size = 32 if kind == "pixel" else 64
    kwargs = {"prompt": ["a cat", "a dog"]} if isinstance(prompt, list) else {}
    with torch.no_grad():
        _assert_same(model(_images(size), **kwargs), loaded(_images(size), **kwargs))
    if isinstance(prompt, list):  # the text encoder is saved: its keys are in the file
        assert any(k.startswith("backbone.prompt.text_encoder.") for k in _keys(tmp_path / "m"))


def test_saved_trunk_is_smaller_than_full_unet_and_has_no_unreached_key(tiny_repos, tmp_path):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["up_blocks.1"])
    model.save_pretrained(tmp_path / "m")
    unet_file = tiny_repos["sd1"] / "unet" / "diffusion_pytorch_model.safetensors"
    saved = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert saved < unet_file.stat().st_size
    full = set(load_file(str(unet_file)))
    reached = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks.0.", "up_blocks.1.")
    keys = _keys(tmp_path / "m")
    assert {k[len("backbone.unet."):] for k in keys if k.startswith("backbone.unet.")} == {
        k for k in full if k.startswith(reached)}
    assert not [k for k in keys if k.startswith(("backbone.unet.up_blocks.2", "backbone.unet.conv_out",
                                                 "backbone.vae.decoder"))]
    assert {".".join(k.split(".")[:2]) for k in keys} == {"backbone.unet", "backbone.vae",
                                                           "backbone.prompt"}


def test_sharded_save_round_trips_and_replaces_old_shards(sd2_model, tmp_path):
    folder = tmp_path / "m"
    sd2_model.save_pretrained(folder, max_shard_size="1MB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (folder / "model.safetensors.index.json").is_file()
    _assert_same(_outputs(sd2_model, _images()),
                 _outputs(AutoDiffusionPerception.from_pretrained(folder), _images()))
    sd2_model.save_pretrained(folder)  # unsharded again: no stale shard or index is left
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]


# ------------------------------------------------------------------------------- strictness

def _broken_copy(saved: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("backbone.unet.conv_in.weight"),
     r"missing tensor\(s\): backbone\.unet\.conv_in\.weight"),
    (lambda t: t.update({"head.extra": torch.zeros(3)}), r"unexpected tensor\(s\): head\.extra"),
    (lambda t: t.update({"backbone.unet.conv_in.bias": torch.zeros(5)}),
     r"mis-shaped tensor\(s\): backbone\.unet\.conv_in\.bias \(file \(5,\), model \(32,\)\)"),
])
def test_strict_loading_names_the_bad_key(saved_sd2, tmp_path, edit, message):
    folder = _broken_copy(saved_sd2, tmp_path, edit)
    with pytest.raises(RuntimeError, match=message):
        AutoDiffusionPerception.from_pretrained(folder)


def test_truncated_weights_and_future_config_are_clear_errors(saved_sd2, tmp_path):
    folder = tmp_path / "t"
    shutil.copytree(saved_sd2, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated"):
        AutoDiffusionPerception.from_pretrained(folder)

    config = json.loads((saved_sd2 / "config.json").read_text())
    shutil.copy(saved_sd2 / "model.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**config, "config_format": 99}))
    with pytest.raises(ValueError, match="newer diffperception"):
        AutoDiffusionPerception.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "DiffusionPerceptionForFeatureExtractor"}))
    with pytest.raises(ValueError, match=r"Did you mean \['DiffusionPerceptionForFeatureExtraction'\]"):
        AutoDiffusionPerception.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AutoDiffusionPerception.from_pretrained(folder / "backbone")


# ------------------------------------------------------------------------------ model card

def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_model_card_yaml_and_usage_snippet_runs(tiny_repos, tmp_path, capsys):
    base = tmp_path / "base"  # a base model whose own card states a license
    shutil.copytree(tiny_repos["sd2"], base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(base, taps=["up_ft.1"], timesteps=[100, 500])
    metrics = [{"task_type": "image-feature-extraction", "dataset_type": "digits",
                "dataset_name": "Digits", "metric_type": "accuracy", "metric_value": 0.9}]
    model.save_pretrained(tmp_path / "m", metrics=metrics)
    card = (tmp_path / "m" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "diffperception"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "mit" and "diffperception" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no Hub id
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.9}
    assert "| timesteps | 100, 500 |" in card and "| full U-Net |" in card

    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    capsys.readouterr()
    exec(compile(snippet, "README.md", "exec"), {})
    assert "up_ft.1 (1, 2, 32, 8, 8)" in capsys.readouterr().out

    # Reloaded from the folder alone (the base card is kept in backbone/), the license stays.
    shutil.rmtree(base)
    AutoDiffusionPerception.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "m2")
    assert _front_matter((tmp_path / "m2" / "README.md").read_text())["license"] == "mit"


# ------------------------------------------------------------------------------------- Hub

def test_push_pull_round_trip_and_revisions_by_sha(local_hub, tiny_repos, sd2_model, tmp_path):
    from huggingface_hub import HfApi

    repo = _repo("dift")
    first = sd2_model.push_to_hub(repo, token=ALICE, commit_message="first")
    api = HfApi(token=ALICE)
    assert [c.title for c in api.list_repo_commits(repo)][0] == "first"
    files = set(api.list_repo_files(repo))
    assert {"config.json", "model.safetensors", "README.md", "backbone/unet/config.json"} <= files

    second_model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd2"], taps=["up_ft.1", "mid_block"], timesteps=[500])
    commits_before = len(api.list_repo_commits(repo))
    second = second_model.push_to_hub(repo, token=ALICE, commit_message="second")
    assert len(api.list_repo_commits(repo)) == commits_before + 1  # one commit per push

    for commit, original in ((first, sd2_model), (second, second_model)):
        pulled = AutoDiffusionPerception.from_pretrained(repo, revision=commit.oid,
                                                         cache_dir=tmp_path / f"c-{commit.oid}")
        _assert_same(_outputs(original, _images()), _outputs(pulled, _images()))
    readme = local_hub.read_file(repo, "README.md", revision=first.oid).decode()
    assert f"from_pretrained({repo!r})" in readme


def test_private_repo_refuses_missing_or_foreign_token(local_hub, sd2_model, tmp_path):
    repo = _repo("private")
    sd2_model.push_to_hub(repo, token=ALICE, private=True)
    for token in (None, BOB):
        with pytest.raises(FileNotFoundError, match=f"{repo}.*private"):
            AutoDiffusionPerception.from_pretrained(repo, token=token, cache_dir=tmp_path / f"c{token}")
    pulled = AutoDiffusionPerception.from_pretrained(repo, token=ALICE, cache_dir=tmp_path / "ok")
    _assert_same(_outputs(sd2_model, _images()), _outputs(pulled, _images()))


def test_offline_loads_from_cache_without_requests_and_fails_fast_without(
        local_hub, sd2_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = _repo("offline")
    commit = sd2_model.push_to_hub(repo, token=ALICE)
    cache = tmp_path / "cache"
    AutoDiffusionPerception.from_pretrained(repo, cache_dir=cache)  # online: fills the cache
    before = len(local_hub.request_log)
    for kwargs in ({"local_files_only": True}, {"local_files_only": True, "revision": commit.oid}):
        model = AutoDiffusionPerception.from_pretrained(repo, cache_dir=cache, **kwargs)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    model = AutoDiffusionPerception.from_pretrained(repo, cache_dir=cache)
    assert len(local_hub.request_log) == before
    _assert_same(_outputs(sd2_model, _images()), _outputs(model, _images()))
    with pytest.raises(FileNotFoundError, match=rf"'{repo}' at revision 'main' is not in the local "
                                                rf"cache.*hf download {repo} --revision main"):
        AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path / "empty")
    assert len(local_hub.request_log) == before


def _upload_base(tiny_folder: Path) -> tuple[str, str]:
    from huggingface_hub import HfApi

    repo = _repo("tiny-sd2")
    api = HfApi(token=ALICE)
    api.create_repo(repo)
    return repo, api.upload_folder(repo_id=repo, folder_path=tiny_folder).oid


def test_unbundled_model_reloads_base_at_pinned_revision(local_hub, tiny_repos, tmp_path):
    from huggingface_hub import HfApi

    base, base_sha = _upload_base(tiny_repos["sd2"])
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        base, taps=["up_ft.1"], token=ALICE, cache_dir=tmp_path / "c0")
    assert model.config.backbone.revision == base_sha
    expected = _outputs(model, _images())
    model.save_pretrained(tmp_path / "head-only", bundle_trunk=False)
    assert _keys(tmp_path / "head-only") == {"backbone.prompt.context"}
    assert not (tmp_path / "head-only" / "backbone").exists()
    assert json.loads((tmp_path / "head-only" / "config.json").read_text())["backbone"]["revision"] == base_sha
    assert _front_matter((tmp_path / "head-only" / "README.md").read_text())["base_model"] == base
    bundled = _repo("bundled")
    model.push_to_hub(bundled, token=ALICE)
    unbundled = _repo("unbundled")
    model.push_to_hub(unbundled, token=ALICE, bundle_trunk=False)

    # The base repo moves on: new U-Net weights on main.
    unet_file = tiny_repos["sd2"] / "unet" / "diffusion_pytorch_model.safetensors"
    changed = {k: v * 1.5 for k, v in load_file(str(unet_file)).items()}
    save_file(changed, str(tmp_path / "changed.safetensors"))
    api = HfApi(token=ALICE)
    api.upload_file(path_or_fileobj=str(tmp_path / "changed.safetensors"), repo_id=base,
                    path_in_repo="unet/diffusion_pytorch_model.safetensors")
    moved = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        base, taps=["up_ft.1"], token=ALICE, cache_dir=tmp_path / "c1")
    assert not torch.equal(_outputs(moved, _images())["up_ft.1"], expected["up_ft.1"])

    for name, cache in ((tmp_path / "head-only", tmp_path / "c2"), (unbundled, tmp_path / "c3")):
        pulled = AutoDiffusionPerception.from_pretrained(name, token=ALICE, cache_dir=cache)
        _assert_same(expected, _outputs(pulled, _images()))

    # The base repo disappears: the bundled model keeps working, the unbundled one says why not.
    api.delete_repo(base)
    pulled = AutoDiffusionPerception.from_pretrained(bundled, token=ALICE, cache_dir=tmp_path / "c4")
    _assert_same(expected, _outputs(pulled, _images()))
    with pytest.raises(FileNotFoundError, match=base):
        AutoDiffusionPerception.from_pretrained(unbundled, token=ALICE, cache_dir=tmp_path / "c5")


def test_unbundled_push_needs_a_hub_base(sd2_model):
    with pytest.raises(ValueError, match="bundle_trunk=False"):
        sd2_model.push_to_hub(_repo("nope"), token=ALICE, bundle_trunk=False)


def test_cli_push_uploads_a_checked_folder(local_hub, saved_sd2, tmp_path, capsys):
    from diffperception.cli import main

    repo = _repo("cli")
    assert main(["push", str(saved_sd2), repo, "--token", ALICE, "--private"]) == 0
    assert "at commit" in capsys.readouterr().out
    files = local_hub.files_at(repo)
    assert {"config.json", "model.safetensors", "README.md", "backbone/unet/config.json"} <= set(files)
    assert files["model.safetensors"]["lfs"] is True
    pulled = AutoDiffusionPerception.from_pretrained(repo, token=ALICE, cache_dir=tmp_path / "c")
    assert type(pulled) is DiffusionPerceptionForFeatureExtraction

    broken = tmp_path / "broken"
    shutil.copytree(saved_sd2, broken)
    (broken / "model.safetensors").unlink()
    assert main(["push", str(broken), _repo("cli-broken"), "--token", ALICE]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_registry_lists_models_and_refuses_duplicates_and_unregistered(sd2_model, tmp_path):
    from diffperception import list_models, register_model

    assert list_models("*FeatureExtraction") == ["DiffusionPerceptionForFeatureExtraction"]
    with pytest.raises(ValueError, match="already registered"):
        @register_model(name="DiffusionPerceptionForFeatureExtraction")
        class Impostor(DiffusionPerceptionForFeatureExtraction):
            pass

    class Unregistered(DiffusionPerceptionForFeatureExtraction):
        pass

    model = Unregistered(sd2_model.config, source=sd2_model.source)
    with pytest.raises(ValueError, match="not a registered task model.*@register_model"):
        model.save_pretrained(tmp_path / "m")
