"""The deployment kit installed on its own, the way a deployment machine gets it: a fresh virtual
environment without torch (and without the system site packages), ``pip install numpy Pillow
onnxruntime`` from PyPI, then the kit from this repository's ``export/`` folder; its command then
runs a model exported here from a folder outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.deploy.contract import load_contract, prepare_batch
from diffperception.export import to_onnx

REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)


def _pip(venv_python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.fixture(scope="module")
def kit_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with numpy, Pillow, onnxruntime and the kit installed (skips without PyPI)."""
    root = tmp_path_factory.mktemp("kit-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = _bin(venv, "python")
    deps = _pip(python, "numpy", "Pillow", "onnxruntime")
    if deps.returncode != 0:
        pytest.skip(f"PyPI is not reachable to install numpy / Pillow / onnxruntime: {deps.stderr[-500:]}")
    # a copy of the kit's folder alone: the install may need nothing else of the repository
    source = shutil.copytree(REPO / "export", root / "export",
                             ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    kit = _pip(python, str(source))
    assert kit.returncode == 0, kit.stdout[-2000:] + kit.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_installed_kit_runs_an_export_without_torch_from_any_directory(kit_venv: Path, tiny_repos,
                                                                        tmp_path: Path) -> None:
    python = _bin(kit_venv, "python")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u, sys; "
                            "print(sys.prefix != sys.base_prefix, [m for m in ('torch', 'diffusers', 'diffperception')"
                            " if u.find_spec(m)])"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.stdout.strip() == "True []", probe.stdout + probe.stderr  # isolated: no torch, no library

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["up_ft.1"], size=SIZE)
    result = to_onnx(model, tmp_path / "artifacts" / "model.onnx", batch_range=(1, 2, 2))
    rng = np.random.default_rng(11)
    images = []
    for index, shape in enumerate(((90, 100, 3), (70, 64, 3), (64, 120, 3))):
        images.append(tmp_path / "artifacts" / f"photo{index}.png")
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), "RGB").save(images[-1])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = elsewhere / "features.npz"
    command = [str(_bin(kit_venv, "diffperception-deploy")), "run", str(result.path), *map(str, images),
               "--threads", "1", "--out", str(out)]
    proc = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up_ft.1: shape=(3, 32, 8, 8) dtype=float32" in proc.stdout
    assert f"outputs: {json.dumps(['up_ft.1'])}" in proc.stdout

    batch = prepare_batch(images, load_contract(result.path))  # the kit's resize + crop, (3, 3, 64, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))["up_ft.1"].numpy()
    got = np.load(out)["up_ft.1"]
    assert got.shape == expected.shape == (3, 32, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    as_module = subprocess.run([str(python), "-m", "diffperception_deploy", "run", str(result.path),
                                str(tmp_path / "artifacts" / "missing.png")],
                               cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert as_module.returncode == 2 and "error: Input file not found" in as_module.stderr
