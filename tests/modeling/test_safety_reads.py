"""Safety: a model reads only files inside its own folder or repository, and hostile or broken
files are clear errors naming the file and the fix, within bounded memory.

Kinds 1 and 5 of the safety issue. Each test builds a hostile copy of a tiny diffusers folder
(or of a saved task model) and checks the error before anything outside is read; Hub cases use
the session LocalHub with the real client.
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


def _copy(tiny_repos, tmp_path: Path, kind: str = "sd1") -> Path:
    folder = tmp_path / f"{kind}-copy"
    shutil.copytree(tiny_repos[kind], folder)
    return folder


def _build(folder: Path, **options):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        folder, taps=options.pop("taps", ["mid_block"]), **options)


def _shard_with_index(component: Path, stem: str, shard_name: str, outside: Path) -> None:
    """Replaces the component's single weight file by an index naming ``shard_name``."""
    single = component / f"{stem}.safetensors"
    tensors = load_file(str(single))
    save_file(tensors, str(outside))  # the "other" weights an attacker points at
    single.unlink()
    index = {"metadata": {}, "weight_map": {key: shard_name for key in tensors}}
    (component / f"{stem}.safetensors.index.json").write_text(json.dumps(index))


# ---------------------------------------------------------------- kind 1: inside the model only

@pytest.mark.parametrize("component,stem", [
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
])
@pytest.mark.parametrize("style", ["relative", "absolute"])
def test_shard_index_naming_a_file_outside_is_refused(tiny_repos, tmp_path, component, stem, style):
    folder = _copy(tiny_repos, tmp_path)
    outside = tmp_path / "other.safetensors"
    name = "../../other.safetensors" if style == "relative" else str(outside)
    _shard_with_index(folder / component, stem, name, outside)
    with pytest.raises(ValueError, match=r"index\.json names shard\(s\).*not file names next to it"):
        _build(folder)


def test_saved_model_shard_index_naming_a_file_outside_is_refused(tiny_repos, tmp_path):
    model = _build(tiny_repos["sd1"])
    model.save_pretrained(tmp_path / "m")
    for name in ("../stolen.safetensors", str(tmp_path / "stolen.safetensors"), "sub/x.safetensors"):
        folder = tmp_path / f"m-{uuid.uuid4().hex[:6]}"
        shutil.copytree(tmp_path / "m", folder)
        _shard_with_index(folder, "model", name, tmp_path / "stolen.safetensors")
        with pytest.raises(ValueError, match=rf"{folder.name}.*model.safetensors.index.json names"):
            AutoDiffusionPerception.from_pretrained(folder)


@pytest.mark.parametrize("link", [
    "tokenizer/notes.txt",                          # not even a file the tokenizer needs
    "tokenizer/vocab.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "scheduler",                                    # a whole linked folder
])
def test_links_leading_outside_the_folder_are_refused(tiny_repos, tmp_path, link):
    folder = _copy(tiny_repos, tmp_path)
    target = folder / link
    elsewhere = tmp_path / "elsewhere" / target.name
    elsewhere.parent.mkdir()
    if target.exists():
        shutil.move(str(target), str(elsewhere))
    else:
        elsewhere.write_text("private notes\n")
    target.symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())
    with pytest.raises(ValueError, match=r"outside the model folder.*Replace the link by a copy"):
        _build(folder)
    with pytest.raises(ValueError, match="outside the model folder"):
        list_taps(folder)


def test_links_inside_the_folder_are_followed(tiny_repos, tmp_path):
    folder = _copy(tiny_repos, tmp_path)
    vocab = folder / "tokenizer" / "vocab.json"
    shutil.move(str(vocab), str(folder / "shared-vocab.json"))
    vocab.symlink_to(Path("..") / "shared-vocab.json")
    model = _build(folder)
    model.save_pretrained(tmp_path / "m")
    saved = tmp_path / "m" / "backbone" / "tokenizer" / "vocab.json"
    assert not saved.is_symlink() and saved.read_bytes() == (folder / "shared-vocab.json").read_bytes()


def test_a_link_swapped_in_after_loading_is_not_followed_into_a_save(tiny_repos, tmp_path):
    folder = _copy(tiny_repos, tmp_path)
    model = _build(folder)
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_secret"}')
    merges = folder / "tokenizer" / "merges.txt"
    merges.unlink()
    merges.symlink_to(secret)
    with pytest.raises(ValueError, match="outside the model folder"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name]


def test_only_known_backbone_files_are_copied(tiny_repos, tmp_path):
    folder = _copy(tiny_repos, tmp_path)
    (folder / "tokenizer" / "notes.txt").write_text("my notes\n")
    (folder / "unet" / "train_log.json").write_text("{}")
    _build(folder).save_pretrained(tmp_path / "m")
    saved = {p.relative_to(tmp_path / "m" / "backbone").as_posix()
             for p in (tmp_path / "m" / "backbone").rglob("*") if p.is_file()}
    assert "tokenizer/notes.txt" not in saved and "unet/train_log.json" not in saved
    assert {"unet/config.json", "tokenizer/vocab.json", "model_index.json"} <= saved


@pytest.mark.parametrize("config", ["vae/config.json", "unet/config.json", "text_encoder/config.json",
                                    "scheduler/scheduler_config.json", "model_index.json"])
@pytest.mark.parametrize("content", ['"alice/some-vae"', '["alice/some-vae"]', "7", "{not json"])
def test_a_config_that_is_not_an_object_is_refused_without_a_request(
        tiny_repos, tmp_path, local_hub, config, content):
    folder = _copy(tiny_repos, tmp_path)
    (folder / config).write_text(content)
    before = len(local_hub.request_log)
    with pytest.raises(ValueError, match=rf"{config}.*(must hold a JSON object|is not valid JSON)"):
        _build(folder)
    assert len(local_hub.request_log) == before  # nothing was fetched by that name


def _upload(folder: Path, name: str) -> str:
    from huggingface_hub import HfApi

    repo = f"alice/{name}-{uuid.uuid4().hex[:8]}"
    api = HfApi(token=ALICE)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=folder)
    return repo


@pytest.fixture(scope="module")
def unbundled_folder(tiny_repos, tmp_path_factory) -> Path:
    """A head-only save whose base is a local folder (its config records the path)."""
    folder = tmp_path_factory.mktemp("unbundled") / "m"
    _build(tiny_repos["sd1"]).save_pretrained(folder, bundle_trunk=False)
    return folder


@pytest.mark.parametrize("base", ["absolute", "relative", "home", "alias", "local-name"])
def test_a_downloaded_config_naming_a_local_base_is_refused(
        tiny_repos, unbundled_folder, tmp_path, monkeypatch, base):
    import diffperception.default_model  # noqa: F401 - registers "diffperception:default"

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_repos["sd1"], tmp_path / "sd")
    repo_id = {"absolute": str(tmp_path / "sd"), "relative": "./sd", "home": "~/sd",
               "alias": "diffperception:default", "local-name": "local:sd"}[base]
    folder = tmp_path / "upload"
    shutil.copytree(unbundled_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["repo_id"] = repo_id
    (folder / "config.json").write_text(json.dumps(config))
    repo = _upload(folder, "local-base")
    error = FileNotFoundError if base == "local-name" else ValueError
    with pytest.raises(error, match="bundle_trunk=True"):
        AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path / "cache")
    # The same folder on disk is the user's own: its local base loads.
    if base in ("absolute", "relative"):
        assert AutoDiffusionPerception.from_pretrained(folder).config.backbone.repo_id == repo_id


def test_a_downloaded_config_never_resolves_its_base_to_a_local_folder(local_hub, tiny_repos, tmp_path,
                                                                      monkeypatch):
    """A folder in the working directory spelled like the base repo id is not read."""
    base = _upload(tiny_repos["sd2"], "tiny-sd2")
    model = _build(base, taps=["up_ft.1"], token=ALICE, cache_dir=tmp_path / "c0")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    repo = f"alice/head-{uuid.uuid4().hex[:8]}"
    model.push_to_hub(repo, token=ALICE, bundle_trunk=False)

    monkeypatch.chdir(tmp_path)
    shadow = tmp_path / base  # ./alice/tiny-sd2-xxxx with other U-Net weights
    shutil.copytree(tiny_repos["sd2"], shadow)
    unet = shadow / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v * 2 for k, v in load_file(str(unet)).items()}, str(unet))
    pulled = AutoDiffusionPerception.from_pretrained(repo, token=ALICE, cache_dir=tmp_path / "c1")
    with torch.no_grad():
        got = pulled(images)
    assert torch.equal(got["up_ft.1"], expected["up_ft.1"])


# --------------------------------------------------------------- kind 5: hostile or broken files

@pytest.fixture(scope="module")
def saved_folder(tiny_repos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "m"
    _build(tiny_repos["sd1"]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("content,match", [
    ("{not json", r"config.json is not valid JSON.*save_pretrained"),
    ("[1, 2]", r"config.json must hold a JSON object, got a list"),
    ('"x"', r"config.json must hold a JSON object, got a str"),
    ("{}", r"config.json is not a valid task model config:.*missing"),
    ('{"architecture": "DiffusionPerceptionForFeatureExtraction", "backbone": [], "features": {}}',
     r"config.json is not a valid task model config: config\['backbone'\] must be a JSON object"),
    ("[" * 100_000 + "]" * 100_000, r"config.json is not valid JSON \(RecursionError"),
])
def test_a_broken_task_config_names_the_file_and_the_fix(saved_folder, tmp_path, content, match):
    folder = tmp_path / "m"
    shutil.copytree(saved_folder, folder)
    (folder / "config.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        AutoDiffusionPerception.from_pretrained(folder)


def test_a_huge_config_is_refused_unread(tiny_repos, tmp_path):
    from diffperception.backbones.model_files import MAX_CONFIG_BYTES

    folder = _copy(tiny_repos, tmp_path)
    config = (folder / "unet" / "config.json").read_text()
    with open(folder / "unet" / "config.json", "w") as f:  # valid JSON, padded past the bound
        f.write(config[:-1] + " " * (MAX_CONFIG_BYTES + 1) + "}")
    with pytest.raises(ValueError, match=r"unet/config.json is \d+ bytes, more than a config can be"):
        _build(folder)


@pytest.mark.parametrize("file,key,value,match", [
    ("unet", "norm_num_groups", 0, r"norm_num_groups = 0 is invalid: an integer from 1"),
    ("unet", "norm_num_groups", 3, r"norm_num_groups = 3 does not divide block_out_channels"),
    ("unet", "layers_per_block", -1, "layers_per_block = -1 is invalid"),
    ("unet", "block_out_channels", [10**9, 10**9], "block_out_channels = .* is invalid"),
    ("unet", "block_out_channels", "wide", "block_out_channels = 'wide' is invalid"),
    ("unet", "sample_size", 10**6, "sample_size = 1000000 is invalid"),
    ("unet", "cross_attention_dim", 0, "cross_attention_dim = 0 is invalid"),
    ("unet", "down_block_types", ["DownBlock2D"], "down_block_types = .* one per block_out_channels"),
    ("unet", "_class_name", "UNet3DConditionModel", r"holds a UNet3DConditionModel; diffperception runs"),
    ("vae", "norm_num_groups", 0, "vae/config.json: norm_num_groups = 0 is invalid"),
    ("vae", "latent_channels", True, "latent_channels = True is invalid"),
    ("vae", "scaling_factor", "big", "scaling_factor = 'big' is invalid: a number"),
])
def test_impossible_network_values_are_refused_before_building(tiny_repos, tmp_path, file, key, value,
                                                               match):
    folder = _copy(tiny_repos, tmp_path)
    path = folder / file / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as info:
        _build(folder)
    assert f"{file}/config.json" in str(info.value) or "UNet3D" in str(info.value)
    if file == "unet":  # list_taps reads the network config only
        with pytest.raises(ValueError, match=match):
            list_taps(folder)


def test_a_missing_network_key_takes_the_diffusers_default(tiny_repos, tmp_path):
    """A key the file leaves out is what diffusers builds: its __init__ default."""
    folder = _copy(tiny_repos, tmp_path)
    path = folder / "unet" / "config.json"
    config = json.loads(path.read_text())
    config.pop("cross_attention_dim")  # default 1280, which the weights do not have
    path.write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="mis-shaped|size mismatch|does not match"):
        _build(folder)


@pytest.mark.parametrize("index,match", [
    ({"metadata": {}}, r"not a valid shard index: it needs a 'weight_map' object.*got NoneType"),
    ({"weight_map": ["a.safetensors"]}, "needs a 'weight_map' object"),
    ({"weight_map": {"w": 3}}, "not file names next to it"),
    ([1], "must hold a JSON object, got a list"),
])
def test_a_broken_shard_index_is_a_clear_error(tiny_repos, tmp_path, index, match):
    folder = _copy(tiny_repos, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match) as info:
        _build(folder)
    assert "diffusion_pytorch_model.safetensors.index.json" in str(info.value)


@pytest.mark.parametrize("length,match", [  # the tiny text encoder has 16 positions
    (10**9, r"model_max_length = 1000000000 is invalid: prompts are padded to it.*from 1 to 16"),
    (17, r"model_max_length = 17 is invalid.*text_encoder's max_position_embeddings is 16"),
    (0, "model_max_length = 0 is invalid"),
    ("77", "model_max_length = '77' is invalid"),
    (None, "model_max_length = None is invalid"),
])
def test_a_tokenizer_length_beyond_its_encoder_is_refused(tiny_repos, tmp_path, length, match):
    folder = _copy(tiny_repos, tmp_path)
    path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if length is None:
        config.pop("model_max_length")
    else:
        config["model_max_length"] = length
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as info:
        _build(folder, prompt="a photo")
    assert "tokenizer/tokenizer_config.json" in str(info.value)


def test_a_saved_backbone_with_a_huge_tokenizer_length_is_refused(saved_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(saved_folder, folder)
    path = folder / "backbone" / "tokenizer" / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": 10**9}))
    with pytest.raises(ValueError, match="backbone/tokenizer/tokenizer_config.json: model_max_length"):
        AutoDiffusionPerception.from_pretrained(folder)


@pytest.mark.parametrize("steps", [10**9, 0, 1.5, "1000", True])
def test_an_unreasonable_number_of_timesteps_is_refused(tiny_repos, tmp_path, steps):
    folder = _copy(tiny_repos, tmp_path, "pixel")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_train_timesteps": steps}))
    with pytest.raises(ValueError, match=r"scheduler_config.json: num_train_timesteps = .* is invalid"):
        _build(folder, taps=["mid_block"], timesteps=[0])


@pytest.mark.parametrize("entry", ['"x"', '["diffusers"]', '[1, 2]', '{"a": 1}'])
def test_a_broken_model_index_entry_is_a_clear_error(tiny_repos, tmp_path, entry):
    folder = _copy(tiny_repos, tmp_path)
    path = folder / "model_index.json"
    path.write_text(path.read_text().replace('"text_encoder": [\n    "transformers",\n    '
                                             '"CLIPTextModel"\n  ]', f'"text_encoder": {entry}'))
    assert entry in path.read_text()
    with pytest.raises(ValueError, match=r"model_index.json: 'text_encoder' = .* is invalid: a "
                                         r"component entry is \[library, class\]"):
        _build(folder)
