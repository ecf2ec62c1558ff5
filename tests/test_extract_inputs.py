"""``diffperception extract`` on hostile and broken image files: exit 2, the file named, bounded memory.

Every image is checked before torch and the model are loaded, so these commands name a model that
does not exist: the image error must come first. They run in a subprocess under a 2 GiB
address-space limit; decoding the 30000 x 30000 PNG alone would take 2.7 GB.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploy.test_kit_inputs import HOSTILE_IMAGES, good_png, png_header_only  # the hostile files

try:
    import resource
except ImportError:  # Windows: no address-space limit there; every other check still runs
    resource = None

MEMORY_LIMIT = 2 << 30
MISSING_MODEL = "no-such-org/no-such-model"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


PREEXEC = _limit_memory if resource is not None else None


def run_extract(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """``diffperception extract MODEL ...`` under the memory limit."""
    command = [sys.executable, "-m", "diffperception.cli", "extract", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, preexec_fn=PREEXEC)


@pytest.mark.parametrize("case", sorted(HOSTILE_IMAGES))
def test_extract_refuses_hostile_image_before_loading_the_model(tmp_path: Path, case: str) -> None:
    name, build, pattern = HOSTILE_IMAGES[case]
    images = [good_png(tmp_path / "good.png"), build(tmp_path / name)]
    proc = run_extract(MISSING_MODEL, *images, "--tap", "up_blocks.1", "--out", tmp_path / "f.safetensors",
                       cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    assert name in proc.stderr and re.search(pattern, proc.stderr), proc.stderr
    assert MISSING_MODEL not in proc.stderr and not (tmp_path / "f.safetensors").exists()


def test_extract_limit_flag_and_missing_files(tmp_path: Path) -> None:
    small = good_png(tmp_path / "small.png")
    proc = run_extract(MISSING_MODEL, small, "--tap", "x", "--out", "f.st", "--max-image-pixels", "100", cwd=tmp_path)
    assert proc.returncode == 2 and "small.png is 20 x 12 = 240 pixels, more than the 100" in proc.stderr
    big = png_header_only(tmp_path / "big.png", 10000, 10000)
    proc = run_extract(MISSING_MODEL, big, "--tap", "x", "--out", "f.st", "--max-image-pixels", "200000000",
                       cwd=tmp_path)
    assert proc.returncode == 2 and re.search(r"Cannot decode the image .*big\.png", proc.stderr), proc.stderr
    proc = run_extract(MISSING_MODEL, small, tmp_path / "gone.png", "--tap", "x", "--out", "f.st", cwd=tmp_path)
    assert proc.returncode == 2 and "gone.png" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_extract(MISSING_MODEL, small, "--tap", "x", "--out", "f.st", "--batch-size", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--batch-size must be at least 1" in proc.stderr, proc.stderr


def test_extract_still_extracts_good_images(tmp_path: Path, tiny_repos) -> None:
    import torch
    from safetensors.torch import load_file

    from diffperception.cli import main
    from diffperception.modeling import DiffusionPerceptionForFeatureExtraction

    paths = [good_png(tmp_path / f"{i}.png", (40, 32), seed=i) for i in range(3)]
    out = tmp_path / "feats.safetensors"
    argv = ["extract", str(tiny_repos["pixel"]), *map(str, paths), "--tap", "up_blocks.1", "--timestep", "50",
            "--batch-size", "2", "--size", "32x32", "--out", str(out)]
    assert main(argv) == 0
    got = load_file(out)["up_blocks.1"]
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        str(tiny_repos["pixel"]), taps=["up_blocks.1"], timesteps=[50], size=(32, 32))
    with torch.no_grad():
        want = torch.cat([model([Image.open(p).convert("RGB") for p in part])["up_blocks.1"]
                          for part in (paths[:2], paths[2:])])
    assert got.shape[0] == 3
    np.testing.assert_allclose(got.numpy(), want.float().numpy(), rtol=1e-5, atol=1e-5)
