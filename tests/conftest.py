"""Shared fixtures: tiny diffusers models built once per session, in diffusers folder layout,
and a session LocalHub (``testing_utils/localhub``) the in-process huggingface_hub client talks to.

The LocalHub plugin sets ``HF_ENDPOINT`` & co. in ``pytest_configure``, before any test module is
imported: huggingface_hub reads them once, at import. So nothing here imports huggingface_hub (or
diffperception, diffusers, transformers, which do) at module level.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest_plugins = ["testing_utils.localhub.plugin"]

# The tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
# spinning threads make each forward orders of magnitude slower.
torch.set_num_threads(1)

KINDS = ("sd1", "sd2", "sdxl", "pixel")


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory) -> dict[str, Path]:
    """``{kind: folder}`` for tiny SD1 / SD2 / SDXL / pixel models."""
    from testing_utils import tiny_models

    root = tmp_path_factory.mktemp("tiny")
    repos = {kind: tiny_models.make_sd(root / kind, kind) for kind in ("sd1", "sd2", "sdxl")}
    repos["pixel"] = tiny_models.make_pixel(root / "pixel")
    return repos


@pytest.fixture(scope="session")
def reference_pipes(tiny_repos):
    """diffusers' own pipelines on the tiny folders (the reference for parity tests)."""
    from testing_utils import tiny_models

    return {kind: tiny_models.reference_pipeline(folder, kind) for kind, folder in tiny_repos.items()}
