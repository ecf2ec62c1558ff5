"""Safety: saves and pushes never destroy or leak what the user had.

Kind 2 of the safety issue. A save is all-or-nothing (written next to the target, then moved
into place); only files a save writes are replaced or removed; a user's README.md and other
files are kept, locally and on the Hub. Pushes run the real huggingface_hub client against the
session LocalHub.
"""

from __future__ import annotations

import json
import resource
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction
from diffperception.modeling.hub_io import CARD_MARKER

ALICE = "hf_alice_token"


def _repo(name: str) -> str:
    return f"alice/{name}-{uuid.uuid4().hex[:8]}"


def _images() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)


def _outputs(model) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(_images())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".saving-" in p.name]


@pytest.fixture(scope="module")
def model(tiny_repos):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd2"], taps=["up_ft.1"])


@pytest.fixture(scope="module")
def other_model(tiny_repos):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd2"], taps=["up_ft.1", "mid_block"], timesteps=[500])


# ------------------------------------------------------------------------------ local saves

def test_a_save_keeps_the_users_files_and_readme(model, tmp_path):
    folder = tmp_path / "m"
    (folder / "backbone" / "tokenizer").mkdir(parents=True)
    (folder / "backbone" / "NOTES.md").write_text("my notes\n")
    (folder / "backbone" / "tokenizer" / "notes.txt").write_text("more notes\n")
    (folder / "README.md").write_text("# My model\n\nMy own card.\n")
    (folder / "model_ema.safetensors").write_bytes(b"not ours")
    model.save_pretrained(folder)
    assert (folder / "backbone" / "NOTES.md").read_text() == "my notes\n"
    assert (folder / "backbone" / "tokenizer" / "notes.txt").read_text() == "more notes\n"
    assert (folder / "README.md").read_text() == "# My model\n\nMy own card.\n"
    assert (folder / "model_ema.safetensors").read_bytes() == b"not ours"
    assert (folder / "backbone" / "unet" / "config.json").is_file()
    assert _same(_outputs(model), _outputs(AutoDiffusionPerception.from_pretrained(folder)))
    assert not _leftovers(tmp_path)


def test_a_generated_card_is_replaced_and_an_edited_one_kept(model, other_model, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert CARD_MARKER in card and "| timesteps | 500 |" not in card
    other_model.save_pretrained(folder)  # the card is ours: it follows the new save
    assert "| timesteps | 500 |" in (folder / "README.md").read_text()

    edited = (folder / "README.md").read_text().replace(CARD_MARKER + "\n", "") + "\nMy results.\n"
    (folder / "README.md").write_text(edited)  # the user removed the marker: their card now
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == edited


def test_a_bundled_then_unbundled_save_drops_only_package_backbone_files(model, tiny_repos, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    (folder / "backbone" / "NOTES.md").write_text("keep me\n")
    model.save_pretrained(folder, bundle_trunk=False)
    left = sorted(p.relative_to(folder / "backbone").as_posix() for p in (folder / "backbone").rglob("*"))
    assert left == ["NOTES.md"]
    loaded = AutoDiffusionPerception.from_pretrained(folder)  # the trunk comes from the base
    assert _same(_outputs(model), _outputs(loaded))


@pytest.mark.parametrize("size", ["lots", "-1MB", 0, "1XB"])
def test_an_invalid_shard_size_leaves_the_earlier_save_intact(model, other_model, tmp_path, size):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=rf"max_shard_size = {size!r} is invalid"):
        other_model.save_pretrained(folder, max_shard_size=size)
    assert _snapshot(folder) == before
    assert not _leftovers(tmp_path)
    assert _same(_outputs(model), _outputs(AutoDiffusionPerception.from_pretrained(folder)))


@contextmanager
def _full_disk(limit: int = 64 * 1024):
    """Writes past ``limit`` bytes fail with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("sharded", [False, True])
def test_a_full_disk_leaves_the_earlier_save_intact(model, other_model, tmp_path, sharded):
    folder = tmp_path / "m"
    model.save_pretrained(folder, max_shard_size="1MB" if sharded else "5GB")
    before = _snapshot(folder)
    with pytest.raises(OSError, match=rf"Saving .*{folder.name} failed while writing.*earlier save in it is intact"), \
            _full_disk():
        other_model.save_pretrained(folder)
    assert _snapshot(folder) == before
    assert not _leftovers(tmp_path)
    assert _same(_outputs(model), _outputs(AutoDiffusionPerception.from_pretrained(folder)))


def test_a_sharded_save_replaces_a_single_file_and_back(model, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    model.save_pretrained(folder, max_shard_size="1MB")
    names = sorted(p.name for p in folder.glob("model*"))
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]


def test_a_linked_folder_in_the_target_is_never_written_through(model, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "backbone").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the model folder"):
        model.save_pretrained(folder)
    assert not any(elsewhere.iterdir()) and not (folder / "config.json").exists()


# ---------------------------------------------------------------------------------- pushes

def _seed_repo(repo: str) -> None:
    """A repo holding the user's files and an earlier sharded push."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=ALICE)
    api.create_repo(repo)
    files = {
        "model_ema.safetensors": b"ema", "models/teacher.safetensors": b"teacher",
        "backbone/NOTES.md": b"notes", "backbone/tokenizer/notes.txt": b"tok notes",
        "README.md": b"# Theirs\n\nHand-written card.\n", "results/model.safetensors": b"r",
        "model-00001-of-00002.safetensors": b"old1", "model-00002-of-00002.safetensors": b"old2",
        "model.safetensors.index.json": b"{}", "backbone/unet/config.json": b"{}",
        "backbone/vae/config.json": b"{}",
    }
    api.create_commit(repo, [CommitOperationAdd(k, v) for k, v in files.items()],
                      commit_message="the user's files")


USER_FILES = {"model_ema.safetensors", "models/teacher.safetensors", "backbone/NOTES.md",
              "backbone/tokenizer/notes.txt", "README.md", "results/model.safetensors"}


def test_push_deletes_only_files_the_package_wrote(local_hub, model, tmp_path):
    repo = _repo("push-keeps")
    _seed_repo(repo)
    model.push_to_hub(repo, token=ALICE)
    files = set(local_hub.files_at(repo))
    assert USER_FILES <= files
    assert local_hub.read_file(repo, "README.md") == b"# Theirs\n\nHand-written card.\n"
    assert not {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"} & files
    assert {"config.json", "model.safetensors", "backbone/unet/config.json"} <= files
    pulled = AutoDiffusionPerception.from_pretrained(repo, cache_dir=tmp_path / "c")
    assert _same(_outputs(model), _outputs(pulled))


def test_cli_push_deletes_only_files_the_package_wrote(local_hub, model, tmp_path, capsys):
    from diffperception.cli import main

    repo = _repo("cli-keeps")
    _seed_repo(repo)
    folder = tmp_path / "saved"
    model.save_pretrained(folder, max_shard_size="1MB")
    (folder / "notes.txt").write_text("local only\n")
    assert main(["push", str(folder), repo, "--token", ALICE]) == 0
    files = set(local_hub.files_at(repo))
    assert USER_FILES <= files and "notes.txt" not in files
    shards = {f for f in files if f.startswith("model-")}
    assert shards == {p.name for p in folder.glob("model-*.safetensors")} and len(shards) > 1
    assert all(local_hub.read_file(repo, name) == (folder / name).read_bytes() for name in shards)


def test_push_replaces_a_generated_card_naming_the_repo(local_hub, model, tmp_path):
    from diffperception.cli import main

    repo = _repo("card")
    model.push_to_hub(repo, token=ALICE)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)  # the local card's snippet loads str(folder)
    assert str(folder) in (folder / "README.md").read_text()
    assert main(["push", str(folder), repo, "--token", ALICE]) == 0
    card = local_hub.read_file(repo, "README.md").decode()
    assert CARD_MARKER in card and f"from_pretrained({repo!r})" in card
    assert str(tmp_path) not in card


def test_cli_push_refuses_a_folder_with_a_link_leading_outside(local_hub, model, tmp_path, capsys):
    from diffperception.cli import main

    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_secret\n")
    vocab = folder / "backbone" / "tokenizer" / "vocab.json"
    vocab.unlink()
    vocab.symlink_to(secret)
    repo = _repo("link")
    assert main(["push", str(folder), repo, "--token", ALICE]) == 2
    assert "outside the model folder" in capsys.readouterr().err
    assert not local_hub.repo_exists(repo)


def test_cli_push_refuses_an_unbundled_save_of_a_local_base(local_hub, model, tmp_path, capsys):
    from diffperception.cli import main

    folder = tmp_path / "head-only"
    model.save_pretrained(folder, bundle_trunk=False)
    assert json.loads((folder / "config.json").read_text())["backbone"]["repo_id"] == str(
        model.config.backbone.repo_id)  # a local save keeps the path: it reloads from it
    repo = _repo("unbundled")
    assert main(["push", str(folder), repo, "--token", ALICE]) == 2
    assert "no Hub repo" in capsys.readouterr().err
    assert not local_hub.repo_exists(repo)
