"""The head contract: a base class, the output dataclass and the registry.

A head is an ``nn.Module`` built as ``Head(feature_info, **kwargs)`` where ``feature_info`` is
the backbone's ``{tap: FeatureInfo}`` (channels, stride, layout, known before any weight is read)
and ``kwargs`` are the head config's arguments (plus arguments the task model supplies, such as
``num_labels``). Its forward takes the backbone's ``{tap: tensor}`` and returns a ``HeadOutput``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..config import HeadConfig
from ..features.taps import FeatureInfo
from ..registry import Registry

__all__ = ["Head", "HeadOutput", "register_head", "get_head_class", "list_heads", "build_head"]

HEADS: Registry[type["Head"]] = Registry("head", "config['head']['type']")


@dataclass
class HeadOutput(ModelOutput):
    """What a head returns (fields a head does not produce are None).

    Attributes:
        loss: Scalar training loss, when labels were given.
        logits: ``(B, num_labels)`` class scores (classification heads).
        embeddings: ``(B, D)`` embeddings (retrieval and matching heads).
        features: ``{tap: tensor}`` passed through (the identity head).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None


class Head(nn.Module):
    """Base of the task heads.

    Attributes:
        name: The registered name (``config["head"]["type"]``).
        task_arguments: ``__init__`` arguments the task model supplies (not in the head config).
        output_key: The ``HeadOutput`` field an exported graph returns (``logits``, ...).
    """

    name: ClassVar[str] = ""
    task_arguments: ClassVar[tuple[str, ...]] = ()
    output_key: ClassVar[str] = "logits"

    def __init__(self, feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        if not feature_info:
            raise ValueError(f"The {self.name!r} head needs at least one tap.")

    @staticmethod
    def select_taps(feature_info: Mapping[str, FeatureInfo], taps: list[str] | None,
                    layouts: tuple[str, ...], head: str) -> list[FeatureInfo]:
        """The ``FeatureInfo`` of ``taps`` (default: all), checked against ``layouts``.

        Raises:
            ValueError: A tap the backbone does not have, or one of another layout.
        """
        names = list(feature_info) if taps is None else list(taps)
        unknown = [n for n in names if n not in feature_info]
        if unknown:
            raise ValueError(f"config['head']['taps'] = {taps!r} is invalid: {unknown} are not "
                             f"taps of the backbone {list(feature_info)}.")
        infos = [feature_info[n] for n in names]
        bad = [f"{i.name} ({i.layout})" for i in infos if i.layout not in layouts]
        if bad:
            raise ValueError(f"The {head!r} head takes {list(layouts)} taps; {bad} are not. Pick "
                             "other taps with config['head']['taps'].")
        return infos


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator registering a head under ``name``.

    Raises:
        ValueError: Another class is already registered under ``name``.
    """
    return HEADS.register(name)


def list_heads(filter: str = "") -> list[str]:  # noqa: A002 - timm's name
    """Names of the registered heads, sorted; ``filter`` is an fnmatch pattern."""
    return HEADS.names(filter)


def get_head_class(name: str) -> type[Head]:
    """The head class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (with the closest names).
    """
    return HEADS.get(name)


def _check_arguments(cls: type[Head], kwargs: Mapping[str, Any], supplied: Mapping[str, Any]
                     ) -> None:
    params = dict(inspect.signature(cls.__init__).parameters)
    for reserved in ("self", "feature_info", *cls.task_arguments):
        params.pop(reserved, None)
    for key, value in kwargs.items():
        if key not in params:
            raise ValueError(f"config['head'][{key!r}] = {value!r} is invalid: the {cls.name!r} "
                             f"head takes {sorted(params)}.")
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"config['head'] is missing {missing}, required by the {cls.name!r} head.")
    needed = [k for k in cls.task_arguments if k not in supplied]
    if needed:
        raise ValueError(f"The {cls.name!r} head needs {needed} from the task model.")


def build_head(config: HeadConfig | Mapping[str, Any], feature_info: Mapping[str, FeatureInfo],
               **task_kwargs: Any) -> Head:
    """Builds the head a config names, sized from ``feature_info``.

    Args:
        config: ``HeadConfig`` or its dict ``{"type": name, **arguments}``.
        feature_info: The backbone's ``{tap: FeatureInfo}``.
        **task_kwargs: Arguments the task model supplies (``num_labels``); only those the head
            declares in ``task_arguments`` are passed.

    Raises:
        ValueError: Unknown head, an argument the head does not take (naming key, value and
            the allowed ones), a missing argument, or a value the head rejects.
    """
    config = HeadConfig.from_dict(dict(config) if isinstance(config, Mapping) else config)
    cls = get_head_class(config.type)
    _check_arguments(cls, config.kwargs, task_kwargs)
    supplied = {k: v for k, v in task_kwargs.items() if k in cls.task_arguments}
    return cls(feature_info, **supplied, **config.kwargs)
