"""``diffperception extract --out-dir``: shards over 2 processes, a real kill, resume, coverage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffperception.cli import main

MODEL = "diffperception:default"
TAP = ["--tap", "mid_block", "--timestep", "50"]


def _folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (root / "imgs" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((40, 36, 3)) * 255).astype(np.uint8)  # not square: crop + resize
        Image.fromarray(pixels).save(root / "imgs" / f"c{i % 3}" / f"{i:03d}.png")
    return root / "imgs"


def _stored_keys(out: Path, field: str = "keys") -> list[str]:
    keys = []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            value = json.loads(handle.metadata()[field]) if field == "keys" else [
                handle.metadata()[field]]
        keys += value
    return keys


def _command(*args: str | Path, processes: int = 1) -> list[str]:
    # on a CPU-only machine --multi_gpu (torchrun) starts the processes; the library then joins
    # them with gloo (accelerate's --cpu launcher would start only one)
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no"] if processes > 1 else [sys.executable])
    return [*launch, "-m", "diffperception.cli", "extract", *map(str, args)]


def test_killed_extraction_resumed_over_two_processes_covers_each_image_once(tmp_path):
    folder, out = _folder(tmp_path, 40), tmp_path / "feats"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [MODEL, folder, *TAP, "--out-dir", out, "--shard-size", "1", "--batch-size", "1"]
    proc = subprocess.Popen(_command(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # a kill, mid-run
    assert proc.wait() in (0, -signal.SIGKILL)
    before = _stored_keys(out)
    assert set(_stored_keys(out, "process")) == {"0/1"}
    assert 3 <= len(before) and len(set(before)) == len(before)
    assert not (out / "index.json").exists() or len(before) == 40

    done = subprocess.run(_command(MODEL, folder, *TAP, "--out-dir", out, "--shard-size", "4",
                                   processes=2), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _stored_keys(out)
    expected = sorted(f"imgs/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.png"))
    assert sorted(keys) == expected  # every image exactly once
    assert set(before) <= set(keys)
    assert set(_stored_keys(out, "process")) == {"0/1", "0/2", "1/2"}  # both processes wrote
    index = json.loads((out / "index.json").read_text())
    assert sorted(index) == expected

    from diffperception.data import transform_image
    from diffperception.modeling import DiffusionPerceptionForFeatureExtraction

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=["mid_block"], timesteps=[50])
    key = expected[7]
    shard, row = index[key]
    with safe_open(str(out / shard), framework="pt") as handle:
        stored = handle.get_tensor("mid_block")[row]
    image = transform_image(Image.open(folder / key.split("/", 1)[1]), 32, "none")
    with torch.no_grad():
        torch.testing.assert_close(stored, model(image[None])["mid_block"][0], rtol=1e-4, atol=1e-5)


def test_dataset_extraction_labels_and_refusals(tmp_path, capsys):
    out = tmp_path / "digits"
    argv = ["extract", MODEL, *TAP, "--data", "digits", "--split", "test", "--out-dir", str(out),
            "--batch-size", "64", "--shard-size", "300"]
    assert main(argv) == 0
    keys = _stored_keys(out)
    assert len(keys) == len(set(keys)) == 599 and keys[0] == "test/00000000"
    with safe_open(str(sorted(out.glob("shard-*"))[0]), framework="pt") as handle:
        labels = json.loads(handle.metadata()["labels"])
    from diffperception.data import load_image_dataset

    first = json.loads(safe_open(str(sorted(out.glob("shard-*"))[0]), "pt").metadata()["keys"])
    truth = load_image_dataset("digits", "test")["label"]
    assert labels == [truth[int(k.split("/")[1])] for k in first]
    assert main(argv) == 0 and sorted(_stored_keys(out)) == sorted(keys)  # nothing redone
    assert main([*argv[:5], "60", *argv[6:]]) == 2  # timestep 60 into the t=50 folder
    assert "another backbone configuration" in capsys.readouterr().err
    assert main(["extract", MODEL, *TAP, "--data", "digits", "--out", "f.safetensors"]) == 2
    assert "--out writes one file" in capsys.readouterr().err
    assert main(["extract", MODEL, "x.png", *TAP, "--data", "digits", "--out-dir", "d"]) == 2
    assert "give one of the two" in capsys.readouterr().err
