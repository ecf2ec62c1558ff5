"""``diffperception push FOLDER REPO_ID``: upload a saved task model folder in one commit.

The folder is checked first (a valid ``config.json`` naming a registered task model, a bundled
trunk or a Hub base, readable safetensors weights, the model card, no link leading outside the
folder), so a broken folder never reaches the Hub and no local path or outside file is published.
Only the files a save writes are uploaded; the card's usage snippet names the repository. The upload is the
one ``push_to_hub`` makes (``diffperception.modeling.hub_io.upload_model_folder``).

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

    Args:
        folder: Folder written by ``save_pretrained``.

    Returns:
        Its weight files (``model.safetensors`` or every shard).

    Raises:
        FileNotFoundError: Missing folder, config, weights or model card.
        ValueError: Invalid config or unregistered architecture; an unbundled model whose base
            is no Hub repo; a file that is a link leading outside the folder.
        RuntimeError: Unreadable (e.g. truncated) weights.
    """
    from ..backbones.loading import read_tensors
    from ..backbones.model_files import check_inside
    from .hub_io import (CARD_NAME, CONFIG_NAME, published_config, read_task_config,
                         saved_weight_files, written_files)
    from .registry import get_model_class

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; save the model with save_pretrained.")
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: it is not a saved task model.")
    get_model_class(read_task_config(folder)[1].architecture)
    published_config(folder)  # an unbundled save of a local base cannot be pushed
    for name in written_files(folder) + [CARD_NAME]:
        if (folder / name).exists() or (folder / name).is_symlink():
            check_inside(folder / name, folder)
    files = saved_weight_files(folder)
    for file in files:  # reads every tensor: a truncated file fails here, not after the upload
        read_tensors([file], None)
    if not (folder / CARD_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_NAME}; save it again with save_pretrained.")
    return files


def run(args: argparse.Namespace) -> int:
    """Checks the folder and uploads it; prints the commit URL."""
    from .hub_io import create_model_repo, upload_model_folder

    check_saved_folder(args.folder)
    repo_id = create_model_repo(args.repo_id, token=args.token, private=args.private or None)
    info = upload_model_folder(args.folder, repo_id, token=args.token,
                               commit_message=args.commit_message, branch=args.branch)
    print(f"pushed {args.folder} to {repo_id} at commit {info.oid}: {info.commit_url}")
    return 0
