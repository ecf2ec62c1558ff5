"""Hostile and broken input files in the deployment kit: clear errors naming the file, bounded memory.

The files are built by hand in ``tmp_path``: a PNG whose IHDR claims 30000 x 30000 pixels is
45 bytes, an ``.npy`` whose header declares a (100000, 100000) float32 array is 128 bytes; the
commands run in a subprocess under a 1 GiB address-space limit, far below what decoding or
reading either would take (2.7 GB and 40 GB).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.lib import format as npy_format
from onnx import TensorProto, helper
from PIL import Image

try:
    import resource
except ImportError:  # Windows: no address-space limit there; every other check still runs
    resource = None

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the kit is the top-level export/ folder; make it importable under plain `pytest`
    sys.path.insert(0, str(REPO))

from export.contract import load_contract, prepare_batch  # noqa: E402
from export.input_files import MAX_IMAGE_PIXELS, InputLimits, image_size, load_image, load_npy  # noqa: E402

SIZE = 8
MEMORY_LIMIT = 1 << 30  # address space of the command under test


# --- building the files ------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG signature and an IHDR declaring ``width`` x ``height`` RGB pixels, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    return path


def good_png(path: Path, size: tuple[int, int] = (20, 12), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def truncated_png(path: Path) -> Path:
    data = good_png(path, (64, 64)).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_png(path: Path) -> Path:
    """A complete PNG whose compressed pixel data is overwritten with noise (CRCs left stale)."""
    data = bytearray(good_png(path, (64, 64)).read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 16:start + 400] = np.random.default_rng(1).integers(0, 256, 384, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path) -> Path:
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(path.with_suffix(".tmp.jpg"))
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def text_file(path: Path) -> Path:
    path.write_text("these are notes, not pixels\n")
    return path


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str | list = "<f4", data: bytes = b"") -> Path:
    """An ``.npy`` header declaring ``shape`` / ``dtype``, followed by ``data`` (nothing by default)."""
    with path.open("wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": dtype, "fortran_order": False, "shape": shape})
        handle.write(data)
    return path


def object_npy(path: Path) -> Path:
    np.save(path, np.array([{"payload": 1}, None], dtype=object), allow_pickle=True)
    return path


def npy_with_raw_header(path: Path, header: str, version: bytes = b"\x01\x00") -> Path:
    """An ``.npy`` file with a hand-written header dict (padded as numpy pads it)."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    length = struct.pack("<H" if version == b"\x01\x00" else "<I", len(text))
    path.write_bytes(b"\x93NUMPY" + version + length + text)
    return path


# --- tiny models ---------------------------------------------------------------------------


def _model(path: Path, input_name: str, channels: int, preprocess: dict | None) -> Path:
    shape = ["batch", channels, SIZE, SIZE]
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["mid_block"])], "identity",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("mid_block", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    value_range = None if preprocess is None else [0.0, 1.0]
    contract = {"inputs": [{"name": input_name, "shape": shape, "dtype": "float32", "range": value_range,
                            "layout": "NCHW"}],
                "outputs": [{"name": "mid_block", "key": "mid_block", "shape": shape, "dtype": "float32"}],
                "batch": {"min": 1, "opt": 1, "max": 4}}
    meta = {"diffperception.contract": json.dumps(contract), "diffperception.outputs": '["mid_block"]'}
    if preprocess is not None:
        meta["diffperception.preprocess"] = json.dumps(preprocess)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def image_model(tmp_path: Path) -> Path:
    preprocess = {"size": [SIZE, SIZE], "resize": "bicubic", "crop": "center", "range": [0.0, 1.0]}
    return _model(tmp_path / "image_model.onnx", "images", 3, preprocess)


@pytest.fixture
def latent_model(tmp_path: Path) -> Path:
    return _model(tmp_path / "latent_model.onnx", "latents", 4, None)


# --- the cases -----------------------------------------------------------------------------

#: name -> (file name, builder, what the message must say)
HOSTILE_IMAGES: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "png_30000x30000": ("bomb.png", lambda p: png_header_only(p, 30000, 30000), r"pixels allowed.*--max-image-pixels"),
    "png_10000x10000": ("big.png", lambda p: png_header_only(p, 10000, 10000),
                        r"10000 x 10000 = 100,000,000 pixels, more than the 89,478,485 pixels allowed"),
    "truncated_png": ("cut.png", truncated_png, r"Cannot decode the image .*truncated.*re-save"),
    "corrupt_png": ("noise.png", corrupt_png, r"Cannot decode the image .*corrupt.*re-save"),
    "truncated_jpeg": ("cut.jpg", truncated_jpeg, r"Cannot (read|decode) the image .*corrupt or truncated"),
    "text_as_png": ("notes.png", text_file, r"not an image Pillow can read.*pass an image file"),
    "empty_png": ("empty.png", lambda p: (p.write_bytes(b""), p)[1], r"not an image Pillow can read"),
}

HOSTILE_ARRAYS: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "npy_1e5x1e5": ("huge.npy", lambda p: npy_header_only(p, (100000, 100000)),
                    r"float32 array of shape \(100000, 100000\) \(38,147.0 MiB\), more than the 1,024.0 MiB "
                    r"allowed.*--max-array-mib"),
    "object_npy": ("pickled.npy", object_npy, r"Python objects \(dtype object\).*never unpickles.*numpy.save"),
    "structured_npy": ("fields.npy", lambda p: npy_header_only(p, (2,), [("a", "<f4"), ("b", "<i4")]),
                       r"takes integer or floating-point arrays"),
    "string_npy": ("text.npy", lambda p: np.save(p, np.array(["a", "b"])) or p, r"<U1 array"),
    "complex_npy": ("complex.npy", lambda p: np.save(p, np.zeros((1, 4, 8, 8), np.complex64)) or p, r"complex64"),
    "truncated_npy": ("short.npy", lambda p: npy_header_only(p, (1, 4, SIZE, SIZE), data=b"\0" * 16),
                      r"truncated: its header declares 1,024 bytes .* holds 16"),
    "not_npy": ("junk.npy", text_file, r"is not a \.npy file.*numpy\.save"),
    "bad_header": ("header.npy", lambda p: npy_with_raw_header(p, "{'descr': '<f4', 'shape': (1, 4"),
                   r"damaged \.npy header"),
    "negative_shape": ("negative.npy", lambda p: npy_with_raw_header(
        p, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4, 8, 8), }"), r"negative shape"),
    "version_3": ("v3.npy", lambda p: npy_with_raw_header(
        p, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\x03\x00"), r"format version 3\.0"),
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


PREEXEC = _limit_memory if resource is not None else None


def run_kit(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m diffperception.deploy run ...`` under the memory limit."""
    command = [sys.executable, "-m", "diffperception.deploy", "run", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, preexec_fn=PREEXEC)


def assert_clear_error(proc: subprocess.CompletedProcess, name: str, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and name in proc.stderr, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr


# --- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE_IMAGES))
def test_run_refuses_hostile_image(tmp_path: Path, image_model: Path, case: str) -> None:
    name, build, pattern = HOSTILE_IMAGES[case]
    good = good_png(tmp_path / "good.png")
    proc = run_kit(image_model, good, build(tmp_path / name), cwd=tmp_path)
    assert_clear_error(proc, name, pattern)


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_run_refuses_hostile_npy(tmp_path: Path, latent_model: Path, case: str) -> None:
    name, build, pattern = HOSTILE_ARRAYS[case]
    proc = run_kit(latent_model, build(tmp_path / name), cwd=tmp_path)
    assert_clear_error(proc, name, pattern)


def test_run_accepts_good_files_under_the_memory_limit(tmp_path: Path, image_model: Path,
                                                       latent_model: Path) -> None:
    proc = run_kit(image_model, good_png(tmp_path / "a.png"), good_png(tmp_path / "b.png", (9, 30)), cwd=tmp_path)
    assert proc.returncode == 0 and "mid_block: shape=(2, 3, 8, 8)" in proc.stdout, proc.stderr
    np.save(tmp_path / "z.npy", np.ones((2, 4, SIZE, SIZE), np.float32))
    proc = run_kit(latent_model, tmp_path / "z.npy", cwd=tmp_path)
    assert proc.returncode == 0 and "mid_block: shape=(2, 4, 8, 8)" in proc.stdout, proc.stderr


def test_limit_flags_raise_and_lower_the_limits(tmp_path: Path, image_model: Path, latent_model: Path) -> None:
    big = png_header_only(tmp_path / "big.png", 10000, 10000)
    # Raised: the size check passes and the missing pixel data is what is reported.
    proc = run_kit(image_model, big, "--max-image-pixels", "200_000_000", cwd=tmp_path)
    assert_clear_error(proc, "big.png", r"Cannot decode the image")
    proc = run_kit(image_model, good_png(tmp_path / "small.png"), "--max-image-pixels", "100", cwd=tmp_path)
    assert_clear_error(proc, "small.png", r"20 x 12 = 240 pixels, more than the 100 pixels allowed")
    np.save(tmp_path / "z.npy", np.ones((4, 4, 128, 128), np.float32))  # 1 MiB
    proc = run_kit(latent_model, tmp_path / "z.npy", "--max-array-mib", "1", cwd=tmp_path)
    assert_clear_error(proc, "z.npy", r"Wrong spatial size")  # within the limit: read, then checked
    np.save(tmp_path / "z.npy", np.ones((5, 4, 128, 128), np.float32))
    proc = run_kit(latent_model, tmp_path / "z.npy", "--max-array-mib", "1", cwd=tmp_path)
    assert_clear_error(proc, "z.npy", r"\(1.2 MiB\), more than the 1.0 MiB allowed")


@pytest.mark.parametrize("flag", ["--max-image-pixels", "--max-array-mib"])
@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_limit_flags_reject_bad_values(tmp_path: Path, image_model: Path, flag: str, value: str) -> None:
    proc = run_kit(image_model, good_png(tmp_path / "a.png"), flag, value, cwd=tmp_path)
    assert proc.returncode == 2 and "Expected a positive integer" in proc.stderr and "Traceback" not in proc.stderr


# --- the Python API ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE_IMAGES))
def test_load_image_refuses_hostile_image(tmp_path: Path, case: str) -> None:
    name, build, pattern = HOSTILE_IMAGES[case]
    path = build(tmp_path / name)
    with pytest.raises(ValueError, match=pattern) as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_load_npy_refuses_hostile_array(tmp_path: Path, case: str) -> None:
    name, build, pattern = HOSTILE_ARRAYS[case]
    path = build(tmp_path / name)
    with pytest.raises(ValueError, match=pattern) as info:
        load_npy(path)
    assert str(path) in str(info.value)


def test_image_size_reads_only_the_header(tmp_path: Path) -> None:
    assert image_size(png_header_only(tmp_path / "a.png", 9000, 9000)) == (9000, 9000)
    with pytest.raises(ValueError, match="more than the 80,999,999 pixels allowed"):
        image_size(tmp_path / "a.png", limits=InputLimits(max_image_pixels=80_999_999))
    with pytest.raises(FileNotFoundError, match="gone.png"):
        image_size(tmp_path / "gone.png")
    assert MAX_IMAGE_PIXELS == 89_478_485


def test_load_image_keeps_working_images(tmp_path: Path) -> None:
    path = good_png(tmp_path / "a.png")
    image = load_image(path, limits=InputLimits(max_image_pixels=240))
    assert image.mode == "RGB" and image.size == (20, 12)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4)),
    np.arange(24, dtype=">i2").reshape(4, 6),
    np.arange(6, dtype=np.uint8),
    np.zeros((0, 4), np.float16),
    np.float32(3.5),
], ids=["float32", "fortran", "big_endian_int16", "uint8", "empty", "scalar"])
def test_load_npy_reads_numeric_arrays_as_numpy_does(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, array)
    got = load_npy(path)
    assert got.dtype == array.dtype and got.shape == np.shape(array)
    np.testing.assert_array_equal(got, np.load(path, allow_pickle=False))


def test_load_npy_reads_format_2_0_and_the_size_limit_is_inclusive(tmp_path: Path) -> None:
    array = np.arange(256, dtype=np.float32).reshape(4, 64)
    path = tmp_path / "v2.npy"
    with path.open("wb") as handle:
        npy_format.write_array_header_2_0(handle, npy_format.header_data_from_array_1_0(array))
        handle.write(array.tobytes())
    np.testing.assert_array_equal(load_npy(path, limits=InputLimits(max_array_bytes=1024)), array)
    with pytest.raises(ValueError, match=r"v2.npy declares a float32 array of shape \(4, 64\)"):
        load_npy(path, limits=InputLimits(max_array_bytes=1023))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_input_limits_must_be_positive_integers(bad) -> None:
    with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
        InputLimits(max_image_pixels=bad)
    with pytest.raises(ValueError, match="max_array_bytes must be a positive integer"):
        InputLimits(max_array_bytes=bad)


def test_prepare_batch_passes_the_limits_on(tmp_path: Path, image_model: Path, latent_model: Path) -> None:
    image_contract, latent_contract = load_contract(image_model), load_contract(latent_model)
    with pytest.raises(ValueError, match="a.png is 20 x 12"):
        prepare_batch([good_png(tmp_path / "a.png")], image_contract, limits=InputLimits(max_image_pixels=239))
    assert prepare_batch([tmp_path / "a.png"], image_contract).shape == (1, 3, SIZE, SIZE)
    np.save(tmp_path / "z.npy", np.ones((1, 4, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="z.npy declares"):
        prepare_batch([tmp_path / "z.npy"], latent_contract, limits=InputLimits(max_array_bytes=1023))
    assert prepare_batch([tmp_path / "z.npy"], latent_contract).shape == (1, 4, SIZE, SIZE)
