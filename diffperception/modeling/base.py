"""The task model base: a ``PyTorchModelHubMixin`` model that saves and loads strictly.

The files of a saved model (``config.json``, ``model.safetensors``, ``backbone/``, ``README.md``)
and the helpers that find, read and push them live in ``diffperception.modeling.hub_io``. State-dict keys read ``backbone.<component>.*``,
``backbone.vae.*``, ``backbone.prompt.*`` and ``head.*``.

A save is all-or-nothing: it is written into a temporary folder next to the target and then
moved into place (``hub_io.commit_saved_files``); only files a save writes are replaced, a
user's ``README.md`` and other files are kept. What is published (a push, an export's metadata,
the model card) names a base model built from a local folder by the folder's name only
(``"local:<name>"``), never by its path; a local save's ``config.json`` keeps the path as given.

``save_pretrained(..., bundle_trunk=False)`` leaves the trunk and ``backbone/`` out:
``model.safetensors`` then holds only what is not in the base model (head, learned prompt, text
context) and loading reads the trunk from the base repo at the pinned revision.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..backbones.loading import ModelSource, check_diffusers_folder, read_tensors, resolve_source
from ..config import CONFIG_FORMAT_VERSION, HeadConfig, TaskConfig
from ..hub import is_hub_repo_id, public_base_name, source_kind
from .hub_io import (
    BACKBONE_DIR,
    CARD_NAME,
    CONFIG_NAME,
    backbone_config_files,
    check_shard_size,
    check_state_dict,
    check_unbundled_base,
    commit_saved_files,
    create_model_repo,
    format_keys,
    read_task_config,
    resolve_model_folder,
    saved_weight_files,
    upload_model_folder,
)
from .registry import registered_name

__all__ = [
    "DiffusionPerceptionModel",
    "SpecializedTaskModel",
    "migrate_format1_key",
]

MAX_SHARD_SIZE = "5GB"
# config_format 1 wrote the backbone's tensors at the top level; format 2 nests them.
_FORMAT1_PREFIXES = (("unet.", "backbone.unet."), ("vae.", "backbone.vae."),
                     ("text_encoder.", "backbone.prompt.text_encoder."),
                     ("text_encoder_2.", "backbone.prompt.text_encoder_2."))
_FORMAT1_NAMES = {"text_context": "backbone.prompt.context", "text_pooled": "backbone.prompt.pooled",
                  "prompt_embedding": "backbone.prompt.embedding"}
M = TypeVar("M", bound="DiffusionPerceptionModel")


# ----------------------------------------------------------------------------------- the base

class DiffusionPerceptionModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="diffperception",
    tags=["diffperception", "diffusion-features"],
):
    """Base of the task models: ``self.backbone`` + ``self.head`` + ``TaskConfig``, on the Hub.

    A task model composes a ``DiffusionBackbone`` (built from ``config.backbone``,
    ``config.features`` and ``config.preprocess``) with a head built from the backbone's
    ``feature_info`` and ``config.head`` (transformers' UperNet pattern). Subclasses register
    with ``@register_model``, set ``default_head`` and may supply head arguments
    (``head_arguments``). The pipeline tag of the model card is a class keyword
    (``class X(DiffusionPerceptionModel, pipeline_tag="image-classification")``).

    The Hub methods are overridden, not inherited from ``PyTorchModelHubMixin``, because a task
    model needs what the mixin does not do: sharded weights, ``bundle_trunk=False``, strict loading,
    the ``backbone/`` configs, and key migration of older folders; the mixin still provides the
    card metadata keywords.

    Args:
        config: A ``TaskConfig`` (or its dict) with ``architecture`` set to the class's name.
        source: The resolved diffusers folder; resolved from ``config.backbone`` when None.
        load_weights: Load the backbone's weights from ``source`` (False builds on the meta
            device; a saved task model then loads its own weights).
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token`` used to resolve ``source``.

    Raises:
        ValueError: An invalid config (naming key, value and what is allowed).
        FileNotFoundError: The base model cannot be found.
    """

    config: TaskConfig
    #: Head used when ``config.head`` is None.
    default_head: ClassVar[dict[str, Any] | None] = None

    def __init__(self, config: TaskConfig | dict[str, Any], *, source: ModelSource | None = None,
                 load_weights: bool = True, **hub_kwargs: Any) -> None:
        super().__init__()
        from ..features.backbone import DiffusionBackbone
        from ..heads import build_head

        if isinstance(config, dict):
            config = TaskConfig.from_dict(config)
        config.validate()
        if config.head is None and self.default_head is not None:
            config.head = HeadConfig.from_dict(self.default_head)
        if config.head is None:
            raise ValueError(f"config['head'] is missing: {type(self).__name__} needs a head "
                             "(see diffperception.list_heads()).")
        self.config = config
        self.check_config(config)
        self.backbone = DiffusionBackbone(config.backbone, config.features, config.preprocess,
                                          source=source, load_weights=load_weights, **hub_kwargs)
        self.head = build_head(config.head, self.backbone.feature_info, **self.head_arguments())
        if load_weights and hasattr(self.head, "prepare_weights"):
            # weights from outside the model (an image expert's, label text features); a saved
            # model holds them and loads them over these
            self.head.prepare_weights(self.source.folder, list(config.labels or []))
        self.head.eval()

    def check_config(self, config: TaskConfig) -> None:
        """Task-specific config checks (raise ValueError); the base checks nothing more."""

    @staticmethod
    def require_labels(config: TaskConfig, missing: str, what: str = "class names") -> None:
        """Checks that ``config.labels`` is a non-empty list of unique names.

        Args:
            config: The config being checked.
            missing: The message when there are no labels (what the task needs them for).
            what: What the labels are, for the duplicates message.

        Raises:
            ValueError: No labels (``missing``) or duplicate labels (naming them).
        """
        labels = config.labels
        if not labels:
            raise ValueError(missing)
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"config['labels'] has duplicates {duplicates}; {what} must be "
                             "unique.")

    @property
    def id2label(self) -> dict[int, str]:
        """Label index -> name (class names, or a matching model's candidate texts)."""
        return dict(enumerate(self.config.labels or []))

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> index."""
        return {name: i for i, name in enumerate(self.config.labels or [])}

    def head_arguments(self) -> dict[str, Any]:
        """Arguments the task model supplies to its head (e.g. ``num_labels``)."""
        return {}

    def head_inputs(self, images: Any, value_range: tuple[float, float] | None = None
                    ) -> dict[str, Any]:
        """Extra head inputs: ``{"images": (B, 3, H, W) in [0, 1] at the model's size}`` for a
        head that reads the images (``head.takes_images``, e.g. an image expert), else ``{}``."""
        if not getattr(self.head, "takes_images", False):
            return {}
        x = self.backbone.prepare_images(images, value_range).float()  # (B, 3, H, W)
        low, high = self.backbone.preprocess.range
        return {"images": (x - low) / (high - low)}

    def set_labels(self, labels: Sequence[str]) -> None:
        """Makes ``labels`` the classes without retraining (open-vocabulary heads, whose
        classifier is text features: they are re-encoded).

        Raises:
            TypeError: A head whose classifier is trained per class.
            ValueError: Labels the task model refuses (empty, duplicates).
        """
        if not hasattr(self.head, "set_labels"):
            raise TypeError(f"The {self.config.head.type!r} head has a trained classifier; "
                            "changing the labels needs retraining.")
        labels = [str(x) for x in labels]
        config = copy.deepcopy(self.config)
        config.labels = labels
        self.check_config(config)
        self.head.set_labels(labels, self.source.folder)
        self.config.labels = labels

    @property
    def source(self) -> ModelSource:
        """The resolved base diffusers model (folder, repo id, revision)."""
        return self.backbone.source

    @property
    def trunk_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of what comes from the base model (left out by ``bundle_trunk=False``)."""
        return tuple(f"backbone.{p}" for p in self.backbone.base_prefixes)

    @classmethod
    def from_diffusers(cls: type[M], repo_id: str | os.PathLike, *, taps: Sequence[str],
                       head: dict[str, Any] | None = None, labels: Sequence[str] | None = None,
                       **options: Any) -> M:
        """Builds the task model on a diffusers model (Hub repo id or local folder).

        Args:
            repo_id: Hub repo id or local folder in diffusers layout.
            taps: Tap names (see ``diffperception.list_taps``).
            head: Head config ``{"type": name, **arguments}`` (default: the task's).
            labels: Class names (classification).
            **options: ``timesteps``, ``noise``, ``seed``, ``ensemble``, ``sampling``, ``prompt``, ``size``,
                ``dtype``, ``revision``, ``variant``, ``cache_dir``, ``local_files_only``,
                ``token``, ``inversion_steps`` as for ``DiffusionBackbone.from_diffusers``.

        Raises:
            ValueError: Unknown tap, head or option; a head argument the head does not take.
            FileNotFoundError: Missing repo, revision, folder or weights.
        """
        from ..features.backbone import DiffusionBackbone

        (backbone, features, preprocess), source = DiffusionBackbone.config_sections(
            repo_id, taps=taps, **options)
        config = TaskConfig(
            architecture=registered_name(cls), backbone=backbone, features=features,
            preprocess=preprocess, head=HeadConfig.from_dict(head) if head is not None else None,
            labels=list(labels) if labels is not None else None)
        return cls(config, source=source)

    def specialize(self, size: tuple[int, int] | None = None, *, latent_input: bool = False
                   ) -> nn.Module:
        """Freezes timestep, prompt and noise into constants: a module of images only.

        Args:
            size: ``(H, W)`` of the images the specialised module takes, in pixels (default:
                ``config.preprocess.size``, else the network's native size).
            latent_input: Take latents instead of images (leaves the VAE encoder out).

        Returns:
            A module whose forward takes ``(B, 3, H, W)`` images in [0, 1] already at ``size``
            (or latents) and returns ``{output name: tensor}``: the taps for the identity head,
            else ``{head.output_key: ...}`` (``"logits"`` for classifiers).

        Raises:
            ValueError: Noise or prompt kinds that are not constants, or a bad size.
        """
        special = self.backbone.specialize(size, latent_input=latent_input,
                                           source_config=self.saved_config(publish=True))
        if self.head.output_key == "features":
            return special
        return SpecializedTaskModel(special, copy.deepcopy(self.head),
                                    self.specialized_postprocess(special.size)).eval()

    def specialized_postprocess(self, size: tuple[int, int]) -> nn.Module | None:
        """What a specialised model applies to the head's output (None: nothing), e.g. the
        upsampling of dense logits to the ``(H, W)`` image ``size``; the eager forward does the
        same."""
        return None

    # ------------------------------------------------------------------------------- config

    def saved_config(self, *, publish: bool = False) -> dict[str, Any]:
        """The ``config.json`` dict: the config with the resolved base revision and versions.

        Args:
            publish: Name a base model that is a local folder ``"local:<folder name>"``
                (``diffperception.hub.public_base_name``), as a push and an export do, so no local
                path is published; a local save keeps the path as given.
        """
        from .. import __version__

        data = self.config.to_dict()
        if self.source.revision is not None:
            data["backbone"]["revision"] = self.source.revision
        if publish:
            data["backbone"]["repo_id"] = public_base_name(data["backbone"]["repo_id"])
        data["architecture"] = registered_name(type(self))
        data["diffperception_version"] = __version__
        data["config_format"] = CONFIG_FORMAT_VERSION
        return data

    def _keeps_text_encoders(self) -> bool:
        return self.backbone.prompt.keeps_text_encoders

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

        All or nothing: written into a temporary folder next to ``save_directory``, then moved
        into place, so a failure leaves an earlier save untouched. Only files a save writes are
        replaced or removed; other files, and a ``README.md`` that is not a generated card, stay.

        Args:
            save_directory: Folder to write (created if needed).
            bundle_trunk: Save the trunk's weights and configs (the folder works without the
                base repo); False saves only the head and reloads the trunk from the base repo
                at the pinned revision.
            max_shard_size: Shard the weights above this size (an int of bytes, or "5GB").
            metrics: Evaluation results for the card's ``model-index``: ``EvalResult``s or dicts
                of its fields (``task_type``, ``dataset_type``, ``dataset_name``,
                ``metric_type``, ``metric_value``, ...).
            license: License of the card; default: the base model's, when known.
            model_id: The name the card's usage snippet loads (default: ``save_directory``; a
                push names the repository instead).
            push_to_hub: Also push (``repo_id``, default the folder name) with
                ``push_to_hub_kwargs``.

        Returns:
            The commit URL when pushed, else None.

        Raises:
            ValueError: An invalid ``max_shard_size``; ``bundle_trunk=False`` with a base whose
                folder is not recorded; a linked folder in ``save_directory`` leading outside.
            RuntimeError: Tensors without values (meta device).
            OSError: Writing failed (e.g. a full disk); the earlier save is untouched.

        Example:
            >>> model.save_pretrained("out/")            # config.json, model.safetensors, README.md
            >>> AutoDiffusionPerception.from_pretrained("out/")
        """
        save_directory = Path(save_directory)
        save_directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{save_directory.name}.saving-",
                                        dir=save_directory.parent))
        try:
            self._write_staged(staging, save_directory, bundle_trunk=bundle_trunk,
                               max_shard_size=max_shard_size, metrics=metrics, license=license,
                               model_id=model_id)
            commit_saved_files(staging, save_directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            return self.push_to_hub(repo_id or save_directory.name, bundle_trunk=bundle_trunk,
                                    max_shard_size=max_shard_size, metrics=metrics,
                                    license=license, **push_to_hub_kwargs)
        return None

    def _write_staged(self, staging: Path, save_directory: Path, *, bundle_trunk: bool,
                      max_shard_size: int | str, metrics: Sequence[Any] | None,
                      license: str | None, model_id: str | None) -> None:  # noqa: A002
        """Writes the whole save into ``staging``; a failed write names the target's fate."""
        from safetensors import SafetensorError

        try:
            self._save_pretrained(staging, bundle_trunk=bundle_trunk,
                                  max_shard_size=max_shard_size)
            card = self.generate_model_card(model_id=model_id or str(save_directory),
                                            metrics=metrics, license=license,
                                            bundle_trunk=bundle_trunk)
            card.save(staging / CARD_NAME)
        except (OSError, SafetensorError) as err:
            raise OSError(f"Saving {save_directory} failed while writing ({err}); nothing in it "
                          "was changed, an earlier save in it is intact. Free disk space (or "
                          "fix the error) and save again.") from err

    def _save_pretrained(self, save_directory: Path, *, bundle_trunk: bool = True,
                         max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
        """Writes the config, the weights (sharded above ``max_shard_size``) and ``backbone/``.

        ``save_directory`` is written as is (``save_pretrained`` passes an empty temporary
        folder).
        """
        from huggingface_hub import save_torch_state_dict

        check_shard_size(max_shard_size)
        config = self.saved_config()
        if not bundle_trunk:
            self._check_unbundled_base()
        # Read before writing: the model may have been loaded from the target folder.
        configs = backbone_config_files(self.source.folder, self._keeps_text_encoders(),
                                        self.backbone.family.component) \
            if bundle_trunk else {}
        state = self.state_dict()
        if not bundle_trunk:
            state = {k: v for k, v in state.items() if not k.startswith(self.trunk_prefixes)}
        meta = [k for k, v in state.items() if v.is_meta]
        if meta:
            raise RuntimeError(f"Tensors {format_keys(meta)} have no values (meta device): load the "
                               "weights before saving.")
        save_torch_state_dict(
            {k: v.detach() for k, v in state.items()}, save_directory,
            filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size,
            metadata={"diffperception_contents": "trunk+head" if bundle_trunk else "head"},
        )
        backbone = save_directory / BACKBONE_DIR
        for name, data in configs.items():
            (backbone / name).parent.mkdir(parents=True, exist_ok=True)
            (backbone / name).write_bytes(data)
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    def _check_unbundled_base(self) -> None:
        """An unbundled save needs a base to reload the trunk from (not a ``local:`` name)."""
        repo_id = self.config.backbone.repo_id
        if repo_id.startswith("local:"):
            raise ValueError(
                f"bundle_trunk=False needs the base model to reload the trunk from, but this "
                f"model's base {repo_id!r} was a local folder whose path is not recorded; save "
                "with bundle_trunk=True.")

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

        Only files a save writes are uploaded; of the repository's files, only those an earlier
        push wrote that this one lacks (old shards, ``backbone/`` files) are deleted, and a
        ``README.md`` that is not a generated card is kept (``hub_io.upload_model_folder``). A
        base model that is a local folder is published as ``"local:<folder name>"``.

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
        config, task_config = read_task_config(folder)
        target = cls._class_for(task_config.architecture, folder)
        from_hub = source_kind(pretrained_model_name_or_path) == "repo"
        return target._from_pretrained(model_id=str(folder), revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, token=token,
                                       local_files_only=local_files_only, config=config,
                                       from_hub=from_hub)

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
                         config: dict[str, Any] | None = None, from_hub: bool = False,
                         **_: Any) -> M:
        """Builds the model from the resolved folder ``model_id`` and loads its weights strictly.

        A bundled ``backbone/`` is checked like any diffusers folder, inside ``model_id``. An
        unbundled model downloaded from the Hub (``from_hub``) must name a Hub repo as its base:
        a local path or alias read from a downloaded file is refused.
        """
        folder = Path(model_id)
        task_config = (TaskConfig.from_dict(config) if config is not None
                       else read_task_config(folder)[1])
        backbone = folder / BACKBONE_DIR
        from ..backbones import get_family

        component = get_family(task_config.backbone.family).component
        bundled = (backbone / component / "config.json").is_file()
        if bundled:
            check_diffusers_folder(backbone, root=folder)
            source = ModelSource(folder=backbone, repo_id=task_config.backbone.repo_id,
                                 revision=task_config.backbone.revision)
            model = cls(task_config, source=source, load_weights=False)
        else:
            check_unbundled_base(task_config.backbone.repo_id, folder)
            source = resolve_source(task_config.backbone.repo_id,
                                    revision=task_config.backbone.revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, token=token,
                                    hub_only=from_hub)
            model = cls(task_config, source=source, load_weights=True)
        model.load_saved_weights(saved_weight_files(folder), include_trunk=bundled,
                                 config_format=task_config.config_format)
        return model.eval()

    def load_saved_weights(self, files: Sequence[Path], *, include_trunk: bool = True,
                           config_format: int = CONFIG_FORMAT_VERSION) -> None:
        """Loads safetensors files strictly (keys and shapes), casting to the model's dtypes.

        Args:
            files: The weight files (one, or every shard).
            include_trunk: The files hold the trunk too; False expects only the keys outside
                ``trunk_prefixes`` (the trunk came from the base repo).
            config_format: The ``config_format`` the files were saved with; format-1 keys
                (no ``backbone.`` prefix) are migrated.

        Raises:
            RuntimeError: Missing, unexpected or mis-shaped tensors (listed by key), or a
                truncated file.
        """
        expected = self.state_dict(keep_vars=True)
        if not include_trunk:
            expected = {k: v for k, v in expected.items() if not k.startswith(self.trunk_prefixes)}
        loaded = read_tensors(list(files), None)
        if config_format < 2:
            loaded = {migrate_format1_key(k): v for k, v in loaded.items()}
        where = files[0].name if len(files) == 1 else f"the {len(files)} shards of {files[0].parent}"
        check_state_dict(expected, loaded, where)
        loaded = {k: v.to(expected[k].dtype) for k, v in loaded.items()}
        self.load_state_dict(loaded, strict=include_trunk, assign=True)
        self.backbone.apply_memory_format()  # assign=True replaced the tensors with contiguous ones
        empty = [n for n, t in chain(self.named_parameters(), self.named_buffers()) if t.is_meta]
        if empty:
            raise RuntimeError(f"After loading, tensors {format_keys(empty)} still have no values; the "
                               "saved model is incomplete.")


def migrate_format1_key(key: str) -> str:
    """The format-2 state-dict key of a format-1 key (``unet.x`` -> ``backbone.unet.x``)."""
    if key in _FORMAT1_NAMES:
        return _FORMAT1_NAMES[key]
    for old, new in _FORMAT1_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class SpecializedTaskModel(nn.Module):
    """A specialised backbone followed by the task head: images in, ``{output_key: tensor}`` out.

    Built by ``DiffusionPerceptionModel.specialize`` for heads other than the identity; it keeps
    the attributes the exporters read (``size``, ``latent_input``, ``source_config``, ``noise``).

    Args:
        backbone: The ``SpecializedBackbone``.
        head: The task head.
        postprocess: A module applied to the head's output tensor (the task model's
            ``specialized_postprocess``), or None.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module,
                 postprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.postprocess = postprocess if postprocess is not None else nn.Identity()
        self.output_key = head.output_key
        self.size, self.latent_input = backbone.size, backbone.latent_input
        self.source_config = backbone.source_config

    @property
    def noise(self) -> torch.Tensor:
        """The backbone's fixed noise ``(T, E, 1, C, h, w)`` (the latent input's shape)."""
        return self.backbone.noise

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{output_key: (B, ...)}``, e.g. ``{"logits": (B, num_labels)}``.

        A head with feedback (``two_pass``, DifFeed) gets the backbone's two passes, both in the
        one graph an exporter traces.
        """
        if getattr(self.head, "two_pass", False):
            feats = self.backbone.forward_two_pass(images, self.head.feedback,
                                                   first_taps=self.head.first_taps,
                                                   taps=self.head.taps)
        else:
            feats = self.backbone(images)
        extra = {"images": images} if getattr(self.head, "takes_images", False) else {}
        out = getattr(self.head(feats, **extra), self.output_key)
        return {self.output_key: self.postprocess(out)}
