"""``diffperception push FOLDER REPO_ID``: upload a saved task model folder in one commit.

The folder is checked first (a valid ``config.json`` naming a registered task model, readable
safetensors weights, the model card), so a broken folder never reaches the Hub.

Example:
    $ diffperception push out/ org/dift-sd21-features --private
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "check_saved_folder"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffperception push``."""
    parser.add_argument("folder", type=Path, help="folder written by save_pretrained")
    parser.add_argument("repo_id", help="Hub repository, 'namespace/name' (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--commit-message", default="Upload diffperception task model")
    parser.add_argument("--branch", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")


def check_saved_folder(folder: Path) -> list[Path]:
    """Checks that ``folder`` is a complete saved task model; returns its weight files.

    Raises:
        FileNotFoundError: Missing folder, config, weights or model card.
        ValueError: Invalid config or unregistered architecture.
        RuntimeError: Unreadable (e.g. truncated) weights.
    """
    from ..backbones.loading import read_tensors
    from ..config import TaskConfig
    from .base import CARD_NAME, _weight_files, read_config
    from .registry import get_model_class

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; save the model with save_pretrained.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved task model.")
    get_model_class(TaskConfig.from_dict(read_config(folder)).architecture)
    files = _weight_files(folder)
    for file in files:  # reads every tensor: a truncated file fails here, not after the upload
        read_tensors([file], None)
    if not (folder / CARD_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_NAME}; save it again with save_pretrained.")
    return files


def run(args: argparse.Namespace) -> int:
    """Checks the folder and uploads it; prints the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .base import BACKBONE_DIR

    check_saved_folder(args.folder)
    api = HfApi(token=args.token)
    try:
        repo_id = api.create_repo(args.repo_id, private=args.private or None, exist_ok=True).repo_id
        info = api.upload_folder(
            repo_id=repo_id, folder_path=args.folder, commit_message=args.commit_message,
            revision=args.branch,
            allow_patterns=["config.json", "model*.safetensors", "model*.safetensors.index.json",
                            "README.md", f"{BACKBONE_DIR}/*"],
            delete_patterns=["model*.safetensors", "model*.safetensors.index.json",
                             f"{BACKBONE_DIR}/**"],
        )
    except HfHubHTTPError as err:
        raise RuntimeError(f"The Hub refused the push to {args.repo_id!r}: {err}") from err
    print(f"pushed {args.folder} to {repo_id} at commit {info.oid}: {info.commit_url}")
    return 0
