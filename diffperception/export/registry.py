"""Exporters by registry, and the one export flow: prepare -> write -> result -> parity.

An exporter is a class registered by name with :func:`register_exporter`; one file per format
(``torchscript.py``, ``pt2.py``, ``onnx.py``, ``tensorrt.py``). It implements
``write(prepared, path, *, precision, progress, <its own options>) -> (files, metadata)`` and
``runner(path)`` (runs the artifact for the parity check); ``prepare`` and ``validate`` have
defaults. :func:`export` is the flow every format goes through; the format's own options are
the keyword-only parameters of its ``validate`` / ``prepare`` / ``write``.

Example:
    >>> from diffperception.export import export, list_exporters
    >>> list_exporters()
    ['onnx', 'pt2', 'tensorrt', 'torchscript']
    >>> result = export(model, "onnx", "build/model.onnx", size=(512, 512), opset=18)
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import nn

from ..deploy.contract import CONTRACT_KEY, PRECISION_DTYPES
from .graph import PreparedExport, Runner, prepare_export
from .options import ExportOptions, with_export_options
from .parity import ExportResult, attach_parity, make_result, output_path

__all__ = ["Exporter", "export", "get_exporter", "list_exporters", "load_metadata", "register_exporter"]

# The modules that register the built-in exporters (imported on first use of the registry).
BUILTIN_MODULES = (".torchscript", ".pt2", ".onnx", ".tensorrt")
_REGISTRY: dict[str, Exporter] = {}
_COMMON = {"self", "model", "prepared", "path", "options", "precision", "progress"}
E = TypeVar("E", bound=type)


class Exporter:
    """Base class of a registered exporter.

    Subclasses implement :meth:`write` and :meth:`runner`; :func:`register_exporter` sets
    ``name``, ``suffix`` and ``precisions``.
    """

    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def validate(self, options: ExportOptions) -> None:
        """Cheap checks of the options before the model is specialised (default: none).

        Raises:
            ValueError: An option this format cannot honour.
        """

    def prepare(self, model: nn.Module, path: Path, options: ExportOptions) -> PreparedExport:
        """Specialise the model and declare the contract (default: :func:`prepare_export`)."""
        return prepare_export(model, options)

    def write(self, prepared: PreparedExport, path: Path, *, precision: str,
              progress: Callable[[str], None]) -> tuple[list[Path], dict[str, str]]:
        """Write the artifact; returns the written files (artifact first) and its metadata entries."""
        raise NotImplementedError

    def runner(self, path: Path) -> Runner:
        """Runs the saved artifact on a float32 batch: output key -> array / tensor."""
        raise NotImplementedError

    def load_metadata(self, path: Path) -> dict[str, str]:
        """The ``diffperception.*`` metadata entries stored with an artifact."""
        raise NotImplementedError

    @classmethod
    def format_parameters(cls) -> list[inspect.Parameter]:
        """This format's own keyword options: those of ``validate``, ``prepare`` and ``write``."""
        found: dict[str, inspect.Parameter] = {}
        for hook in (cls.validate, cls.prepare, cls.write):
            for name, parameter in inspect.signature(hook).parameters.items():
                if name not in _COMMON and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                    found.setdefault(name, parameter)
        return list(found.values())


def register_exporter(name: str, *, suffix: str, precisions: tuple[str, ...] = ("fp32",)) -> Callable[[E], E]:
    """Register an :class:`Exporter` subclass under ``name``.

    Args:
        name: The format name (``diffperception export --format NAME``).
        suffix: The artifact's file suffix, e.g. ``".onnx"``.
        precisions: The precisions it writes; the first is the format's reference precision.

    Returns:
        The class decorator.

    Raises:
        ValueError: ``name`` is taken, or a precision is unknown.

    Example:
        >>> @register_exporter("onnx", suffix=".onnx", precisions=("fp32", "fp16"))
        ... class OnnxExporter(Exporter): ...
    """
    unknown = [p for p in precisions if p not in PRECISION_DTYPES]
    if unknown or not precisions:
        raise ValueError(f"Unknown precisions {unknown or precisions} for exporter {name!r}; use "
                         f"{sorted(PRECISION_DTYPES)}.")

    def decorate(cls: E) -> E:
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"An exporter named {name!r} is already registered ({type(_REGISTRY[name]).__name__}).")
        cls.name, cls.suffix, cls.precisions = name, suffix, tuple(precisions)
        _REGISTRY[name] = cls()
        return cls

    return decorate


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module, __package__)


def list_exporters() -> list[str]:
    """The registered format names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_exporter(fmt: str) -> Exporter:
    """The exporter registered as ``fmt``.

    Raises:
        ValueError: No exporter has that name.
    """
    _load_builtins()
    if fmt not in _REGISTRY:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {sorted(_REGISTRY)}.")
    return _REGISTRY[fmt]


def _split_options(exporter: Exporter, options: Mapping[str, Any]) -> tuple[ExportOptions, dict[str, Any]]:
    """Common options and the format's own; unknown names and unsupported precisions raise."""
    own = {p.name for p in exporter.format_parameters()}
    unknown = sorted(set(options) - set(ExportOptions.names()) - own)
    if unknown:
        owners = {n: [f for f in list_exporters() if n in {p.name for p in get_exporter(f).format_parameters()}]
                  for n in unknown}
        where = "; ".join(f"{n} is an option of the {', '.join(o) or 'no'} exporters" for n, o in owners.items())
        raise ValueError(f"The {exporter.name} exporter takes no {', '.join(unknown)} ({where}). It takes "
                         f"{', '.join(ExportOptions.names() + tuple(sorted(own)))}.")
    common = ExportOptions(**{k: v for k, v in options.items() if k in ExportOptions.names()})
    if common.precision not in exporter.precisions:
        others = [f for f in list_exporters() if common.precision in get_exporter(f).precisions]
        raise ValueError(f"The {exporter.name} exporter writes precision {'/'.join(exporter.precisions)}, not "
                         f"{common.precision!r}; {common.precision} is a precision of the "
                         f"{' / '.join(others) or 'no'} exporters.")
    return common, {k: v for k, v in options.items() if k in own}


def _call(hook: Callable[..., Any], *args: Any, options: Mapping[str, Any], **kwargs: Any) -> Any:
    """Call an exporter hook with the format options its signature names."""
    names = inspect.signature(hook).parameters
    return hook(*args, **kwargs, **{k: v for k, v in options.items() if k in names})


@with_export_options(open_ended=True)
def export(model: nn.Module | str | Path, fmt: str, path: str | Path, **options: Any) -> ExportResult:
    """Export ``model`` in format ``fmt`` to ``path`` and check the artifact against eager PyTorch.

    Args:
        model: A task model (specialised here) or a specialised module; a TensorRT export
            also takes an exported ``.onnx`` file.
        fmt: A registered format (:func:`list_exporters`).
        path: The artifact file to write.
        **options: :class:`~diffperception.export.options.ExportOptions` fields and the
            format's own options (ONNX: ``opset``, ``external_data``; TensorRT: ``opset``,
            ``workspace_gib``, ``timing_cache``).

    Returns:
        The :class:`~diffperception.export.parity.ExportResult`.

    Raises:
        ValueError: Unknown format or option, a precision the format does not write, bad values.
        RuntimeError: A missing dependency, or the parity check failed.

    Example:
        >>> result = export(model, "onnx", "build/model.onnx", size=(512, 512), precision="fp16")
        >>> result.parity["up_ft.1"]["max_rel"]
    """
    exporter = get_exporter(fmt)
    common, own = _split_options(exporter, options)
    _call(exporter.validate, common, options=own)
    path = output_path(path, exporter.suffix)
    started = time.perf_counter()
    prepared = _call(exporter.prepare, model, path, common, options=own)
    files, metadata = _call(exporter.write, prepared, path, precision=common.precision, progress=common.say,
                            options=own)
    result = make_result(path, exporter.name, files=files, metadata=metadata, precision=common.precision,
                         started=started)
    if common.check:
        attach_parity(result, exporter.runner(path), prepared, progress=common.progress)
    return result


def load_metadata(path: str | Path) -> dict[str, str]:
    """The ``diffperception.*`` metadata entries of an artifact, found by its suffix.

    Raises:
        FileNotFoundError: No such file.
        ValueError: No exporter writes that suffix, or the file carries no diffperception contract.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Artifact not found: {path}.")
    by_suffix = {get_exporter(name).suffix: get_exporter(name) for name in list_exporters()}
    if path.suffix not in by_suffix:
        raise ValueError(f"No exporter writes {path.suffix!r} files ({path}); known: {sorted(by_suffix)}.")
    metadata = by_suffix[path.suffix].load_metadata(path)
    if CONTRACT_KEY not in metadata:
        raise ValueError(f"The file {path} has no {CONTRACT_KEY} entry: it was not exported by diffperception.")
    return metadata
