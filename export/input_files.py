"""Reading input files within bounded memory: images (Pillow) and ``.npy`` arrays (numpy).

A file is judged by its header before anything large is allocated, and every hostile or broken
file is a ``ValueError`` that names the file, says what is wrong and how to fix it:

* **Images**: the width x height in the header must be at most ``max_image_pixels`` (default
  :data:`MAX_IMAGE_PIXELS`, Pillow's own decompression-bomb threshold: 89,478,485 pixels, e.g.
  9459 x 9459, about 270 MB once decoded as RGB); only then is the image decoded. Files Pillow
  cannot identify, and corrupt or truncated image data, are reported as such.
* **.npy arrays**: the magic string and header (dtype, shape, order) are read first. The array
  must be integer or floating point (object arrays would need unpickling, which this kit never
  does) and at most ``max_array_bytes`` (default :data:`MAX_ARRAY_BYTES`, 1 GiB), and the file
  must hold all the data its header declares. Only then is the data read.

The command-line flags ``--max-image-pixels`` and ``--max-array-mib`` raise the limits. Pillow
keeps its own process-wide limit (errors above twice ``PIL.Image.MAX_IMAGE_PIXELS``);
:func:`allow_image_pixels` raises it to match a larger ``max_image_pixels``.

Example:
    >>> image = load_image("photo.jpg")
    >>> latents = load_npy("latents.npy", limits=InputLimits(max_array_bytes=4 << 30))
    >>> limits = InputLimits(max_image_pixels=200_000_000)
    >>> allow_image_pixels(limits.max_image_pixels)
    >>> scan = load_image("scan.tif", limits=limits)
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, ImageOps

# Pillow's default Image.MAX_IMAGE_PIXELS, spelled out so that the kit's own check does not move
# when something in the process changes Pillow's global.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_ARRAY_BYTES = 1 << 30
_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_NUMERIC_KINDS = "iuf"  # signed / unsigned integers, floating point


@dataclass(frozen=True)
class InputLimits:
    """The most one input file may hold.

    Attributes:
        max_image_pixels: Width x height an image's header may declare.
        max_array_bytes: Data bytes a ``.npy`` header may declare.
    """

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_array_bytes: int = MAX_ARRAY_BYTES

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_array_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def allow_image_pixels(max_image_pixels: int) -> None:
    """Raise Pillow's process-wide decompression-bomb limit to at least ``max_image_pixels``.

    Pillow refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` on its own; the commands
    call this when ``--max-image-pixels`` asks for more, so that the flag is the one limit that
    counts. Library callers that pass a larger :class:`InputLimits` call it themselves.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_image_pixels:
        Image.MAX_IMAGE_PIXELS = max_image_pixels


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (``_`` separators allowed: ``200_000_000``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"Expected a positive integer, got {text!r}.")
    return value


def add_limit_arguments(parser: argparse.ArgumentParser, *, arrays: bool = True) -> None:
    """Add ``--max-image-pixels`` and (with ``arrays``) ``--max-array-mib`` to a command.

    Args:
        parser: The command's parser.
        arrays: Whether the command reads ``.npy`` files.
    """
    parser.add_argument("--max-image-pixels", type=_positive_int, default=MAX_IMAGE_PIXELS, metavar="N",
                        help="refuse images whose header declares more pixels (default %(default)s)")
    if arrays:
        parser.add_argument("--max-array-mib", type=_positive_int, default=MAX_ARRAY_BYTES >> 20, metavar="N",
                            help="refuse .npy files whose header declares more MiB of data (default %(default)s)")


def limits_from_arguments(args: argparse.Namespace) -> InputLimits:
    """The :class:`.InputLimits` the flags of :func:`add_limit_arguments` ask for.

    Pillow's own process-wide limit is raised to match, so that the flag is the one that counts.
    """
    allow_image_pixels(args.max_image_pixels)
    array_mib = getattr(args, "max_array_mib", MAX_ARRAY_BYTES >> 20)
    return InputLimits(max_image_pixels=args.max_image_pixels, max_array_bytes=array_mib << 20)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Input file not found: {path}.")
    return path


def _too_many_pixels(path: Path, what: str, limit: int) -> ValueError:
    return ValueError(
        f"The image {path} is {what}, more than the {limit:,} pixels allowed (a decompression "
        "bomb, or a very large image): scale it down before passing it, or raise the limit "
        "(--max-image-pixels; in Python InputLimits and allow_image_pixels) if it is genuine and "
        "the memory is there."
    )


def _open_image(path: Path, limits: InputLimits) -> Image.Image:
    """Open ``path`` (header only) and check its size; nothing is decoded yet."""
    try:
        with warnings.catch_warnings():
            # The size check below is the one that counts; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(path, f"over Pillow's own limit ({exc})", limits.max_image_pixels) from None
    except Image.UnidentifiedImageError:
        raise ValueError(
            f"{path} is not an image Pillow can read (unknown format or damaged header): pass an image "
            "file (PNG, JPEG, WebP, ...), or re-save this one with an image editor."
        ) from None
    except Exception as exc:  # Pillow's format plugins raise many kinds on malformed headers
        raise ValueError(f"Cannot read the image {path} ({type(exc).__name__}: {exc}): the file is corrupt "
                         "or truncated; re-save or re-download it.") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        image.close()
        raise _too_many_pixels(path, f"{width} x {height} = {width * height:,} pixels", limits.max_image_pixels)
    return image


def image_size(path: str | Path, *, limits: InputLimits | None = None) -> tuple[int, int]:
    """Read an image's (width, height) from its header, without decoding it.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not an image, or more pixels than ``limits`` allow.
    """
    with _open_image(_existing_file(path), limits or InputLimits()) as image:
        return image.size


def load_image(path: str | Path, *, limits: InputLimits | None = None) -> Image.Image:
    """Open an image file as RGB (EXIF orientation applied), checking its size before decoding.

    Args:
        path: The image file (any format Pillow reads; the first frame of an animation).
        limits: The pixel limit (default: :data:`MAX_IMAGE_PIXELS`).

    Returns:
        The decoded RGB image.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not an image, too many pixels, or corrupt / truncated image data.
    """
    path = _existing_file(path)
    with _open_image(path, limits or InputLimits()) as image:
        try:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
        except Exception as exc:  # decoders report damage as OSError, SyntaxError, zlib.error, ...
            raise ValueError(
                f"Cannot decode the image {path} ({type(exc).__name__}: {exc}): the file is corrupt or "
                "truncated; re-save or re-download it."
            ) from None


def _read_npy_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read the magic string and header of a ``.npy`` file: (shape, fortran_order, dtype)."""
    fix = "save the array with numpy.save(path, array.astype(numpy.float32))"
    try:
        version = npy_format.read_magic(handle)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .npy file ({exc}): {fix}.") from None
    reader = _NPY_HEADER_READERS.get(version)
    if reader is None:
        raise ValueError(f"{path} is a .npy file of format version {version[0]}.{version[1]}, which holds "
                         f"structured arrays only; the model takes plain numeric arrays: {fix}.")
    try:
        shape, fortran_order, dtype = reader(handle)
    except Exception as exc:  # numpy's header parser lets ValueError, SyntaxError and tokenize errors through
        raise ValueError(f"{path} has a damaged .npy header ({type(exc).__name__}: {exc}): {fix}.") from None
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects (dtype {dtype}), which only unpickling could read; "
                         f"this kit never unpickles files: {fix}.")
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{path} holds a {dtype} array; the model takes integer or floating-point "
                         f"arrays: {fix}.")
    if any(dim < 0 for dim in shape):
        raise ValueError(f"{path} has a damaged .npy header (negative shape {shape}): {fix}.")
    return shape, fortran_order, dtype


def load_npy(path: str | Path, *, limits: InputLimits | None = None) -> np.ndarray:
    """Read a numeric ``.npy`` file, checking its header before reading the data.

    Args:
        path: The ``.npy`` file (format 1.0 or 2.0, as ``numpy.save`` writes numeric arrays).
        limits: The size limit (default: :data:`MAX_ARRAY_BYTES`).

    Returns:
        The array, with the shape, dtype and memory order the header declares.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not a ``.npy`` file, a damaged header, an object / non-numeric dtype, more
            bytes than ``limits`` allow, or less data than the header declares.
    """
    path, limits = _existing_file(path), limits or InputLimits()
    with path.open("rb") as handle:
        shape, fortran_order, dtype = _read_npy_header(handle, path)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > limits.max_array_bytes:
            raise ValueError(
                f"{path} declares a {dtype} array of shape {shape} ({nbytes / 2**20:,.1f} MiB), more than the "
                f"{limits.max_array_bytes / 2**20:,.1f} MiB allowed for one .npy input: split it into smaller "
                "files, or raise the limit (--max-array-mib) if it is genuine and the memory is there."
            )
        held = os.fstat(handle.fileno()).st_size - handle.tell()
        if held < nbytes:
            raise ValueError(f"{path} is truncated: its header declares {nbytes:,} bytes of data ({dtype}, shape "
                             f"{shape}) but the file holds {held:,}: save the array again with numpy.save.")
        data = np.fromfile(handle, dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran_order else "C")
