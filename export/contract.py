"""The model contract (the one schema shared by the exporter and this kit) and input preparation.

numpy + Pillow only. The diffperception exporter builds a :class:`Contract` and writes
:meth:`Contract.to_metadata` into the ONNX ``metadata_props`` (``build_engine`` copies the
entries into an engine's sidecar JSON); :func:`parse_contract` reads them back:

* ``diffperception.contract``: JSON ``{"inputs": [...], "outputs": [...], "batch": {...}}``;
  each output carries its ``key`` (a tap name, or ``logits`` / ``embeddings`` / ``scores``);
* ``diffperception.preprocess``: JSON ``{"size", "resize", "crop", "range", ...}``;
* ``diffperception.outputs``: JSON list of the output keys;
* ``diffperception.timesteps`` / ``labels`` / ``noise_seed`` / ``source_repo`` /
  ``source_revision`` / ``version`` / ``precision``: kept as strings in :attr:`Contract.metadata`.

Files written before outputs were named by key (``"tap"`` in the contract,
``diffperception.taps``) are still read. ``read_onnx_metadata`` (from :mod:`.onnx_metadata`)
reads the entries with a small protobuf scanner, so neither the ``onnx`` package nor an
inference session is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from .input_files import InputLimits, load_image, load_npy
from .onnx_metadata import read_onnx_metadata

METADATA_PREFIX = "diffperception."
CONTRACT_KEY = "diffperception.contract"
PREPROCESS_KEY = "diffperception.preprocess"
OUTPUTS_KEY = "diffperception.outputs"
LEGACY_OUTPUTS_KEY = "diffperception.taps"  # read, never written
BATCH_DIM = "batch"
IMAGES = "images"
LATENTS = "latents"
INPUT_NAMES = (IMAGES, LATENTS)
LAYOUT = "NCHW"
# The one dtype table: contract dtype name -> numpy type, and artifact precision -> I/O dtype name
# (bf16 TensorRT engines keep float32 inputs and outputs).
DTYPES = {"float32": np.float32, "float16": np.float16}
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "float32"}
RESIZE_MODES = ("bicubic", "bilinear", "nearest")
CROP_MODES = ("center", "none")
_RESAMPLE_NAMES = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}
# "export" when run from the repository / a copy of the folder, "diffperception.deploy" or
# "diffperception_deploy" when installed.
BUILD_COMMAND = f"python -m {__package__ or 'export'}.build_engine"

Dim = Union[int, str]
InputItem = Union[str, Path, np.ndarray]


def metadata_key(name: str) -> str:
    """The metadata entry of ``name``: ``"timesteps"`` -> ``"diffperception.timesteps"``."""
    return f"{METADATA_PREFIX}{name}"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as declared by the contract.

    Attributes:
        name: Tensor name in the ONNX graph / engine.
        shape: Dimensions; an int or ``"batch"`` (the dynamic batch dimension).
        dtype: ``"float32"`` or ``"float16"``.
        key: The output's name for callers: a tap name (``"up_blocks.1"``) or
            ``"logits"`` / ``"embeddings"`` / ``"scores"`` (the input's name for inputs).
        range: Value range the graph expects (image inputs only).
        layout: Memory layout; only ``"NCHW"`` is supported.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    key: str
    range: tuple[float, float] | None = None
    layout: str = LAYOUT

    @property
    def numpy_dtype(self) -> type:
        """The numpy scalar type of ``dtype``."""
        return DTYPES[self.dtype]

    def to_dict(self, *, is_input: bool) -> dict[str, Any]:
        """The contract JSON entry of this tensor (inputs carry range and layout, outputs their key)."""
        entry: dict[str, Any] = {"name": self.name}
        if not is_input:
            entry["key"] = self.key
        entry.update(shape=list(self.shape), dtype=self.dtype)
        if is_input:
            entry.update(range=None if self.range is None else list(self.range), layout=self.layout)
        return entry


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the model input (``diffperception.preprocess``).

    Attributes:
        size: ``(H, W)`` of the graph's image input.
        resize: Resampling filter, one of :data:`RESIZE_MODES`.
        crop: ``"center"`` or ``"none"``.
        range: Value range of the graph's image input.
        model_size: ``(H, W)`` the model itself runs at (differs from ``size`` when the
            graph resizes), for information.
        model_range: The range the graph scales its input to, for information.
        in_graph: The steps the graph does itself (``"resize"``, ``"scale"``).
    """

    size: tuple[int, int]
    resize: str
    crop: str
    range: tuple[float, float]
    model_size: tuple[int, int] | None = None
    model_range: tuple[float, float] | None = None
    in_graph: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``diffperception.preprocess`` JSON object."""
        entry: dict[str, Any] = {"size": list(self.size), "resize": self.resize, "crop": self.crop,
                                 "range": list(self.range)}
        if self.model_size is not None:
            entry["model_size"] = list(self.model_size)
        if self.model_range is not None:
            entry["model_range"] = list(self.model_range)
        entry["in_graph"] = list(self.in_graph)
        return entry


@dataclass(frozen=True)
class Contract:
    """A validated model contract.

    Attributes:
        input: The single graph input (``"images"`` or ``"latents"``).
        outputs: The graph outputs, each carrying its key.
        batch_min: Smallest batch the model accepts.
        batch_opt: Batch the model is tuned for.
        batch_max: Largest batch the model accepts.
        preprocess: Image preprocessing (``None`` for latent-input graphs without it).
        metadata: The other ``diffperception.*`` metadata entries (timesteps, labels, source
            repository, ...), as strings; the contract, preprocessing and output keys are
            this object's fields (:meth:`to_metadata` writes them all).
        source: The file the contract was read from (used in error messages).
    """

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    batch_min: int
    batch_opt: int
    batch_max: int
    preprocess: Preprocess | None
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def is_latent(self) -> bool:
        """Whether the graph takes latents (``.npy`` / arrays) instead of images."""
        return self.input.name == LATENTS

    @property
    def dynamic_batch(self) -> bool:
        """Whether the input's batch dimension is dynamic (``"batch"``)."""
        return self.input.shape[0] == BATCH_DIM

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one input sample."""
        return tuple(int(d) for d in self.input.shape[1:])  # type: ignore[return-value]

    @property
    def output_keys(self) -> list[str]:
        """The outputs' keys in graph order."""
        return [spec.key for spec in self.outputs]

    def with_batch_range(self, low: int, opt: int, high: int) -> Contract:
        """Return a copy that accepts batches in ``[low, high]`` (e.g. an engine profile)."""
        return dataclasses.replace(self, batch_min=low, batch_opt=opt, batch_max=high)

    def with_dtype(self, dtype: str) -> Contract:
        """Return a copy whose input and outputs are declared as ``dtype``.

        Raises:
            ValueError: ``dtype`` is not one of :data:`DTYPES`.
        """
        if dtype not in DTYPES:
            raise ValueError(f"Unsupported contract dtype {dtype!r}; use one of {sorted(DTYPES)}.")
        return dataclasses.replace(self, input=dataclasses.replace(self.input, dtype=dtype),
                                   outputs=tuple(dataclasses.replace(o, dtype=dtype) for o in self.outputs))

    def to_dict(self) -> dict[str, Any]:
        """The ``diffperception.contract`` JSON object."""
        return {"inputs": [self.input.to_dict(is_input=True)],
                "outputs": [spec.to_dict(is_input=False) for spec in self.outputs],
                "batch": {"min": self.batch_min, "opt": self.batch_opt, "max": self.batch_max}}

    def to_metadata(self) -> dict[str, str]:
        """The metadata entries :func:`parse_contract` reads back: ``metadata`` plus the schema's own.

        The contract, preprocessing and output keys are written from this object's fields and
        take precedence over same-named entries of ``metadata``.
        """
        entries = {k: v for k, v in self.metadata.items() if k != LEGACY_OUTPUTS_KEY}
        entries[CONTRACT_KEY] = json.dumps(self.to_dict())
        entries[OUTPUTS_KEY] = json.dumps(self.output_keys)
        if self.preprocess is not None:
            entries[PREPROCESS_KEY] = json.dumps(self.preprocess.to_dict())
        return entries


def _contract_error(source: str, message: str) -> ValueError:
    return ValueError(
        f"Invalid model contract in {source}: {message}. The file was not exported by diffperception, or by an "
        "incompatible version of it: re-export the model with this diffperception version."
    )


def _number_pair(value: Any, what: str, source: str) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        if value[0] < value[1]:
            return float(value[0]), float(value[1])
    raise _contract_error(source, f"{what} must be [low, high] with low < high, got {value!r}")


def _parse_tensor(entry: Any, source: str, *, is_input: bool) -> TensorSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _contract_error(source, f"tensor entry without a name: {entry!r}")
    name, shape = entry["name"], entry.get("shape")
    if not isinstance(shape, list) or not shape or (is_input and len(shape) != 4):
        what = "input must have a 4-d NCHW shape" if is_input else "output needs a shape"
        raise _contract_error(source, f"tensor {name!r}: {what}, got {shape!r}")
    for i, dim in enumerate(shape):
        batch_ok = i == 0 and dim == BATCH_DIM
        if not batch_ok and not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
            raise _contract_error(source, f"tensor {name!r} has a bad dimension {dim!r} at {i}")
    if entry.get("dtype") not in DTYPES:
        raise _contract_error(source, f"tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
    if entry.get("layout", LAYOUT) != LAYOUT:
        raise _contract_error(source, f"tensor {name!r} has unsupported layout {entry['layout']!r}")
    value_range = None
    if is_input:
        if name not in INPUT_NAMES:
            raise _contract_error(source, f"input must be named 'images' or 'latents', got {name!r}")
        if name == IMAGES:
            value_range = _number_pair(entry.get("range"), "input 'images' range", source)
    key = name if is_input else entry.get("key", entry.get("tap", name))  # "tap": files before outputs had keys
    return TensorSpec(name, tuple(shape), entry["dtype"], str(key), value_range)


def _optional_pair(data: Mapping[str, Any], name: str, kind: type) -> tuple | None:
    value = data.get(name)
    return None if value is None else tuple(kind(v) for v in value)


def input_spec(raw: Mapping[str, Any], source: str = "<memory>") -> TensorSpec:
    """The validated input of a contract's JSON form (:meth:`Contract.to_dict`).

    Raises:
        ValueError: No single well-formed input entry.
    """
    inputs = raw.get("inputs") if isinstance(raw, Mapping) else None
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _contract_error(source, f"expected exactly one input, got {inputs!r}")
    return _parse_tensor(inputs[0], source, is_input=True)


def _parse_preprocess(text: str, source: str) -> Preprocess:
    try:
        data = json.loads(text)
        size = tuple(int(v) for v in data["size"])
        resize, crop = data["resize"], data["crop"]
        model_size = _optional_pair(data, "model_size", int)
        model_range = _optional_pair(data, "model_range", float)
        in_graph = tuple(str(step) for step in data.get("in_graph", ()))
    except (ValueError, TypeError, KeyError) as exc:
        raise _contract_error(source, f"malformed {PREPROCESS_KEY} ({exc})") from None
    if len(size) != 2 or min(size) <= 0:
        raise _contract_error(source, f"{PREPROCESS_KEY} size must be [H, W], got {data['size']!r}")
    if resize not in RESIZE_MODES or crop not in CROP_MODES:
        raise _contract_error(source, f"unsupported resize {resize!r} / crop {crop!r}")
    value_range = _number_pair(data.get("range"), f"{PREPROCESS_KEY} range", source)
    return Preprocess(size, resize, crop, value_range, model_size, model_range, in_graph)  # type: ignore[arg-type]


def _parse_batch(data: Any, spec: TensorSpec, source: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(data[k]) for k in ("min", "opt", "max"))
    except (TypeError, KeyError, ValueError):
        raise _contract_error(source, f"contract 'batch' must be {{min, opt, max}}, got {data!r}") from None
    if not 1 <= low <= opt <= high:
        raise _contract_error(source, f"contract batch needs 1 <= min <= opt <= max, got {data!r}")
    static = spec.shape[0]
    if static != BATCH_DIM and not low == high == static:
        raise _contract_error(source, f"static batch {static} disagrees with batch range {data!r}")
    return low, opt, high


def parse_contract(metadata: Mapping[str, str], source: str = "<memory>") -> Contract:
    """Validate the ``diffperception.*`` metadata entries and build a :class:`Contract`.

    Args:
        metadata: ONNX ``metadata_props`` (or a sidecar's ``metadata``) as key -> string.
        source: File name used in error messages.

    Returns:
        The validated contract; ``parse_contract(contract.to_metadata())`` equals ``contract``
        up to ``source``.

    Raises:
        ValueError: A key is missing or malformed; the message says the file was not
            exported by diffperception or comes from an incompatible version.
    """
    if CONTRACT_KEY not in metadata:
        raise _contract_error(source, f"no {CONTRACT_KEY!r} metadata entry")
    try:
        raw = json.loads(metadata[CONTRACT_KEY])
    except (TypeError, ValueError) as exc:
        raise _contract_error(source, f"{CONTRACT_KEY} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list) or not raw.get("outputs"):
        raise _contract_error(source, f"{CONTRACT_KEY} needs 'inputs' and 'outputs' lists")
    spec = input_spec(raw, source)
    outputs = tuple(_parse_tensor(o, source, is_input=False) for o in raw["outputs"])
    low, opt, high = _parse_batch(raw.get("batch"), spec, source)
    preprocess = None
    if PREPROCESS_KEY in metadata:
        preprocess = _parse_preprocess(metadata[PREPROCESS_KEY], source)
    elif not spec.name == LATENTS:
        raise _contract_error(source, f"image graph without a {PREPROCESS_KEY!r} metadata entry")
    if preprocess is not None and spec.name == IMAGES and preprocess.size != spec.shape[2:]:
        raise _contract_error(source, f"preprocess size {preprocess.size} != input shape {spec.shape}")
    schema = (CONTRACT_KEY, PREPROCESS_KEY, OUTPUTS_KEY, LEGACY_OUTPUTS_KEY)
    extra = {k: str(v) for k, v in metadata.items() if k.startswith(METADATA_PREFIX) and k not in schema}
    return Contract(spec, outputs, low, opt, high, preprocess, extra, source)


def load_contract(path: str | Path) -> Contract:
    """Read and validate the contract stored in an ONNX file's metadata."""
    return parse_contract(read_onnx_metadata(path), str(path))


def sidecar_path(engine_path: str | Path) -> Path:
    """The sidecar JSON next to an engine: ``model.engine`` -> ``model.engine.json``."""
    return Path(f"{engine_path}.json")


def load_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """Read the ``<engine>.json`` sidecar that ``build_engine`` writes next to an engine.

    Raises:
        FileNotFoundError: The sidecar is missing.
        ValueError: The sidecar is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Engine sidecar not found: {path}. Engines must be built with "
            f"`{BUILD_COMMAND} model.onnx`, which writes it next to the engine."
        )
    try:
        sidecar = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"The sidecar {path} is not valid JSON ({exc}); rebuild the engine.") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("contract"), dict):
        raise ValueError(f"The sidecar {path} has no 'contract' object; rebuild the engine.")
    return sidecar


def contract_from_sidecar(sidecar: Mapping[str, Any], source: str = "<sidecar>") -> Contract:
    """Validate the contract in an engine sidecar; the batch range becomes the engine profile's."""
    metadata = {str(k): str(v) for k, v in dict(sidecar.get("metadata") or {}).items()}
    metadata[CONTRACT_KEY] = json.dumps(sidecar.get("contract"))
    contract = parse_contract(metadata, source)
    profile = sidecar.get("profile") or {}
    try:
        low, opt, high = (int(profile[k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError):
        return contract
    return contract.with_batch_range(low, opt, high)


# --- images and arrays -> model input ---------------------------------------------------


def resize_and_crop(image: Image.Image, size: tuple[int, int], resize: str, crop: str) -> Image.Image:
    """Resize an image to (H, W) = ``size`` as ``diffperception.preprocess`` says.

    With ``crop == "center"`` the image is scaled by ``max(H / h, W / w)`` (the shorter
    side matches for square targets), each side rounded and at least the target, then
    the centre (offsets ``(new - target) // 2``) is cut out. Otherwise it is resized to
    (H, W) directly.
    """
    resample = getattr(getattr(Image, "Resampling", Image), _RESAMPLE_NAMES[resize])
    height, width = size
    if crop != "center":
        return image.resize((width, height), resample=resample)
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), resample=resample)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def preprocess_image(
    image: Image.Image, preprocess: Preprocess, value_range: tuple[float, float]
) -> np.ndarray:
    """Turn an RGB image into a (3, H, W) float32 array in ``value_range``.

    Args:
        image: The image (converted to RGB if needed).
        preprocess: Size, resampling filter and crop mode.
        value_range: The input's declared range; [0, 1] is mapped linearly onto it.

    Returns:
        A C-contiguous float32 array of shape (3, H, W).
    """
    image = resize_and_crop(image.convert("RGB"), preprocess.size, preprocess.resize, preprocess.crop)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    low, high = value_range
    return np.ascontiguousarray(array * np.float32(high - low) + np.float32(low), dtype=np.float32)


def _array_item(array: np.ndarray, contract: Contract, what: str) -> np.ndarray:
    if not contract.is_latent and array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        image = Image.fromarray(array, "RGB")
        return preprocess_image(image, contract.preprocess, contract.input.range)[None]  # type: ignore[arg-type]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            "Expected a numeric (C, H, W) or (N, C, H, W) array"
            + ("" if contract.is_latent else " or an (H, W, 3) uint8 RGB image")
            + f" for {what}, got shape {array.shape} dtype {array.dtype}."
        )
    check_sample_shape(array.shape, contract, what)
    return array.astype(np.float32, copy=False)


def check_sample_shape(shape: Sequence[int], contract: Contract, what: str) -> None:
    """Raise ValueError when an NCHW shape's channel count or spatial size is wrong."""
    channels, height, width = contract.sample_shape
    kind = "latent" if contract.is_latent else "image"
    if len(shape) != 4:
        raise ValueError(f"Expected an NCHW array (batch, {channels}, {height}, {width}) for {what}, "
                         f"got {tuple(shape)}.")
    if shape[1] != channels:
        raise ValueError(f"Wrong channel count {shape[1]} in {what}: the model takes {channels} channels.")
    if tuple(shape[2:]) != (height, width):
        raise ValueError(
            f"Wrong spatial size {tuple(shape[2:])} in {what} for the {kind} input: the model "
            f"takes ({height}, {width})."
        )


def prepare_batch(
    items: Sequence[InputItem], contract: Contract, *, limits: InputLimits | None = None
) -> np.ndarray:
    """Load image files, ``.npy`` files or arrays into one float32 NCHW batch.

    Image graphs take image files (preprocessed with :func:`preprocess_image`),
    (H, W, 3) uint8 RGB arrays, or ready (C, H, W) / (N, C, H, W) arrays / ``.npy``
    files already in the input's range. Latent graphs take ``.npy`` files or arrays
    as they are. Files are checked from their headers against ``limits`` before they
    are decoded or read (see :mod:`.input_files`).

    Args:
        items: Paths or arrays.
        contract: The model's contract.
        limits: Largest image / ``.npy`` file accepted (default: :class:`InputLimits`).

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: An item has the wrong shape or type, a file is damaged, not numeric or over
            ``limits``, or no item was given.
    """
    if isinstance(items, (str, Path, np.ndarray)):
        items = [items]
    batches = []
    for index, item in enumerate(items):
        if isinstance(item, np.ndarray):
            batches.append(_array_item(item, contract, f"input array #{index}"))
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"Input file not found: {path}.")
        if path.suffix.lower() == ".npy":
            batches.append(_array_item(load_npy(path, limits=limits), contract, str(path)))
        elif contract.is_latent:
            raise ValueError(f"This model takes latents, not images like {path}: pass .npy files or arrays.")
        else:
            image = load_image(path, limits=limits)
            value_range = contract.input.range
            batches.append(preprocess_image(image, contract.preprocess, value_range)[None])  # type: ignore[arg-type]
    if not batches:
        raise ValueError("No inputs given: pass image files, .npy files or arrays.")
    return np.concatenate(batches, axis=0)


def validate_batch(batch: np.ndarray, contract: Contract) -> np.ndarray:
    """Check a model-ready NCHW batch and cast it to the input dtype.

    Raises:
        ValueError: Not an NCHW numeric array, wrong channels / spatial size, batch
            size outside ``[batch_min, batch_max]``, or NaN / infinite values.
    """
    if not isinstance(batch, np.ndarray) or not np.issubdtype(batch.dtype, np.number):
        raise ValueError(f"The input must be a numeric numpy array, got {type(batch).__name__}.")
    check_sample_shape(batch.shape, contract, f"input {contract.input.name!r}")
    if not contract.batch_min <= batch.shape[0] <= contract.batch_max:
        raise ValueError(
            f"Batch size {batch.shape[0]} is outside the model's range "
            f"[{contract.batch_min}, {contract.batch_max}] ({contract.source}): split the "
            "inputs or re-export / rebuild with a wider batch range."
        )
    batch = np.ascontiguousarray(batch, dtype=contract.input.numpy_dtype)
    bad = ~np.isfinite(batch).reshape(batch.shape[0], -1).all(axis=1)
    if bad.any():
        raise ValueError(
            f"The input contains NaN or infinite values (as {contract.input.dtype}) in batch item(s) "
            f"{np.flatnonzero(bad).tolist()}."
        )
    return batch
