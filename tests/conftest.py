"""Shared fixtures: tiny diffusers models built once per session, in diffusers folder layout,
and a session LocalHub (tests/hub_server.py) the in-process huggingface_hub client talks to."""

from __future__ import annotations

# The LocalHub environment must be set before anything imports huggingface_hub (diffperception,
# diffusers and transformers all do): huggingface_hub reads HF_ENDPOINT & co. once, at import.
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
try:
    from tests.hub_server import LocalHub, apply_client_env, check_client_configured
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from hub_server import LocalHub, apply_client_env, check_client_configured

HUB_TOKENS = {"hf_alice_token": "alice", "hf_bob_token": "bob"}
_HUB_TMP = tempfile.mkdtemp(prefix="localhub-")
HUB = LocalHub(os.path.join(_HUB_TMP, "server"), tokens=HUB_TOKENS).start()
apply_client_env(os.environ, HUB.url, os.path.join(_HUB_TMP, "hf_home"))


@pytest.fixture(scope="session")
def local_hub() -> LocalHub:
    """The session's Hub-compatible server on 127.0.0.1 (tokens: ``HUB_TOKENS``)."""
    check_client_configured(HUB.url)  # fails loudly if huggingface_hub was imported too early
    return HUB


def pytest_unconfigure(config):
    HUB.stop()
    shutil.rmtree(_HUB_TMP, ignore_errors=True)


import tiny_models  # noqa: E402
import torch  # noqa: E402

# The tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's
# spinning threads make each forward orders of magnitude slower.
torch.set_num_threads(1)

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
