"""Shared fixtures: tiny diffusers models built once per session, in diffusers folder layout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import tiny_models  # noqa: E402

KINDS = ("sd1", "sd2", "sdxl", "pixel")


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory) -> dict[str, Path]:
    """``{kind: folder}`` for tiny SD1 / SD2 / SDXL / pixel models."""
    root = tmp_path_factory.mktemp("tiny")
    repos = {kind: tiny_models.make_sd(root / kind, kind) for kind in ("sd1", "sd2", "sdxl")}
    repos["pixel"] = tiny_models.make_pixel(root / "pixel")
    return repos


@pytest.fixture(scope="session")
def reference_pipes(tiny_repos):
    """diffusers' own pipelines on the tiny folders (the reference for parity tests)."""
    return {kind: tiny_models.reference_pipeline(folder, kind) for kind, folder in tiny_repos.items()}
