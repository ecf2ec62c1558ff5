"""The in-package registry of task models (what ``config["architecture"]`` may name).

Task models register with a decorator, as timm's models do; ``AutoDiffusionPerception`` looks the
architecture of a ``config.json`` up here and nowhere else, so loading a repository never imports
or executes code named by it.

Example:
    >>> @register_model
    ... class DiffusionPerceptionForImageClassification(DiffusionPerceptionModel): ...
    >>> list_models("*Classification")
    ['DiffusionPerceptionForImageClassification']
"""

from __future__ import annotations

from typing import Callable, TypeVar, overload

from ..registry import Registry

__all__ = ["register_model", "list_models", "get_model_class", "registered_name"]

T = TypeVar("T", bound=type)

MODELS: Registry[type] = Registry(
    "task model", "config['architecture']",
    hint=" A config written by a newer diffperception may name a model this version lacks: "
         "upgrade with `pip install -U diffperception`.")


@overload
def register_model(cls: T) -> T: ...


@overload
def register_model(cls: None = None, *, name: str | None = None) -> Callable[[T], T]: ...


def register_model(cls: T | None = None, *, name: str | None = None):
    """Class decorator registering a task model under its class name (or ``name``).

    Args:
        cls: The task model class (when used as ``@register_model``).
        name: Registered name when it differs from the class name (``@register_model(name=...)``).

    Raises:
        ValueError: Another class is already registered under that name.
    """

    def wrap(klass: T) -> T:
        return MODELS.register(name or klass.__name__, set_name=False)(klass)

    return wrap(cls) if cls is not None else wrap


def list_models(filter: str = "") -> list[str]:  # noqa: A002 - timm's name
    """Names of the registered task models, sorted; ``filter`` is an fnmatch pattern.

    Example:
        >>> list_models()
        ['DiffusionPerceptionForFeatureExtraction', ...]
    """
    return MODELS.names(filter)


def get_model_class(name: str) -> type:
    """The task model class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the closest names).
    """
    return MODELS.get(name)


def registered_name(cls: type) -> str:
    """The name ``cls`` is registered under (what ``config["architecture"]`` holds for it).

    Raises:
        ValueError: ``cls`` is not registered (a saved model of it could not be loaded again).
    """
    key = MODELS.name_of(cls)
    if key is None:
        raise ValueError(
            f"{cls.__module__}.{cls.__qualname__} is not a registered task model: decorate it "
            "with @register_model so that from_pretrained can find it again."
        )
    return key
