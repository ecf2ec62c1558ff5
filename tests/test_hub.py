"""diffperception.hub: the path-or-repo-id rule, Hub errors, weight files, source aliases, pushes.

Hub errors come from the real huggingface_hub client talking to the session LocalHub
(tests/testing_utils/localhub on 127.0.0.1); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffperception import hub
from diffperception.backbones.loading import read_tensors, resolve_source
from diffperception.backbones.model_files import find_weight_files
from diffperception.hub import (
    is_hub_repo_id,
    list_source_aliases,
    register_source_alias,
    resolve_folder,
    resolve_source_alias,
    snapshot,
    source_kind,
)
from diffperception.modeling.hub_io import create_model_repo, is_written_file, upload_model_folder

ALICE, BOB = "hf_alice_token", "hf_bob_token"


def _repo(name: str) -> str:
    return f"alice/{name}-{uuid.uuid4().hex[:8]}"


def _tensors(seed: int, n: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"layer{seed}.{i}.weight": torch.randn(4, 3, generator=gen) for i in range(n)}


@pytest.fixture
def aliases(monkeypatch):
    """A private copy of the alias registry, so a test's registrations do not leak."""
    monkeypatch.setattr(hub, "_ALIASES", dict(hub._ALIASES))


# ------------------------------------------------------------------------ path or repo id

@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory with a folder ``models/sd``, a folder named like a repo id and a file."""
    (tmp_path / "models" / "sd").mkdir(parents=True)
    (tmp_path / "shadow" / "repo").mkdir(parents=True)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name,expected", [
    ("stabilityai/stable-diffusion-2-1", "repo"),
    ("gpt2", "repo"),
    ("Org-1/name_2.v3", "repo"),
    ("diffperception:default", "alias"),
    ("models/sd", "folder"),               # relative, exists
    ("./models/sd", "folder"),
    ("models/sd/", "folder"),
    ("shadow/repo", "folder"),             # a folder wins over the repo id spelled the same
    (Path("models/sd"), "folder"),
    ("./missing", (FileNotFoundError, r"Local folder './missing' does not exist")),
    ("../missing", (FileNotFoundError, "does not exist")),
    ("~/no-such-folder-7f3a", (FileNotFoundError, "does not exist")),
    ("/no/such/folder", (FileNotFoundError, "does not exist")),
    ("models/sd/unet", (FileNotFoundError, "does not exist")),   # a second '/': only a path
    ("org/name/", (FileNotFoundError, "does not exist")),         # a trailing '/': only a path
    (Path("org/name"), (FileNotFoundError, "does not exist")),    # a Path is never a repo id
    ("weights.safetensors", (FileNotFoundError, "is a file, not a folder")),
    ("not valid!", (FileNotFoundError, "neither an existing local folder nor a valid Hub repo id")),
    ("org--name", (FileNotFoundError, "neither an existing local folder")),
    ("x" * 97, (FileNotFoundError, "neither an existing local folder")),
    ("diffperception:defualt", (ValueError, r"Unknown source alias.*Did you mean \['diffperception:default'")),
    ("hf-hub:org/name", (ValueError, "Unknown source alias 'hf-hub:org/name'")),
    ("", (ValueError, "empty")),
    ("   ", (ValueError, "empty")),
    (3, (TypeError, "got int")),
])
def test_source_kind_rule(workdir, name, expected):
    import diffperception.default_model  # noqa: F401 - registers "diffperception:default"

    if isinstance(expected, str):
        assert source_kind(name) == expected
        assert is_hub_repo_id(name) is (expected == "repo")
    else:
        error, match = expected
        with pytest.raises(error, match=match):
            source_kind(name)
        assert is_hub_repo_id(name) is False


def test_local_folder_resolves_without_the_hub(workdir, local_hub):
    before = len(local_hub.request_log)
    source = resolve_folder("models/sd", revision="v1")
    assert source.folder == Path("models/sd") and source.folder.is_dir()
    assert (source.repo_id, source.revision) == ("models/sd", "v1")  # recorded, not checked
    assert len(local_hub.request_log) == before
    with pytest.raises(TypeError, match=r"Unknown Hub keyword\(s\) \['revison'\]"):
        resolve_folder("models/sd", revison="v1")


# ------------------------------------------------------------------------------ Hub errors

@pytest.fixture(scope="module")
def hub_repo(local_hub) -> tuple[str, str]:
    """A public repo with two files; returns (repo id, commit sha)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    repo = _repo("files")
    api = HfApi(token=ALICE)
    api.create_repo(repo)
    info = api.create_commit(repo, commit_message="two files", operations=[
        CommitOperationAdd("config.json", b'{"a": 1}'),
        CommitOperationAdd("unet/config.json", b'{"b": 2}'),
    ])
    return repo, info.oid


def test_snapshot_downloads_only_the_allowed_files_at_a_commit(hub_repo, tmp_path):
    repo, sha = hub_repo
    source = resolve_folder(repo, allow_patterns=["config.json"], cache_dir=tmp_path)
    assert source.revision == sha and source.folder.name == sha
    assert sorted(p.name for p in source.folder.iterdir()) == ["config.json"]
    assert json.loads((source.folder / "config.json").read_text()) == {"a": 1}


def test_unknown_or_private_repo_names_repo_and_token(local_hub, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    missing = _repo("missing")
    with pytest.raises(FileNotFoundError, match=rf"Hub repository '{missing}' was not found, or it "
                                                r"is private.*token=") as info:
        snapshot(missing, token=ALICE, cache_dir=tmp_path / "a")
    assert isinstance(info.value.__cause__, RepositoryNotFoundError)  # the client's error is kept

    private = _repo("private")
    create_model_repo(private, token=ALICE, private=True)
    for token in (False, BOB):
        with pytest.raises(FileNotFoundError, match=rf"'{private}' was not found, or it is private"):
            snapshot(private, token=token, cache_dir=tmp_path / f"b{token}")
    assert snapshot(private, token=ALICE, cache_dir=tmp_path / "c").is_dir()


def test_unknown_revision_names_repo_and_revision(hub_repo, tmp_path):
    repo, _ = hub_repo
    with pytest.raises(FileNotFoundError, match=rf"Revision 'no-such-branch' of '{repo}' does not "
                                                r"exist; pass an existing branch, tag or commit sha"):
        snapshot(repo, revision="no-such-branch", cache_dir=tmp_path)


def test_invalid_token_is_a_runtime_error_naming_the_token(hub_repo, tmp_path):
    repo, _ = hub_repo
    with pytest.raises(RuntimeError, match=rf"refused to send '{repo}' at revision 'main'.*token"):
        snapshot(repo, token="hf_not_a_token", cache_dir=tmp_path)


def test_offline_without_cache_fails_before_any_request(hub_repo, local_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo, _ = hub_repo
    before = len(local_hub.request_log)
    command = rf"hf download {repo} --revision main --cache-dir {tmp_path / 'empty'}"
    with pytest.raises(FileNotFoundError, match=rf"'{repo}' at revision 'main' is not in the local "
                                                rf"cache.*{command}"):
        snapshot(repo, local_files_only=True, cache_dir=tmp_path / "empty")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(FileNotFoundError, match="not in the local cache.*HF_HUB_OFFLINE=1"):
        resolve_source(repo, revision="v2", cache_dir=tmp_path / "empty")
    assert len(local_hub.request_log) == before


def test_offline_with_a_partial_cache_says_incomplete(hub_repo, tmp_path):
    repo, sha = hub_repo
    snapshot(repo, allow_patterns=["config.json"], cache_dir=tmp_path)  # online: one of two files
    assert snapshot(repo, allow_patterns=["config.json"], local_files_only=True,
                    cache_dir=tmp_path).name == sha                     # that one is cached
    with pytest.raises(FileNotFoundError, match=rf"cached copy of '{repo}' at revision 'main' is "
                                                r"incomplete.*hf download"):
        snapshot(repo, local_files_only=True, cache_dir=tmp_path)


# ---------------------------------------------------------------------------- weight files

def test_single_file(tmp_path):
    save_file(_tensors(0), str(tmp_path / "model.safetensors"))
    save_file(_tensors(1), str(tmp_path / "model.fp16.safetensors"))
    assert find_weight_files(tmp_path, "model") == [tmp_path / "model.safetensors"]
    assert find_weight_files(tmp_path, "model", variant="fp16") == [tmp_path / "model.fp16.safetensors"]


def _write_shards(folder: Path, index_name: str, shard_names: list[str]) -> dict[str, torch.Tensor]:
    everything, weight_map = {}, {}
    for seed, name in enumerate(shard_names):
        part = _tensors(seed)
        save_file(part, str(folder / name))
        everything |= part
        weight_map |= {key: name for key in part}
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return everything


@pytest.mark.parametrize("stem,variant,index,shards", [
    ("model", None, "model.safetensors.index.json",
     ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]),
    ("diffusion_pytorch_model", "fp16", "diffusion_pytorch_model.safetensors.index.fp16.json",
     ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
      "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]),
    ("diffusion_pytorch_model", "fp16", "diffusion_pytorch_model.fp16.safetensors.index.json",
     ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
      "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]),
])
def test_sharded_files_every_shard_once_in_name_order(tmp_path, stem, variant, index, shards):
    everything = _write_shards(tmp_path, index, shards)
    files = find_weight_files(tmp_path, stem, variant=variant)
    assert files == [tmp_path / s for s in sorted(shards)]
    loaded = read_tensors(files, None)
    assert loaded.keys() == everything.keys()
    assert all(torch.equal(loaded[k], everything[k]) for k in everything)


def test_diffusers_sharded_variant_is_found(tmp_path):
    """diffusers' own save_pretrained(variant=..., max_shard_size=...) is the reference naming."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path, variant="fp16", max_shard_size="20KB")
    files = find_weight_files(tmp_path, "diffusion_pytorch_model", variant="fp16")
    assert len(files) > 1
    loaded = read_tensors(files, None)
    expected = unet.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_missing_weights_list_the_folder_and_the_fix(tmp_path):
    save_file(_tensors(0), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"No weights model.safetensors \(or a sharded "
                                                r"model.safetensors.index.json\).*'model.bin'.*"
                                                r"safetensors only: save it again"):
        find_weight_files(tmp_path, "model", hint="save it again.")
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model.fp16.safetensors.*It has "
                                                r"diffusion_pytorch_model.safetensors: pass variant=None"):
        find_weight_files(tmp_path, "diffusion_pytorch_model", variant="fp16")
    with pytest.raises(FileNotFoundError, match=r"found nothing \(no folder\)"):
        find_weight_files(tmp_path / "absent", "model")


@pytest.mark.parametrize("weight_map,error,match", [
    ({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
     FileNotFoundError, r"names shard\(s\) \['model-00002-of-00002.safetensors'\] that are not in"),
    ({"a": "model-00001-of-00002.safetensors", "b": "../elsewhere.safetensors"},
     ValueError, "not file names next to it"),
    (None, ValueError, "is not valid JSON"),
])
def test_broken_shard_index(tmp_path, weight_map, error, match):
    save_file(_tensors(0), str(tmp_path / "model-00001-of-00002.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}) if weight_map else "{not json")
    with pytest.raises(error, match=match):
        find_weight_files(tmp_path, "model")


# ---------------------------------------------------------------------------- source aliases

def _diffusers_folder(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    return root


def test_registered_alias_resolves_everywhere_a_name_is_taken(tmp_path, aliases, local_hub):
    folder = _diffusers_folder(tmp_path / "tiny")
    register_source_alias("testorg:tiny", lambda: folder)
    assert "testorg:tiny" in list_source_aliases()
    before = len(local_hub.request_log)
    source = resolve_source("testorg:tiny", revision="ignored")
    assert (source.folder, source.repo_id, source.revision) == (folder, "testorg:tiny", None)
    assert resolve_source_alias("testorg:tiny") == folder
    assert len(local_hub.request_log) == before

    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_source_alias("testorg:tiny", lambda: folder)
    moved = _diffusers_folder(tmp_path / "moved")
    register_source_alias("testorg:tiny", lambda: moved, replace=True)
    assert resolve_source("testorg:tiny").folder == moved


def test_alias_errors(tmp_path, aliases):
    for bad in ("noscheme", "org/name", ":x", "a b:c"):
        with pytest.raises(ValueError, match="must look like 'scheme:name'"):
            register_source_alias(bad, lambda: tmp_path)
    with pytest.raises(TypeError, match="must be callable"):
        register_source_alias("testorg:x", str(tmp_path))  # type: ignore[arg-type]
    register_source_alias("testorg:gone", lambda: tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"'testorg:gone' points to .*gone, which is not a folder"):
        resolve_source("testorg:gone")
    with pytest.raises(ValueError, match=r"Unknown source alias 'testorg:gon'\. Did you mean \['testorg:gone'\]"):
        resolve_source("testorg:gon")


def test_importing_the_package_registers_the_default_model_alias():
    code = ("import diffperception, diffperception.hub as hub, sys; "
            "print(hub.resolve_source_alias('diffperception:default')); "
            "print('diffperception.default_model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    folder, imported = out.stdout.split()
    assert (Path(folder) / "model_index.json").is_file() and imported == "True"


# ---------------------------------------------------------------------------------- pushes

def _task_folder(root: Path, shards: int) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({
        "architecture": "DiffusionPerceptionForFeatureExtraction",
        "backbone": {"family": "sd", "repo_id": "org/base"}, "features": {"taps": ["mid_block"]}}))
    (root / "README.md").write_text("card\n")
    (root / "notes.txt").write_text("not a task model file\n")
    if shards == 1:
        save_file(_tensors(0), str(root / "model.safetensors"))
    else:
        _write_shards(root, "model.safetensors.index.json",
                      [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)])
        (root / "backbone" / "unet").mkdir(parents=True)
        (root / "backbone" / "unet" / "config.json").write_text("{}")
    return root


def test_push_uploads_task_files_and_drops_stale_ones_in_one_commit(local_hub, tmp_path):
    from huggingface_hub import HfApi

    repo = create_model_repo(_repo("push"), token=ALICE)
    upload_model_folder(_task_folder(tmp_path / "sharded", shards=2), repo, token=ALICE)
    assert set(local_hub.files_at(repo)) - {".gitattributes"} == {
        "config.json", "README.md", "model.safetensors.index.json", "backbone/unet/config.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    commits = len(HfApi(token=ALICE).list_repo_commits(repo))
    info = upload_model_folder(_task_folder(tmp_path / "single", shards=1), repo, token=ALICE,
                               commit_message="single file")
    assert set(local_hub.files_at(repo)) - {".gitattributes"} == {
        "config.json", "README.md", "model.safetensors"}
    assert len(HfApi(token=ALICE).list_repo_commits(repo)) == commits + 1
    assert local_hub.branch_head(repo) == info.oid
    assert not is_written_file("notes.txt") and is_written_file("model.safetensors")


def test_push_refused_names_repo_and_token(local_hub, tmp_path):
    theirs = create_model_repo(_repo("theirs"), token=ALICE)
    with pytest.raises(RuntimeError, match=rf"refused the push to '{theirs}'.*write access"):
        upload_model_folder(_task_folder(tmp_path / "m", shards=1), theirs, token=BOB)
    with pytest.raises(RuntimeError, match="refused the push to 'alice/.*token"):
        create_model_repo(_repo("anon"), token=False)
