"""LocalHub: the server object (threads, start / stop, direct helpers) and the client environment.

``huggingface_hub`` reads its settings from the environment once, at import time, so
``HF_ENDPOINT`` & co. must be set *before* ``huggingface_hub`` (or anything importing it:
diffusers, transformers, diffperception...) is first imported. ``configure_client_env(url,
hf_home)`` returns those variables, ``apply_client_env(environ, url, hf_home, token=None)``
writes them into ``environ`` (``os.environ``, or a copy for a subprocess) and removes
``CLIENT_ENV_UNSET``; ``check_client_configured(url)`` raises a clear error if
``huggingface_hub`` was imported before the environment was set.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from .auth import AuthMixin
from .commits import CommitsMixin
from .handler import HubHTTPServer
from .lfs import LfsMixin
from .routes import RoutesMixin
from .storage import Repo, StorageMixin
from .views import ViewsMixin

if TYPE_CHECKING:
    from .handler import RequestHandler

__all__ = ["CLIENT_ENV_UNSET", "LocalHub", "apply_client_env", "check_client_configured", "configure_client_env"]

#: Variables ``apply_client_env`` removes: they would override the LocalHub settings.
CLIENT_ENV_UNSET = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_STORED_TOKENS_PATH",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_XET_HIGH_PERFORMANCE",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)


def configure_client_env(url: str, hf_home: str | os.PathLike, token: str | None = None) -> dict[str, str]:
    """Environment variables that point a ``huggingface_hub`` client at ``url``.

    They must be in ``os.environ`` before ``huggingface_hub`` is imported (it reads them
    at import time). ``hf_home`` should be an empty (or non-existent) directory: the
    client keeps its token and its download cache (``<hf_home>/hub``) there.
    """
    hf_home = os.fspath(hf_home)
    env = {
        "HF_ENDPOINT": url.rstrip("/"),
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": os.path.join(hf_home, "hub"),
        "HF_XET_CACHE": os.path.join(hf_home, "xet"),
        "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"),
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
        "HF_HUB_OFFLINE": "0",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def apply_client_env(
    environ: MutableMapping[str, str], url: str, hf_home: str | os.PathLike, token: str | None = None
) -> MutableMapping[str, str]:
    """Set ``configure_client_env(...)`` in ``environ`` and drop ``CLIENT_ENV_UNSET``; returns ``environ``."""
    for key in CLIENT_ENV_UNSET:
        environ.pop(key, None)
    environ.update(configure_client_env(url, hf_home, token=token))
    return environ


def check_client_configured(url: str) -> None:
    """Raise ``RuntimeError`` if the imported ``huggingface_hub`` does not target ``url``.

    Catches the classic mistake of importing ``huggingface_hub`` (directly or through
    diffusers/transformers) before ``apply_client_env`` ran.
    """
    from huggingface_hub import constants  # noqa: PLC0415

    problems = []
    if constants.ENDPOINT != url.rstrip("/"):
        problems.append(f"constants.ENDPOINT is {constants.ENDPOINT!r}, expected {url!r}")
    if not constants.HF_HUB_DISABLE_XET:
        problems.append("constants.HF_HUB_DISABLE_XET is False (uploads would try Xet)")
    if problems:
        raise RuntimeError(
            "huggingface_hub was imported before the LocalHub environment was set: "
            + "; ".join(problems)
            + ". Call apply_client_env(os.environ, ...) before that import (the pytest plugin "
            "testing_utils.localhub.plugin does it in pytest_configure)."
        )


class LocalHub(RoutesMixin, CommitsMixin, LfsMixin, ViewsMixin, AuthMixin, StorageMixin):
    """A Hub-compatible server on ``127.0.0.1``; see the package docstring.

    Each concern is a mixin of its own module (routes, commits, LFS, JSON views, auth,
    storage); this class holds the state they share, the server threads and direct helpers.

    Args:
        root: directory for blobs and repo histories (created if missing; an existing
            LocalHub root is loaded again).
        tokens: ``{token: username}``.
        orgs: ``{org_name: [usernames]}``: members may create and write repos in ``org_name``.
        port: API port (0: a free one). The LFS "CDN" always takes a free port.
        lfs_redirect: answer ``/resolve`` of LFS files with a 302 to the CDN port, as the
            Hub does (``False``: serve them directly, still with ``X-Linked-*`` headers).
        initial_gitattributes: put ``DEFAULT_GITATTRIBUTES`` in the initial commit.
        lfs_threshold: files at least this big are uploaded through LFS.
        verbose: log requests on stderr.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        tokens: dict[str, str] | None = None,
        *,
        orgs: dict[str, list[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_redirect: bool = True,
        initial_gitattributes: bool = True,
        lfs_threshold: int = 10 * 1024 * 1024,
        verbose: bool = False,
    ):
        self.root = os.path.abspath(os.fspath(root))
        self.tokens = dict(tokens or {})
        self.orgs = {org: set(members) for org, members in (orgs or {}).items()}
        self.host = host
        self.port = port
        self.lfs_redirect = lfs_redirect
        self.initial_gitattributes = initial_gitattributes
        self.lfs_threshold = lfs_threshold
        self.verbose = verbose
        self.url: str | None = None
        self.cdn_url: str | None = None
        self.request_log: list[dict] = []
        self._lock = threading.RLock()
        self._log_lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._uploads: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._secret = secrets.token_bytes(32)
        self._counter = 0
        self._servers: list[HubHTTPServer] = []
        self._threads: list[threading.Thread] = []
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "repos"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        self._load()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind the ports and serve in daemon threads; returns ``self``."""
        if self._servers:
            return self
        api = HubHTTPServer((self.host, self.port), self, "api")
        cdn = HubHTTPServer((self.host, 0), self, "cdn")
        self._servers = [api, cdn]
        self.port = api.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self.cdn_url = f"http://{self.host}:{cdn.server_address[1]}"
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"LocalHub-{server.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections (state stays on disk under ``root``)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalHub(url={self.url!r}, root={self.root!r})"

    # -- direct (in-process) helpers for tests -------------------------------------

    def add_token(self, token: str, username: str) -> None:
        self.tokens[token] = username

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def branch_head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._repos[(repo_type, repo_id)].branches[branch]

    def files_at(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, dict]:
        """``{path: {"sha256", "size", "lfs", "oid"}}`` of a revision (branch, tag or commit sha)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return json.loads(json.dumps(repo.commits[self._resolve(repo, revision)]["files"]))

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        entry = self.files_at(repo_id, revision, repo_type)[path]
        with open(self._blob_path(entry["sha256"]), "rb") as f:
            return f.read()

    def requests_matching(self, method: str | None = None, path_contains: str = "") -> list[dict]:
        with self._log_lock:
            return [
                r
                for r in self.request_log
                if (method is None or r["method"] == method) and path_contains in r["path"]
            ]

    # -- request log ---------------------------------------------------------------

    def _log_request(self, req: RequestHandler) -> None:
        with self._log_lock:
            self.request_log.append(
                {
                    "server": req.server.role,
                    "method": req.command,
                    "path": req.path,
                    "auth": "Authorization" in req.headers,
                    "time": time.time(),
                }
            )


def _main() -> None:  # pragma: no cover - manual use: python -m testing_utils.localhub.server [root] [token=user ...]
    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="localhub-")
    tokens = dict(arg.split("=", 1) for arg in sys.argv[2:]) or {"hf_local_token": "local"}
    hub = LocalHub(root, tokens, verbose=True).start()
    print(f"LocalHub serving {hub.url} (CDN {hub.cdn_url}), root {root}, tokens {tokens}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":  # pragma: no cover
    _main()
