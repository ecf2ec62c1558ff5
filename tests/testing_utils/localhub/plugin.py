"""pytest plugin: one LocalHub for the test session, and the client pointed at it.

Named in ``tests/conftest.py`` (``pytest_plugins = ["testing_utils.localhub.plugin"]``).
``pytest_configure`` starts the server and sets ``HF_ENDPOINT`` & co. in ``os.environ``; test
modules are imported after it, so ``huggingface_hub`` (imported by diffperception, diffusers and
transformers) reads the LocalHub settings. The conftest must therefore not import any of those at
module level. The ``local_hub`` fixture checks that the imported client targets the server.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from .server import LocalHub, apply_client_env, check_client_configured

#: The session server's users: ``{token: username}``.
HUB_TOKENS = {"hf_alice_token": "alice", "hf_bob_token": "bob"}

_session: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Starts the session LocalHub and points the client environment at it."""
    tmp = tempfile.mkdtemp(prefix="localhub-")
    hub = LocalHub(os.path.join(tmp, "server"), tokens=HUB_TOKENS).start()
    apply_client_env(os.environ, hub.url, os.path.join(tmp, "hf_home"))
    _session.update(hub=hub, tmp=tmp)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stops the server and removes its files."""
    hub = _session.pop("hub", None)
    if isinstance(hub, LocalHub):
        hub.stop()
    tmp = _session.pop("tmp", None)
    if isinstance(tmp, str):
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def local_hub() -> LocalHub:
    """The session's Hub-compatible server on 127.0.0.1 (tokens: ``HUB_TOKENS``)."""
    hub = _session["hub"]
    assert isinstance(hub, LocalHub)
    check_client_configured(hub.url)  # fails loudly if huggingface_hub was imported too early
    return hub
