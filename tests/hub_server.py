"""A local, Hub-compatible HTTP server for the test suite (standard library only).

``LocalHub`` speaks enough of the Hugging Face Hub HTTP API for the *real*
``huggingface_hub`` client (written against 2.4.0) to push and pull model repos over
HTTP: ``create_repo``, ``upload_folder`` / ``upload_file`` / ``create_commit`` (preupload,
LFS batch + basic transfer, NDJSON commit), ``hf_hub_download``, ``snapshot_download``,
``model_info`` / ``repo_info``, ``list_repo_tree`` / ``list_repo_files``,
``list_repo_refs``, ``list_repo_commits``, branches, tags, ``delete_repo``, ``whoami``.
Errors carry the ``X-Error-Code`` headers the client maps to ``RepositoryNotFoundError``,
``RevisionNotFoundError`` and ``EntryNotFoundError``.

Storage: blobs are content-addressed files under ``<root>/blobs``; every repo is a JSON
file under ``<root>/repos`` holding its whole history (each commit is an immutable
snapshot ``path -> blob``), its branches (``main`` always exists) and tags. A new repo
gets an initial commit holding the Hub's default ``.gitattributes``, as on the real Hub
(``initial_gitattributes=False`` to start with an empty commit instead).

LFS files (decided at preupload: size >= ``lfs_threshold``, a NUL byte in the first 512
bytes, or a ``filter=lfs`` pattern of the repo's ``.gitattributes``, e.g.
``*.safetensors``) are uploaded by the client through the LFS batch API to a one-time
upload URL on this server. When downloaded, ``/resolve`` answers them, as the Hub does,
with a 302 to a signed URL on a second port (the "CDN"; another origin, so the client
drops its ``Authorization`` header) plus ``X-Linked-Etag`` (sha256) / ``X-Linked-Size``.
Regular files are served directly with the git blob sha1 as ``ETag``.

Auth: ``tokens`` maps ``token -> username``; clients send ``Authorization: Bearer <token>``.
A user may write to repos in their own namespace and in the organisations ``orgs`` lists
them in. Public repos are readable without a token; private ones only by users who may
write to their namespace. As on the Hub, an unreadable or missing repo gives
``401`` + ``X-Error-Code: RepoNotFound`` without a token and ``404`` + ``RepoNotFound`` with
one; an unknown token gives ``401 Invalid credentials in Authorization header`` on every
request (the client raises a plain ``HfHubHTTPError`` for that one).

Client configuration
--------------------
``huggingface_hub`` reads its settings from the environment once, at import time, so
``HF_ENDPOINT`` & co. must be set *before* ``huggingface_hub`` (or anything importing it:
diffusers, transformers, ...) is first imported. ``configure_client_env(url, hf_home)``
returns those variables::

    HF_ENDPOINT=<hub.url>               # all API / resolve / LFS calls go to LocalHub
    HF_HOME=<hf_home>                   # fresh token / cache location (cache = <hf_home>/hub)
    HF_HUB_CACHE=<hf_home>/hub, HF_XET_CACHE=<hf_home>/xet, HF_TOKEN_PATH=<hf_home>/token
    HF_HUB_DISABLE_XET=1                # uploads must use LFS: LocalHub does not speak Xet
    HF_HUB_DISABLE_TELEMETRY=1, HF_HUB_DISABLE_UPDATE_CHECK=1,
    HF_HUB_DISABLE_PROGRESS_BARS=1, HF_HUB_DISABLE_SYMLINKS_WARNING=1, HF_HUB_OFFLINE=0
    HF_TOKEN=<token>                    # only if ``token=`` is given

``apply_client_env(environ, url, hf_home, token=None)`` writes them into ``environ`` and
also removes the variables listed in ``CLIENT_ENV_UNSET`` (a stray ``HF_TOKEN``,
``TRANSFORMERS_OFFLINE``, ...). Pass ``os.environ`` for the current process or a copy of
it to build a subprocess environment. ``check_client_configured(url)`` raises a clear
error if ``huggingface_hub`` was imported before the environment was set.

Use from a conftest (the server runs in a daemon thread of the pytest process)::

    # tests/conftest.py -- at the very top, before anything imports huggingface_hub
    import os, shutil, tempfile
    import pytest
    try:
        from tests.hub_server import LocalHub, apply_client_env, check_client_configured
    except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
        from hub_server import LocalHub, apply_client_env, check_client_configured

    HUB_TOKENS = {"hf_alice_token": "alice", "hf_bob_token": "bob"}
    _HUB_TMP = tempfile.mkdtemp(prefix="localhub-")
    HUB = LocalHub(os.path.join(_HUB_TMP, "server"), tokens=HUB_TOKENS).start()
    apply_client_env(os.environ, HUB.url, os.path.join(_HUB_TMP, "hf_home"))
    # optional: add token="hf_alice_token" above to make alice the default identity

    @pytest.fixture(scope="session")
    def local_hub():
        check_client_configured(HUB.url)  # fails loudly if huggingface_hub was imported too early
        return HUB

    def pytest_unconfigure(config):
        HUB.stop()
        shutil.rmtree(_HUB_TMP, ignore_errors=True)

Then, in a test: ``HfApi(token="hf_alice_token").create_repo("alice/my-model")``,
``snapshot_download("alice/my-model")`` etc. need no ``endpoint=`` argument. Use a
unique repo name per test (the session server is shared). ``HUB.request_log`` records
every request (method, path, which server, whether an Authorization header was sent).

Client behaviour worth knowing (huggingface_hub 2.4.0):

* The client maps a bare 401 to ``RepositoryNotFoundError`` only for ``https://`` URLs,
  so LocalHub (plain http) always sends ``X-Error-Code: RepoNotFound`` for it.
* ``create_repo(exist_ok=True)`` reads ``"url"`` from the JSON body of the 409 answer.
* The LFS ``PUT`` has no ``Authorization`` header (the href is a one-time signed URL);
  it comes with a ``Content-Length``. A ``README.md`` is first POSTed to
  ``/api/validate-yaml`` (twice per ``upload_folder``).
* ``snapshot_download`` resolves the sha with ``/api/models/<id>/revision/<rev>`` and then
  lists files with ``/tree/<sha>?recursive=true`` (not ``siblings``). ``siblings`` carry
  ``size``/``lfs`` only with ``files_metadata=True`` (``?blobs=true``), as on the Hub.
* Preupload returns the remote ``oid`` of existing files (git blob sha1, or sha256 for
  LFS); the client uses it to drop unchanged files and skips an empty commit.
* ``hf_hub_download``/``snapshot_download`` fall back to the local cache on a 401/404
  ``RepoNotFound`` when the revision is cached: use a fresh ``cache_dir`` to see the error.

Not implemented: Xet, pull requests (``create_pr=True`` gives 400), gated repos,
multipart LFS transfer, pagination (lists come back in one page), Spaces runtime APIs.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "CLIENT_ENV_UNSET",
    "DEFAULT_GITATTRIBUTES",
    "LocalHub",
    "apply_client_env",
    "check_client_configured",
    "configure_client_env",
]

# --------------------------------------------------------------------------------------
# Client environment
# --------------------------------------------------------------------------------------

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
            + ". Call apply_client_env(os.environ, ...) at the top of conftest.py."
        )


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

#: The ``.gitattributes`` the Hub puts in the initial commit of a new model repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
        "*.zst", "*tfevents*",
    )
)

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def _now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _header_safe(text: str) -> str:
    return " ".join(str(text).split()).encode("latin-1", "replace").decode("latin-1")[:1000]


def _gitattributes_lfs_patterns(content: str) -> list[str]:
    patterns = []
    for line in content.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    """gitattributes/gitignore-ish matching (patterns without '/' match the basename)."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):  # directory pattern
        pattern = pattern.rstrip("/")
        return any(_matches(prefix, pattern) for prefix in _parents(path))
    if "/" in pattern or anchored:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        return "**" in pattern and fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or any(
        fnmatch.fnmatchcase(part, pattern) for part in path.split("/")[:-1]
    )


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _valid_repo_path(path: str) -> bool:
    if not path or path.startswith("/") or path.endswith("/") or "\\" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/")) and not path.startswith(".git/")


class HubError(Exception):
    """An HTTP error answer (status, message, optional ``X-Error-Code``)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # more fields for the JSON body


# --------------------------------------------------------------------------------------
# Repository state
# --------------------------------------------------------------------------------------


class _Repo:
    def __init__(self, repo_type: str, repo_id: str, private: bool, created_at: str, uid: str):
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.private = private
        self.created_at = created_at
        self.uid = uid
        # oid -> {"oid", "parents", "title", "message", "author", "date", "files": {path: entry}}
        # entry = {"sha256", "size", "lfs": bool, "oid": git oid (blob sha1 / pointer sha1)}
        self.commits: dict[str, dict] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, dict] = {}  # name -> {"oid", "message"}
        self.lfs_oids: set[str] = set()

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def to_json(self) -> dict:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "created_at": self.created_at,
            "uid": self.uid,
            "commits": self.commits,
            "branches": self.branches,
            "tags": self.tags,
            "lfs_oids": sorted(self.lfs_oids),
        }

    @classmethod
    def from_json(cls, data: dict) -> _Repo:
        repo = cls(data["repo_type"], data["repo_id"], data["private"], data["created_at"], data["uid"])
        repo.commits = data["commits"]
        repo.branches = data["branches"]
        repo.tags = data["tags"]
        repo.lfs_oids = set(data["lfs_oids"])
        return repo


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, hub: LocalHub, role: str):
        self.hub = hub
        self.role = role  # "api" or "cdn"
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self):  # skip HTTPServer's socket.getfqdn(): it may do a slow DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self):
        """Cut keep-alive connections so a stopped hub really looks down to clients."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this many seconds

    server: _Server

    def log_message(self, format, *args):  # noqa: A002
        if self.server.hub.verbose:
            sys.stderr.write("[LocalHub %s] %s\n" % (self.server.role, format % args))

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    # -- request body -------------------------------------------------------------

    def iter_body(self) -> Iterator[bytes]:
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection mid-body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, _CHUNK))
                    if not chunk:
                        raise ConnectionError("client closed the connection mid-body")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, _CHUNK))
                if not chunk:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(chunk)
                yield chunk

    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_body())
        return self._body

    def json_body(self) -> Any:
        raw = self.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from None

    # -- responses -----------------------------------------------------------------

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str | None = "application/json; charset=utf-8",
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._responded = True

    def send_json(self, obj: Any, status: int = 200, headers: dict | None = None, content_type: str | None = None):
        body = json.dumps(obj).encode()
        self.send(status, body, headers=headers, content_type=content_type or "application/json; charset=utf-8")

    def send_error_answer(self, err: HubError) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = _header_safe(err.message)
        if err.code:
            headers["X-Error-Code"] = err.code
        self.send_json({"error": err.message, **err.extra}, status=err.status, headers=headers)

    def _dispatch(self) -> None:
        self._body = None
        self._body_done = False
        self._responded = False
        hub = self.server.hub
        hub._log_request(self)
        try:
            if self.server.role == "cdn":
                hub._handle_cdn(self)
            else:
                hub._handle(self)
            if not self._responded:
                raise HubError(500, "handler sent no response")
        except HubError as err:
            self._finish_body()
            if not self._responded:
                self.send_error_answer(err)
        except (ConnectionError, BrokenPipeError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 -- a bug in the server: report it as a 500
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            if not self._responded:
                try:
                    self.send_error_answer(HubError(500, f"LocalHub internal error: {exc!r}"))
                except OSError:
                    pass
        finally:
            if not self.close_connection:
                try:
                    self._finish_body()
                except (OSError, ValueError, ConnectionError):
                    self.close_connection = True

    def _finish_body(self) -> None:
        for _ in self.iter_body():
            pass


# --------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------


class LocalHub:
    """A Hub-compatible server on ``127.0.0.1``; see the module docstring.

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
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._uploads: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._secret = secrets.token_bytes(32)
        self._counter = 0
        self._servers: list[_Server] = []
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
        api = _Server((self.host, self.port), self, "api")
        cdn = _Server((self.host, 0), self, "cdn")
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

    # -- persistence ---------------------------------------------------------------

    def _load(self) -> None:
        repos_dir = os.path.join(self.root, "repos")
        for dirpath, _dirs, files in os.walk(repos_dir):
            for name in files:
                if name.endswith(".json"):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        repo = _Repo.from_json(json.load(f))
                    self._repos[(repo.repo_type, repo.repo_id)] = repo

    def _repo_file(self, repo: _Repo) -> str:
        return os.path.join(self.root, "repos", repo.repo_type, *repo.repo_id.split("/")) + ".json"

    def _save(self, repo: _Repo) -> None:
        path = self._repo_file(repo)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(repo.to_json(), f)
        os.replace(tmp, path)

    def _blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def _store_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(self.root, "tmp", secrets.token_hex(8))
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha256

    # -- auth ----------------------------------------------------------------------

    def _user(self, req: _Handler) -> str | None:
        header = req.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write_ns(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo_for_read(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._can_write_ns(user, repo.namespace)):
            if user is None:
                raise HubError(401, "Invalid username or password.", code="RepoNotFound")
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self._repo_for_read(repo_type, repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        if not self._can_write_ns(user, repo.namespace):
            raise HubError(403, f"You don't have the rights to write to {repo_type} {repo_id}")
        return repo

    # -- revisions -----------------------------------------------------------------

    def _resolve(self, repo: _Repo, revision: str | None) -> str:
        rev = revision or "main"
        if rev.startswith("refs/heads/") and rev[len("refs/heads/") :] in repo.branches:
            return repo.branches[rev[len("refs/heads/") :]]
        if rev.startswith("refs/tags/") and rev[len("refs/tags/") :] in repo.tags:
            return repo.tags[rev[len("refs/tags/") :]]["oid"]
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]["oid"]
        if _SHA1_RE.match(rev) and rev in repo.commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")

    def _new_commit(self, repo: _Repo, parent: str | None, files: dict, title: str, message: str, author: str) -> str:
        self._counter += 1
        date = _now_iso()
        seed = json.dumps(
            [repo.repo_type, repo.repo_id, parent, sorted((p, e["oid"]) for p, e in files.items()), title, message,
             author, date, self._counter, secrets.token_hex(8)]
        ).encode()
        oid = hashlib.sha1(seed).hexdigest()
        repo.commits[oid] = {
            "oid": oid,
            "parents": [parent] if parent else [],
            "title": title,
            "message": message,
            "author": author,
            "date": date,
            "files": files,
        }
        return oid

    def _history(self, repo: _Repo, oid: str) -> list[dict]:
        out = []
        while oid:
            commit = repo.commits[oid]
            out.append(commit)
            oid = commit["parents"][0] if commit["parents"] else None
        return out

    def _last_commit_for(self, repo: _Repo, oid: str, path: str) -> dict:
        """Newest commit (first-parent chain from ``oid``) that changed ``path`` (file or dir)."""

        def view(commit):
            files = commit["files"]
            if path in files:
                return files[path]["oid"]
            return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))

        history = self._history(repo, oid)
        for commit, parent in zip(history, history[1:] + [None]):
            if parent is None or view(commit) != view(parent):
                return {"id": commit["oid"], "title": commit["title"], "date": commit["date"]}
        return {"id": oid, "title": "", "date": _now_iso()}

    # -- JSON views ----------------------------------------------------------------

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _file_json(self, repo: _Repo, commit_oid: str, path: str, entry: dict, expand: bool) -> dict:
        out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {
                "oid": entry["sha256"],
                "size": entry["size"],
                "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"])),
            }
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, commit_oid, path)
            out["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                         "pickleImportScan": None}
        return out

    def _dir_json(self, repo: _Repo, commit_oid: str, path: str, files: dict, expand: bool) -> dict:
        content = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
        out = {"type": "directory", "oid": hashlib.sha1(json.dumps(content).encode()).hexdigest(), "size": 0,
               "path": path}
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, commit_oid, path)
        return out

    def _info_json(self, repo: _Repo, commit_oid: str, blobs: bool) -> dict:
        commit = repo.commits[commit_oid]
        siblings = []
        for path in sorted(commit["files"]):
            entry = commit["files"][path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = entry["size"]
                sibling["blobId"] = entry["oid"]
                if entry["lfs"]:
                    sibling["lfs"] = {
                        "sha256": entry["sha256"],
                        "size": entry["size"],
                        "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"])),
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit_oid,
            "lastModified": commit["date"],
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit["files"].values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info.update({"sdk": "static", "subdomain": repo.repo_id.replace("/", "-")})
        return info

    # -- request log ---------------------------------------------------------------

    def _log_request(self, req: _Handler) -> None:
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

    # -- routing -------------------------------------------------------------------

    def _handle(self, req: _Handler) -> None:
        split = urlsplit(req.path)
        raw = split.path.split("/")[1:]
        if raw and raw[-1] == "" and len(raw) > 1:
            raw = raw[:-1]
        segs = [unquote(s) for s in raw]
        query = parse_qs(split.query, keep_blank_values=True)
        method = req.command

        if segs and segs[0] == "api":
            return self._handle_api(req, method, segs[1:], query)
        if len(segs) >= 2 and segs[0] == "lfs-upload":
            self._require(method, "PUT")
            return self._lfs_upload(req, segs[1])
        # git LFS endpoints: /[datasets/|spaces/]<ns>/<name>.git/info/lfs/objects/{batch,verify}
        for i, seg in enumerate(segs):
            if seg.endswith(".git") and segs[i + 1 : i + 4] == ["info", "lfs", "objects"] and len(segs) == i + 5:
                repo_type, id_segs = self._split_type(segs[:i] + [seg[:-4]])
                self._require(method, "POST")
                if segs[i + 4] == "batch":
                    return self._lfs_batch(req, repo_type, "/".join(id_segs))
                if segs[i + 4] == "verify":
                    return self._lfs_verify(req, repo_type, "/".join(id_segs))
        # /[datasets/|spaces/]<ns>/<name>/resolve/<revision>/<path...>
        repo_type, rest = self._split_type(segs)
        for i in (1, 2):
            if len(rest) > i + 2 and rest[i] == "resolve":
                self._require(method, "GET", "HEAD")
                return self._resolve_file(req, repo_type, "/".join(rest[:i]), rest[i + 1], "/".join(rest[i + 2 :]))
        raise HubError(404, f"Not found: {split.path}")

    @staticmethod
    def _split_type(segs: list[str]) -> tuple[str, list[str]]:
        if segs and segs[0] in ("datasets", "spaces") and len(segs) > 1:
            return _REPO_TYPES[segs[0]], segs[1:]
        return "model", segs

    @staticmethod
    def _require(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HubError(405, f"Method {method} not allowed here")

    def _handle_api(self, req: _Handler, method: str, segs: list[str], query: dict) -> None:
        if segs == ["whoami-v2"]:
            self._require(method, "GET")
            return self._whoami(req)
        if segs == ["repos", "create"]:
            self._require(method, "POST")
            return self._create_repo(req)
        if segs == ["repos", "delete"]:
            self._require(method, "DELETE")
            return self._delete_repo(req)
        if segs == ["validate-yaml"]:
            self._require(method, "POST")
            req.body()
            return req.send_json({"errors": [], "warnings": []})
        if segs and segs[0] in _REPO_TYPES and len(segs) >= 2:
            repo_type = _REPO_TYPES[segs[0]]
            rest = segs[1:]
            # repo ids are "<namespace>/<name>"; a single segment is a legacy id (never created here)
            n = 2 if len(rest) >= 2 else 1
            repo_id, action, args = "/".join(rest[:n]), (rest[n] if len(rest) > n else None), rest[n + 1 :]
            return self._handle_repo_api(req, method, repo_type, repo_id, action, args, query)
        raise HubError(404, f"Not found: /api/{'/'.join(segs)}")

    def _handle_repo_api(self, req, method, repo_type, repo_id, action, args, query) -> None:
        user = self._user(req)
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            req.body()  # read the request body before taking the state lock
        flag = lambda name: query.get(name, [""])[-1].lower() in ("1", "true")  # noqa: E731
        with self._lock:
            if action is None or (action == "revision" and len(args) == 1):
                self._require(method, "GET", "HEAD")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0] if args else None)
                return req.send_json(self._info_json(repo, oid, blobs=flag("blobs")))
            if action == "tree" and args:
                self._require(method, "GET")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0])
                return req.send_json(self._tree(repo, oid, "/".join(args[1:]), flag("recursive"), flag("expand")))
            if action == "paths-info" and len(args) == 1:
                self._require(method, "POST")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0])
                return req.send_json(self._paths_info(req, repo, oid))
            if action == "refs" and not args:
                self._require(method, "GET")
                repo = self._repo_for_read(repo_type, repo_id, user)
                return req.send_json(self._refs(repo))
            if action == "commits" and len(args) == 1:
                self._require(method, "GET")
                repo = self._repo_for_read(repo_type, repo_id, user)
                history = self._history(repo, self._resolve(repo, args[0]))
                return req.send_json(
                    [
                        {"id": c["oid"], "title": c["title"], "message": c["message"],
                         "authors": [{"user": c["author"]}], "date": c["date"]}
                        for c in history
                    ]
                )
            if action == "preupload" and len(args) == 1:
                self._require(method, "POST")
                repo = self._repo_for_write(repo_type, repo_id, user)
                if flag("create_pr"):
                    raise HubError(400, "LocalHub does not support pull requests (create_pr)")
                return req.send_json(self._preupload(req, repo, args[0]))
            if action == "commit" and len(args) == 1:
                self._require(method, "POST")
                repo = self._repo_for_write(repo_type, repo_id, user)
                if flag("create_pr"):
                    raise HubError(400, "LocalHub does not support pull requests (create_pr)")
                return req.send_json(self._commit(req, repo, args[0], user))
            if action == "branch" and len(args) == 1:
                self._require(method, "POST", "DELETE")
                repo = self._repo_for_write(repo_type, repo_id, user)
                return self._branch(req, repo, args[0])
            if action == "tag" and len(args) == 1:
                self._require(method, "POST", "DELETE")
                repo = self._repo_for_write(repo_type, repo_id, user)
                return self._tag(req, repo, args[0])
            if action == "settings" and not args:
                self._require(method, "PUT")
                repo = self._repo_for_write(repo_type, repo_id, user)
                payload = req.json_body()
                if "private" in payload:
                    repo.private = bool(payload["private"])
                if payload.get("visibility") in ("private", "public"):
                    repo.private = payload["visibility"] == "private"
                self._save(repo)
                return req.send_json({"private": repo.private})
        raise HubError(404, f"Not found: {req.path}")

    # -- API endpoints -------------------------------------------------------------

    def _whoami(self, req: _Handler) -> None:
        user = self._user(req)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        orgs = [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
                for org, members in sorted(self.orgs.items()) if user in members]
        req.send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": f"{user}@localhub.invalid",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write",
                                                                  "createdAt": "2024-01-01T00:00:00.000Z"}},
            }
        )

    def _create_repo(self, req: _Handler) -> None:
        user = self._user(req)
        payload = req.json_body()
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or user
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace) or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        if not self._can_write_ns(user, namespace):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        repo_id = f"{namespace}/{name}"
        if payload.get("visibility") in ("private", "public"):
            private = payload["visibility"] == "private"
        else:
            private = bool(payload.get("private", False))
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                # the client reads "url" from this 409 body when create_repo(exist_ok=True)
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}",
                               extra={"url": self._repo_url(existing)})
            repo = _Repo(repo_type, repo_id, private, _now_iso(), secrets.token_hex(12))
            files = {}
            if self.initial_gitattributes:
                data = DEFAULT_GITATTRIBUTES.encode()
                files[".gitattributes"] = {"sha256": self._store_bytes(data), "size": len(data), "lfs": False,
                                           "oid": _git_blob_sha1(data)}
            repo.branches["main"] = self._new_commit(repo, None, files, "initial commit", "", user)
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            req.send_json({"url": self._repo_url(repo), "name": repo_id, "id": repo.uid})

    def _delete_repo(self, req: _Handler) -> None:
        user = self._user(req)
        payload = req.json_body()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user or ""
        repo_id = f"{namespace}/{payload.get('name') or ''}"
        with self._lock:
            repo = self._repo_for_write(repo_type, repo_id, user)
            del self._repos[(repo.repo_type, repo.repo_id)]
            try:
                os.remove(self._repo_file(repo))
            except FileNotFoundError:
                pass
        req.send_json({})

    def _tree(self, repo: _Repo, oid: str, path: str, recursive: bool, expand: bool) -> list[dict]:
        files = repo.commits[oid]["files"]
        base = path.strip("/")
        if base and (base in files or not any(p.startswith(base + "/") for p in files)):
            raise HubError(404, f"{base} does not exist on {oid}", code="EntryNotFound",
                           headers={"X-Repo-Commit": oid})
        prefix = base + "/" if base else ""
        dirs: set[str] = set()
        entries = []
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._file_json(repo, oid, p, files[p], expand))
        entries.extend(self._dir_json(repo, oid, d, files, expand) for d in sorted(dirs))
        return sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))

    def _paths_info(self, req: _Handler, repo: _Repo, oid: str) -> list[dict]:
        ctype = req.headers.get("Content-Type", "")
        if "json" in ctype:
            payload = req.json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand", False))
        else:
            form = parse_qs(req.body().decode("utf-8"), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        files = repo.commits[oid]["files"]
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._file_json(repo, oid, path, files[path], expand))
            elif path and any(p.startswith(path + "/") for p in files):
                out.append(self._dir_json(repo, oid, path, files, expand))
        return out

    def _refs(self, repo: _Repo) -> dict:
        return {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in sorted(repo.branches.items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["oid"]} for t, v in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [],
        }

    def _lfs_patterns(self, repo: _Repo, oid: str) -> list[str]:
        entry = repo.commits[oid]["files"].get(".gitattributes")
        if entry is None:
            return []
        with open(self._blob_path(entry["sha256"]), "rb") as f:
            return _gitattributes_lfs_patterns(f.read().decode("utf-8", "replace"))

    def _gitignore(self, repo: _Repo, oid: str) -> list[str]:
        entry = repo.commits[oid]["files"].get(".gitignore")
        if entry is None:
            return []
        with open(self._blob_path(entry["sha256"]), "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    def _preupload(self, req: _Handler, repo: _Repo, revision: str) -> dict:
        payload = req.json_body()
        oid = self._resolve(repo, revision)
        files = repo.commits[oid]["files"]
        patterns = self._lfs_patterns(repo, oid)
        ignore = payload.get("gitIgnore")
        ignore_lines = ignore.splitlines() if isinstance(ignore, str) else self._gitignore(repo, oid)
        ignore_patterns = [l.strip() for l in ignore_lines if l.strip() and not l.strip().startswith("#")]
        out = []
        for f in payload.get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            try:
                sample = base64.b64decode(f.get("sample", ""))
            except ValueError:
                sample = b""
            lfs = size >= self.lfs_threshold or b"\0" in sample or any(_matches(path, p) for p in patterns)
            should_ignore = any(_matches(path, p) for p in ignore_patterns if not p.startswith("!"))
            item: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                    "shouldIgnore": should_ignore}
            existing = files.get(path)
            if existing is not None:
                item["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
            out.append(item)
        return {"files": out, "commitOid": oid}

    def _commit(self, req: _Handler, repo: _Repo, revision: str, user: str) -> dict:
        branch = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
        if branch not in repo.branches:
            if revision in repo.tags or revision in repo.commits:
                raise HubError(400, f"Invalid rev id: {revision} is not a branch; commits must target a branch")
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        head = repo.branches[branch]
        lines = [json.loads(line) for line in req.body().splitlines() if line.strip()]
        header = next((l["value"] for l in lines if l.get("key") == "header"), None)
        if header is None:
            raise HubError(400, "Missing header in commit payload")
        parent = header.get("parentCommit")
        if parent and parent != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head]["files"])
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            if key == "header":
                continue
            path = value.get("path", "")
            if key in ("file", "lfsFile", "deletedFile") and not _valid_repo_path(path):
                raise HubError(400, f"Invalid path: {path!r}")
            if key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = {"sha256": self._store_bytes(data), "size": len(data), "lfs": False,
                               "oid": _git_blob_sha1(data)}
            elif key == "lfsFile":
                sha256 = value.get("oid", "")
                if value.get("algo", "sha256") != "sha256" or not _SHA256_RE.match(sha256):
                    raise HubError(400, f"Invalid LFS oid for {path}")
                blob = self._blob_path(sha256)
                if sha256 not in repo.lfs_oids or not os.path.exists(blob):
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                        f"does not exist ({path}: {sha256})")
                size = os.path.getsize(blob)
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubError(422, f"LFS object size mismatch for {path}")
                files[path] = {"sha256": sha256, "size": size, "lfs": True,
                               "oid": _git_blob_sha1(_lfs_pointer(sha256, size))}
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.strip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)] if prefix != "/" else list(files)
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")
        oid = self._new_commit(repo, head, files, header.get("summary") or "", header.get("description") or "", user)
        repo.branches[branch] = oid
        self._save(repo)
        return {"success": True, "commitOid": oid, "commitUrl": f"{self._repo_url(repo)}/commit/{oid}",
                "hookOutput": ""}

    def _branch(self, req: _Handler, repo: _Repo, branch: str) -> None:
        if req.command == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
        else:
            payload = req.json_body()
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if not branch or branch.startswith("refs/") or _SHA1_RE.match(branch):
                raise HubError(400, f"Invalid branch name: {branch}")
            repo.branches[branch] = self._resolve(repo, payload.get("startingPoint"))
        self._save(repo)
        req.send_json({})

    def _tag(self, req: _Handler, repo: _Repo, arg: str) -> None:
        if req.command == "DELETE":
            if arg not in repo.tags:
                raise HubError(404, f"Invalid rev id: {arg}", code="RevisionNotFound")
            del repo.tags[arg]
        else:  # POST /tag/<revision> {"tag": name, "message": ...}
            payload = req.json_body()
            tag = payload.get("tag") or ""
            if not tag or tag.startswith("refs/"):
                raise HubError(400, f"Invalid tag name: {tag!r}")
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            repo.tags[tag] = {"oid": self._resolve(repo, arg), "message": payload.get("message") or ""}
        self._save(repo)
        req.send_json({})

    # -- LFS -------------------------------------------------------------------------

    def _sign(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def _cdn_href(self, sha256: str, filename: str | None = None) -> str:
        url = f"{self.cdn_url}/lfs-cdn/{sha256}?sig={self._sign(sha256)}"
        if filename:
            url += "&filename=" + quote(filename, safe="")
        return url

    def _lfs_batch(self, req: _Handler, repo_type: str, repo_id: str) -> None:
        user = self._user(req)
        payload = req.json_body()
        operation = payload.get("operation")
        with self._lock:
            if operation == "upload":
                repo = self._repo_for_write(repo_type, repo_id, user)
            elif operation == "download":
                repo = self._repo_for_read(repo_type, repo_id, user)
            else:
                raise HubError(400, f"Unknown LFS operation: {operation!r}")
            objects = []
            for obj in payload.get("objects", []):
                sha256, size = str(obj.get("oid", "")), obj.get("size")
                out: dict[str, Any] = {"oid": sha256, "size": size if isinstance(size, int) else 0}
                if not _SHA256_RE.match(sha256) or not isinstance(size, int) or size < 0:
                    out["error"] = {"code": 422, "message": "Invalid object (oid must be a sha256, size an int)"}
                elif operation == "upload":
                    if sha256 in repo.lfs_oids and os.path.exists(self._blob_path(sha256)):
                        pass  # already there: no actions
                    else:
                        token = secrets.token_urlsafe(24)
                        self._uploads[token] = ((repo.repo_type, repo.repo_id), sha256, size)
                        out["authenticated"] = True
                        out["actions"] = {
                            "upload": {"href": f"{self.url}/lfs-upload/{token}", "expires_in": 3600},
                            "verify": {"href": f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}.git"
                                               "/info/lfs/objects/verify"},
                        }
                else:
                    if sha256 in repo.lfs_oids and os.path.exists(self._blob_path(sha256)):
                        out["authenticated"] = True
                        out["actions"] = {"download": {"href": self._cdn_href(sha256), "expires_in": 3600}}
                    else:
                        out["error"] = {"code": 404, "message": "Object does not exist"}
                objects.append(out)
        req.send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                      content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, req: _Handler, token: str) -> None:
        with self._lock:
            ticket = self._uploads.get(token)
        if ticket is None:
            raise HubError(403, "Invalid or expired upload URL")
        repo_key, sha256, size = ticket
        tmp = os.path.join(self.root, "tmp", secrets.token_hex(8))
        digest, received = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in req.iter_body():
                    digest.update(chunk)
                    received += len(chunk)
                    f.write(chunk)
            if received != size or digest.hexdigest() != sha256:
                raise HubError(400, f"Uploaded content does not match the LFS object (expected sha256 {sha256}, "
                                    f"size {size}; got {digest.hexdigest()}, {received})")
            path = self._blob_path(sha256)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        with self._lock:
            self._uploads.pop(token, None)
            repo = self._repos.get(repo_key)
            if repo is not None:
                repo.lfs_oids.add(sha256)
                self._save(repo)
        req.send(200, b"", headers={"ETag": f'"{sha256}"'}, content_type=None)

    def _lfs_verify(self, req: _Handler, repo_type: str, repo_id: str) -> None:
        user = self._user(req)
        payload = req.json_body()
        with self._lock:
            repo = self._repo_for_write(repo_type, repo_id, user)
            sha256 = payload.get("oid", "")
            blob = self._blob_path(sha256) if _SHA256_RE.match(str(sha256)) else None
            if blob is None or sha256 not in repo.lfs_oids or not os.path.exists(blob):
                raise HubError(404, f"LFS object {sha256} not found")
            if payload.get("size") is not None and os.path.getsize(blob) != int(payload["size"]):
                raise HubError(422, f"LFS object {sha256} has a different size")
        req.send_json({"message": "Verified"}, content_type="application/vnd.git-lfs+json")

    # -- downloads -------------------------------------------------------------------

    def _resolve_file(self, req: _Handler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        user = self._user(req)
        with self._lock:
            repo = self._repo_for_read(repo_type, repo_id, user)
            oid = self._resolve(repo, revision)
            entry = repo.commits[oid]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": oid})
        filename = path.rsplit("/", 1)[-1]
        headers = {
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{_header_safe(filename)}\"",
            "Access-Control-Expose-Headers": "X-Repo-Commit,X-Linked-Etag,X-Linked-Size,ETag,X-Error-Code",
        }
        if entry["lfs"]:
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(entry["size"])
            headers["ETag"] = f'"{entry["sha256"]}"'
            if self.lfs_redirect:
                location = self._cdn_href(entry["sha256"], filename)
                headers["Location"] = location
                body = f"Found. Redirecting to {location}".encode()
                return req.send(302, body, headers=headers, content_type="text/plain; charset=utf-8")
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        self._serve_blob(req, entry["sha256"], entry["size"], headers)

    def _handle_cdn(self, req: _Handler) -> None:
        split = urlsplit(req.path)
        segs = split.path.split("/")[1:]
        query = parse_qs(split.query)
        if len(segs) != 2 or segs[0] != "lfs-cdn" or not _SHA256_RE.match(segs[1]):
            raise HubError(404, "Not found")
        self._require(req.command, "GET", "HEAD")
        sha256 = segs[1]
        if not hmac.compare_digest(query.get("sig", [""])[0], self._sign(sha256)):
            raise HubError(403, "Invalid signature")
        path = self._blob_path(sha256)
        if not os.path.exists(path):
            raise HubError(404, "Not found")
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        if "filename" in query:
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(query['filename'][0])}"
        self._serve_blob(req, sha256, os.path.getsize(path), headers)

    def _serve_blob(self, req: _Handler, sha256: str, size: int, headers: dict) -> None:
        start, end, status = 0, size - 1, 200
        range_header = req.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: last N bytes
                    start = max(size - int(m.group(2)), 0)
                if start >= size or start > end:
                    headers = dict(headers, **{"Content-Range": f"bytes */{size}"})
                    return req.send(416, b"", headers=headers, content_type=None)
                status = 206
                headers = dict(headers, **{"Content-Range": f"bytes {start}-{end}/{size}"})
        length = max(end - start + 1, 0)
        req.send(status, b"", headers=headers, content_type="application/octet-stream", content_length=length)
        if req.command == "HEAD" or length == 0:
            return
        with open(self._blob_path(sha256), "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                chunk = f.read(min(remaining, _CHUNK))
                if not chunk:
                    break
                req.wfile.write(chunk)
                remaining -= len(chunk)


def _main() -> None:  # pragma: no cover - manual use: python tests/hub_server.py [root] [token=user ...]
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
