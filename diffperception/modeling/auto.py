"""``AutoDiffusionPerception``: one way in, from a saved model, a preset or a config.

``from_pretrained`` / ``from_preset`` / ``from_config`` read ``config["architecture"]``, look it
up in the in-package registry (``register_model``) and build that class. A repository only ever
supplies data (JSON configs, safetensors weights, tokenizer files): no code from it is imported or
executed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from ..config import TaskConfig
from ..hub import HubKwargs
from .base import DiffusionPerceptionModel
from .registry import get_model_class

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AutoDiffusionPerception"]


class AutoDiffusionPerception:
    """Builds the task model class a config names.

    Example:
        >>> model = AutoDiffusionPerception.from_pretrained("org/dift-sd21-features")
        >>> model = AutoDiffusionPerception.from_preset("dift-sd21")
        >>> model.save_pretrained("out/")
    """

    def __init__(self) -> None:
        raise TypeError(
            "AutoDiffusionPerception is not instantiated: use AutoDiffusionPerception."
            "from_pretrained(...), .from_preset(...) or .from_config(...)."
        )

    @staticmethod
    def from_pretrained(
        pretrained_model_name_or_path: str | os.PathLike,
        **hub_kwargs: Unpack[HubKwargs],
    ) -> DiffusionPerceptionModel:
        """Loads a saved task model (folder or Hub repo id) as the class its config names.

        Args:
            pretrained_model_name_or_path: Folder written by ``save_pretrained`` or Hub repo id.
            **hub_kwargs: ``revision`` (branch, tag or commit sha), ``cache_dir``,
                ``local_files_only`` (also implied by ``HF_HUB_OFFLINE=1``), ``token``,
                ``force_download`` (``diffperception.hub.HubKwargs``).

        Raises:
            FileNotFoundError: Missing folder / repo / revision / weights, or offline without a
                cached copy (the message names repo and revision and how to get them).
            ValueError: Invalid config, a config from a newer format, an unknown architecture.
            TypeError: A keyword that is not a Hub keyword.
            RuntimeError: Missing, unexpected or mis-shaped tensors, or a truncated file.

        Example:
            >>> model = AutoDiffusionPerception.from_pretrained("org/name", revision="v1.0")
        """
        return DiffusionPerceptionModel.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)

    @staticmethod
    def from_config(
        config: TaskConfig | dict[str, Any],
        *,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> DiffusionPerceptionModel:
        """Builds the task model a config describes, reading the trunk from its base model.

        Args:
            config: A ``TaskConfig`` or its dict (``config.json`` contents).
            cache_dir, local_files_only, token: Used to fetch the base model.

        Raises:
            ValueError: Invalid config or unknown architecture.
            FileNotFoundError: The base model cannot be found.
        """
        if isinstance(config, dict):
            config = TaskConfig.from_dict(config)
        elif not isinstance(config, TaskConfig):
            raise TypeError(f"config must be a TaskConfig or a dict, got {type(config).__name__}.")
        cls = get_model_class(config.architecture)
        return cls(config, cache_dir=cache_dir, local_files_only=local_files_only, token=token)

    @staticmethod
    def from_preset(
        name: str,
        *,
        repo_id: str | os.PathLike | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        variant: str | None = None,
        taps: Sequence[str] | None = None,
        timesteps: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
        labels: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> DiffusionPerceptionModel:
        """Builds a preset (``list_presets()``), optionally on another base model or settings.

        Args:
            name: Preset name; an unknown name is a ``ValueError`` suggesting close ones.
            repo_id, revision, dtype, variant, taps, timesteps, size, labels: Overrides (see
                ``diffperception.modeling.presets.preset_config``); classification presets on
                ADM-256 leave ``labels`` to the user.
            cache_dir, local_files_only, token: Used to fetch the base model.

        Example:
            >>> model = AutoDiffusionPerception.from_preset("dift-sd21")
            >>> feats = model(images)["up_ft.1"]   # (B, 1280, 48, 48) at 768 px
        """
        from .presets import preset_config

        config = preset_config(name, repo_id=repo_id, revision=revision, dtype=dtype,
                               variant=variant, taps=taps, timesteps=timesteps, size=size,
                               labels=labels)
        return AutoDiffusionPerception.from_config(config, cache_dir=cache_dir,
                                                   local_files_only=local_files_only, token=token)
