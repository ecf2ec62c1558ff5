"""The options every exporter takes, spelled once: :class:`ExportOptions` and its signature helper.

Torch-free, so the ``"HxW"`` parser (:func:`parse_size`) serves every command of the package.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["ExportOptions", "normalize_batch", "parse_batch_range", "parse_size", "with_export_options"]

F = TypeVar("F", bound=Callable[..., Any])


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"``: ``"512x384"`` -> ``(512, 384)`` (height x width); ``"512"`` -> ``(512, 512)``.

    Args:
        text: ``"H"``, ``"HxW"`` or ``"H,W"``.

    Returns:
        ``(H, W)``, both positive.

    Raises:
        ValueError: Not one or two positive integers.

    Example:
        >>> parse_size("512x384")
        (512, 384)
    """
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"Expected a size HxW such as 512x512 (height x width), got {text!r}.")
    return values  # type: ignore[return-value]


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """Parse ``"MIN,OPT,MAX"``: ``"1,4,8"`` -> ``(1, 4, 8)``.

    Raises:
        ValueError: Not three integers with ``1 <= MIN <= OPT <= MAX``.
    """
    try:
        values = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ValueError(f"Expected a batch range MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}.")
    return values  # type: ignore[return-value]


def normalize_batch(batch: int = 1, batch_range: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The ``(min, opt, max)`` batch range: ``(batch, batch, batch)`` without a range.

    Raises:
        ValueError: A batch below 1, a range that is not three integers, or one where
            ``1 <= min <= opt <= max`` does not hold.
    """
    if batch_range is None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"The batch must be an integer >= 1, got {batch!r}.")
        return batch, batch, batch
    values = tuple(batch_range)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"The batch range must be three integers (min, opt, max), got {batch_range!r}.")
    low, opt, high = values
    if not 1 <= low <= opt <= high:
        raise ValueError(f"The batch range must satisfy 1 <= min <= opt <= max, got {values}.")
    return low, opt, high


def _size_option(name: str, value: Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    size = tuple(value)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ValueError(f"The option {name} must be (H, W) with positive integer sides, got {value!r}.")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class ExportOptions:
    """What every export takes, whatever the format (validated on construction).

    Attributes:
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        batch: Static batch size (used without ``batch_range``).
        batch_range: ``(min, opt, max)``; ``min < max`` makes the batch dimension dynamic
            (``"batch"``; TensorRT builds its optimisation profile from it).
        latent_input: Take latents instead of images (no VAE encoder in the graph).
        include_resize: ``(H, W)`` of the images the graph takes; resized (and cropped, as
            the model's ``preprocess`` says) to ``size`` inside the graph.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``, as the format allows
            (:func:`~diffperception.export.list_exporters`).
        check: Run the artifact next to eager PyTorch on seeded inputs (a failure raises).
        progress: Called with a line of text before slow steps.

    Raises:
        ValueError: Bad sizes or batch options, or ``include_resize`` with ``latent_input``.
    """

    size: tuple[int, int] | None = None
    batch: int = 1
    batch_range: tuple[int, int, int] | None = None
    latent_input: bool = False
    include_resize: tuple[int, int] | None = None
    precision: str = "fp32"
    check: bool = True
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        normalize_batch(self.batch, self.batch_range)
        object.__setattr__(self, "size", _size_option("size", self.size))
        object.__setattr__(self, "include_resize", _size_option("include_resize", self.include_resize))
        if self.batch_range is not None:
            object.__setattr__(self, "batch_range", tuple(self.batch_range))
        if self.include_resize is not None and self.latent_input:
            raise ValueError("An in-graph resize (include_resize) applies to image inputs; a latent-input graph takes latents.")

    @property
    def batches(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return normalize_batch(self.batch, self.batch_range)

    def say(self, message: str) -> None:
        """Report progress (a no-op without ``progress``)."""
        if self.progress is not None:
            self.progress(message)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


def _option_parameters(skip: set[str]) -> list[inspect.Parameter]:
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(ExportOptions) if f.name not in skip]


def with_export_options(*extra: inspect.Parameter, open_ended: bool = False) -> Callable[[F], F]:
    """Show the :class:`ExportOptions` fields (and ``extra``) in a function's signature.

    The decorated function takes them through ``**options``; its ``__signature__`` (what
    ``help()``, IDEs and ``inspect.signature`` show) lists them as keyword-only parameters,
    so the option block is written once, here, instead of in every exporter's signature.

    Args:
        *extra: Format-specific keyword-only parameters to show after the common ones.
        open_ended: Keep ``**options`` in the signature too (for functions that take the
            options of any format, such as :func:`~diffperception.export.export`).

    Returns:
        The decorator.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        rest = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own}
        added = _option_parameters(taken) + [p for p in extra if p.name not in taken]
        func.__signature__ = signature.replace(parameters=own + added + (rest if open_ended else []))  # type: ignore[attr-defined]
        return func

    return decorate
