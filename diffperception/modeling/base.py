"""The task model base: a ``PyTorchModelHubMixin`` model that saves and loads strictly.

The files of a saved model (``config.json``, ``model.safetensors``, ``backbone/``, ``README.md``)
and the helpers that find, read and push them live in ``diffperception.modeling.hub_io``.

``save_pretrained(..., bundle_trunk=False)`` leaves the trunk and ``backbone/`` out:
``model.safetensors`` then holds only what is not in the base model (head, learned prompt, text
context) and loading reads the trunk from the base repo at the pinned revision.
"""

from __future__ import annotations

import json
import os
import shutil
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..backbones.loading import ModelSource, read_tensors, resolve_source
from ..config import CONFIG_FORMAT_VERSION, TaskConfig
from ..hub import is_hub_repo_id
from .hub_io import (
    BACKBONE_DIR,
    CARD_NAME,
    CONFIG_NAME,
    backbone_config_files,
    check_state_dict,
    create_model_repo,
    format_keys,
    read_config,
    resolve_model_folder,
    saved_weight_files,
    upload_model_folder,
)
from .registry import registered_name

__all__ = [
    "DiffusionPerceptionModel",
    "TRUNK_PREFIXES",
]

MAX_SHARD_SIZE = "5GB"
# State-dict prefixes of the modules that come from the base model (left out by bundle_trunk=False).
TRUNK_PREFIXES = ("unet.", "vae.", "text_encoder.", "text_encoder_2.")
M = TypeVar("M", bound="DiffusionPerceptionModel")


# ----------------------------------------------------------------------------------- the base

class DiffusionPerceptionModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="diffperception",
    tags=["diffperception", "diffusion-features"],
):
    """Base of the task models: trunk + head + ``TaskConfig``, shared through the Hub.

    Subclasses register with ``@register_model`` and take ``(config, *, source=None,
    load_weights=True, **hub_kwargs)``; they own ``config`` (``TaskConfig``), ``source``
    (``ModelSource`` of the backbone) and register the backbone modules under ``TRUNK_PREFIXES``.
    The pipeline tag of the model card is given as a class keyword
    (``class X(DiffusionPerceptionModel, pipeline_tag="image-classification")``).
    """

    config: TaskConfig
    source: ModelSource
    #: Keys under these prefixes come from the base model (left out by ``bundle_trunk=False``).
    trunk_prefixes: ClassVar[tuple[str, ...]] = TRUNK_PREFIXES

    # ------------------------------------------------------------------------------- config

    def saved_config(self) -> dict[str, Any]:
        """The ``config.json`` dict: the config with the resolved base revision and versions."""
        from .. import __version__

        data = self.config.to_dict()
        if self.source.revision is not None:
            data["backbone"]["revision"] = self.source.revision
        data["architecture"] = registered_name(type(self))
        data["diffperception_version"] = __version__
        data["config_format"] = CONFIG_FORMAT_VERSION
        return data

    def _keeps_text_encoders(self) -> bool:
        return any(k.startswith(("text_encoder.", "text_encoder_2.")) for k in self.state_dict())

    # --------------------------------------------------------------------------------- save

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        bundle_trunk: bool = True,
        max_shard_size: int | str = MAX_SHARD_SIZE,
        metrics: Sequence[Any] | None = None,
        license: str | None = None,  # noqa: A002 - the model card field's name
        model_id: str | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Saves ``config.json``, ``model.safetensors`` (+ ``backbone/``) and ``README.md``.

        Args:
            save_directory: Folder to write (created if needed; files of an earlier save are
                replaced).
            bundle_trunk: Save the trunk's weights and configs (the folder works without the
                base repo); False saves only the head and reloads the trunk from the base repo
                at the pinned revision.
            max_shard_size: Shard the weights above this size (huggingface_hub's helpers).
            metrics: Evaluation results for the card's ``model-index``: ``EvalResult``s or dicts
                of its fields (``task_type``, ``dataset_type``, ``dataset_name``,
                ``metric_type``, ``metric_value``, ...).
            license: License of the card; default: the base model's, when known.
            model_id: The name the card's usage snippet loads (default: ``save_directory``).
            push_to_hub: Also push (``repo_id``, default the folder name) with
                ``push_to_hub_kwargs``.

        Returns:
            The commit URL when pushed, else None.

        Example:
            >>> model.save_pretrained("out/")            # config.json, model.safetensors, README.md
            >>> AutoDiffusionPerception.from_pretrained("out/")
        """
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(save_directory, bundle_trunk=bundle_trunk,
                              max_shard_size=max_shard_size)
        card = self.generate_model_card(model_id=model_id or str(save_directory), metrics=metrics,
                                        license=license, bundle_trunk=bundle_trunk)
        card.save(save_directory / CARD_NAME)
        if push_to_hub:
            return self.push_to_hub(repo_id or save_directory.name, bundle_trunk=bundle_trunk,
                                    max_shard_size=max_shard_size, metrics=metrics,
                                    license=license, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, *, bundle_trunk: bool = True,
                         max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
        """Writes the config, the weights (sharded above ``max_shard_size``) and ``backbone/``."""
        from huggingface_hub import save_torch_state_dict

        # Read before writing: the model may have been loaded from this very folder.
        configs = backbone_config_files(self.source.folder, self._keeps_text_encoders()) \
            if bundle_trunk else {}
        state = self.state_dict()
        if not bundle_trunk:
            state = {k: v for k, v in state.items() if not k.startswith(self.trunk_prefixes)}
        meta = [k for k, v in state.items() if v.is_meta]
        if meta:
            raise RuntimeError(f"Tensors {format_keys(meta)} have no values (meta device): load the "
                               "weights before saving.")
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.saved_config(), indent=2) + "\n")
        save_torch_state_dict(
            {k: v.detach() for k, v in state.items()}, save_directory,
            filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size,
            metadata={"diffperception_contents": "trunk+head" if bundle_trunk else "head"},
        )
        backbone = save_directory / BACKBONE_DIR
        shutil.rmtree(backbone, ignore_errors=True)
        for name, data in configs.items():
            (backbone / name).parent.mkdir(parents=True, exist_ok=True)
            (backbone / name).write_bytes(data)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        bundle_trunk: bool = True,
        commit_message: str = "Upload diffperception task model",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        metrics: Sequence[Any] | None = None,
        license: str | None = None,  # noqa: A002
        max_shard_size: int | str = MAX_SHARD_SIZE,
        **_: Any,
    ) -> str:
        """Saves the model into a temporary folder and uploads it in one commit.

        Args:
            repo_id: ``"namespace/name"``; the repo is created if it does not exist.
            bundle_trunk: See ``save_pretrained``; False needs a Hub base model.
            commit_message, private, token, branch, create_pr: As for huggingface_hub.
            metrics, license, max_shard_size: See ``save_pretrained``.

        Returns:
            The commit URL (a ``CommitInfo``: ``.oid`` is the commit sha).

        Raises:
            ValueError: ``bundle_trunk=False`` with a base model that is no Hub repo (a local
                folder or a source alias).
            RuntimeError: The Hub refused the push (no token or no write access).

        Example:
            >>> model.push_to_hub("org/dift-sd21-features", private=True)
        """
        from huggingface_hub.utils import SoftTemporaryDirectory

        if not bundle_trunk and not is_hub_repo_id(self.config.backbone.repo_id):
            raise ValueError(
                f"bundle_trunk=False pushes a model whose trunk must be read from its base repo, "
                f"but the base {self.config.backbone.repo_id!r} is no Hub repo; push with "
                "bundle_trunk=True, or build the model from a Hub repo id."
            )
        repo_id = create_model_repo(repo_id, token=token, private=private)
        with SoftTemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder, bundle_trunk=bundle_trunk, max_shard_size=max_shard_size,
                                 metrics=metrics, license=license, model_id=repo_id)
            return upload_model_folder(folder, repo_id, token=token, commit_message=commit_message,
                                       branch=branch, create_pr=create_pr)

    def generate_model_card(self, *args: Any, model_id: str | None = None,
                            metrics: Sequence[Any] | None = None, license: str | None = None,  # noqa: A002
                            bundle_trunk: bool = True, **kwargs: Any):
        """The model card (``huggingface_hub.ModelCard``); see ``diffperception.modeling.model_card``."""
        from .model_card import build_model_card

        return build_model_card(self, model_id=model_id, metrics=metrics, license=license,
                                bundle_trunk=bundle_trunk)

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (Python source that runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id)

    # --------------------------------------------------------------------------------- load

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        **model_kwargs: Any,
    ) -> M:
        """Loads a saved task model from a local folder or a Hub repo (no code is executed).

        Args:
            pretrained_model_name_or_path: Folder written by ``save_pretrained`` or a Hub repo id.
            revision: Branch, tag or commit sha of the Hub repo.
            cache_dir: huggingface_hub cache folder.
            local_files_only: Use the cache only (also implied by ``HF_HUB_OFFLINE=1``).
            token: Hub token (private repos; also used for the base repo of an unbundled model).
            force_download: Download again even when cached.

        Raises:
            FileNotFoundError: Missing folder, repo, revision, weights; offline without a cache.
            ValueError: Invalid config (unknown keys, newer format) or another architecture.
            RuntimeError: Missing, unexpected or mis-shaped tensors; a truncated weight file.

        Example:
            >>> model = DiffusionPerceptionForFeatureExtraction.from_pretrained("org/name")
        """
        if model_kwargs:
            raise TypeError(f"Unexpected argument(s) {sorted(model_kwargs)}: the model is built "
                            "from its config.json.")
        folder = resolve_model_folder(pretrained_model_name_or_path, revision=revision,
                                      cache_dir=cache_dir, local_files_only=local_files_only,
                                      token=token, force_download=force_download)
        config = read_config(folder)
        target = cls._class_for(TaskConfig.from_dict(config).architecture, folder)
        return target._from_pretrained(model_id=str(folder), revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, token=token,
                                       local_files_only=local_files_only, config=config)

    @classmethod
    def _class_for(cls, architecture: str, folder: Path) -> type:
        from .registry import get_model_class

        target = get_model_class(architecture)
        if cls is not DiffusionPerceptionModel and not issubclass(target, cls):
            raise ValueError(
                f"{folder} holds a {architecture}, not a {cls.__name__}; load it with "
                f"{architecture}.from_pretrained or AutoDiffusionPerception.from_pretrained."
            )
        return target

    @classmethod
    def _from_pretrained(cls: type[M], *, model_id: str, revision: str | None,
                         cache_dir: str | os.PathLike | None, force_download: bool,
                         local_files_only: bool, token: str | bool | None,
                         config: dict[str, Any] | None = None, **_: Any) -> M:
        """Builds the model from the resolved folder ``model_id`` and loads its weights strictly."""
        folder = Path(model_id)
        task_config = TaskConfig.from_dict(config if config is not None else read_config(folder))
        backbone = folder / BACKBONE_DIR
        bundled = (backbone / "unet" / "config.json").is_file()
        if bundled:
            source = ModelSource(folder=backbone, repo_id=task_config.backbone.repo_id,
                                 revision=task_config.backbone.revision)
            model = cls(task_config, source=source, load_weights=False)
        else:
            source = resolve_source(task_config.backbone.repo_id,
                                    revision=task_config.backbone.revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, token=token)
            model = cls(task_config, source=source, load_weights=True)
        model.load_saved_weights(saved_weight_files(folder), include_trunk=bundled)
        return model.eval()

    def load_saved_weights(self, files: Sequence[Path], *, include_trunk: bool = True) -> None:
        """Loads safetensors files strictly (keys and shapes), casting to the model's dtypes.

        Args:
            files: The weight files (one, or every shard).
            include_trunk: The files hold the trunk too; False expects only the keys outside
                ``trunk_prefixes`` (the trunk came from the base repo).

        Raises:
            RuntimeError: Missing, unexpected or mis-shaped tensors (listed by key), or a
                truncated file.
        """
        expected = self.state_dict(keep_vars=True)
        if not include_trunk:
            expected = {k: v for k, v in expected.items() if not k.startswith(self.trunk_prefixes)}
        loaded = read_tensors(list(files), None)
        where = files[0].name if len(files) == 1 else f"the {len(files)} shards of {files[0].parent}"
        check_state_dict(expected, loaded, where)
        loaded = {k: v.to(expected[k].dtype) for k, v in loaded.items()}
        self.load_state_dict(loaded, strict=include_trunk, assign=True)
        empty = [n for n, t in chain(self.named_parameters(), self.named_buffers()) if t.is_meta]
        if empty:
            raise RuntimeError(f"After loading, tensors {format_keys(empty)} still have no values; the "
                               "saved model is incomplete.")
