"""Tiny PixArt and SD3.5-like folders, built once per session, and diffusers' pipelines on them."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dit_repos(tmp_path_factory):
    """``{"pixart": folder, "sd3": folder}``."""
    from testing_utils import tiny_dit

    root = tmp_path_factory.mktemp("dit")
    return {"pixart": tiny_dit.make_pixart(root / "pixart"), "sd3": tiny_dit.make_sd3(root / "sd3")}


@pytest.fixture(scope="session")
def dit_pipes(dit_repos):
    """``PixArtAlphaPipeline`` / ``StableDiffusion3Pipeline`` on the tiny folders (the reference)."""
    from testing_utils import tiny_dit

    return {kind: tiny_dit.reference_pipeline(folder) for kind, folder in dit_repos.items()}


@pytest.fixture(scope="session")
def flux_repo(tmp_path_factory):
    from testing_utils import tiny_dit

    return tiny_dit.make_flux(tmp_path_factory.mktemp("flux") / "flux")
