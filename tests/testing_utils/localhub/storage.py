"""LocalHub storage: repos, commits and content-addressed blobs on disk.

Blobs are files under ``<root>/blobs`` named by their sha256; every repo is a JSON file under
``<root>/repos`` holding its whole history (each commit an immutable snapshot ``path -> blob``), its
branches (``main`` always exists) and tags.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import secrets
from datetime import datetime, timezone


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

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def header_safe(text: str) -> str:
    return " ".join(str(text).split()).encode("latin-1", "replace").decode("latin-1")[:1000]


def gitattributes_lfs_patterns(content: str) -> list[str]:
    patterns = []
    for line in content.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def matches_pattern(path: str, pattern: str) -> bool:
    """gitattributes/gitignore-ish matching (patterns without '/' match the basename)."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):  # directory pattern
        pattern = pattern.rstrip("/")
        return any(matches_pattern(prefix, pattern) for prefix in parent_dirs(path))
    if "/" in pattern or anchored:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        return "**" in pattern and fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or any(
        fnmatch.fnmatchcase(part, pattern) for part in path.split("/")[:-1]
    )


def parent_dirs(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def valid_repo_path(path: str) -> bool:
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


def require_method(method: str, *allowed: str) -> None:
    """Raises a 405 unless ``method`` is one of ``allowed``."""
    if method not in allowed:
        raise HubError(405, f"Method {method} not allowed here")


class Repo:
    """One repo's whole history: commits (immutable snapshots), branches, tags, LFS objects."""

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
    def from_json(cls, data: dict) -> Repo:
        repo = cls(data["repo_type"], data["repo_id"], data["private"], data["created_at"], data["uid"])
        repo.commits = data["commits"]
        repo.branches = data["branches"]
        repo.tags = data["tags"]
        repo.lfs_oids = set(data["lfs_oids"])
        return repo


class StorageMixin:
    """Persistence, blobs and revisions of :class:`~.server.LocalHub` (``root``, ``_repos``)."""

    # -- persistence ---------------------------------------------------------------

    def _load(self) -> None:
        repos_dir = os.path.join(self.root, "repos")
        for dirpath, _dirs, files in os.walk(repos_dir):
            for name in files:
                if name.endswith(".json"):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        repo = Repo.from_json(json.load(f))
                    self._repos[(repo.repo_type, repo.repo_id)] = repo

    def _repo_file(self, repo: Repo) -> str:
        return os.path.join(self.root, "repos", repo.repo_type, *repo.repo_id.split("/")) + ".json"

    def _save(self, repo: Repo) -> None:
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

    # -- revisions -----------------------------------------------------------------

    def _resolve(self, repo: Repo, revision: str | None) -> str:
        rev = revision or "main"
        if rev.startswith("refs/heads/") and rev[len("refs/heads/") :] in repo.branches:
            return repo.branches[rev[len("refs/heads/") :]]
        if rev.startswith("refs/tags/") and rev[len("refs/tags/") :] in repo.tags:
            return repo.tags[rev[len("refs/tags/") :]]["oid"]
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]["oid"]
        if SHA1_RE.match(rev) and rev in repo.commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: str | None, files: dict, title: str, message: str, author: str) -> str:
        self._counter += 1
        date = now_iso()
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

    def _history(self, repo: Repo, oid: str) -> list[dict]:
        out = []
        while oid:
            commit = repo.commits[oid]
            out.append(commit)
            oid = commit["parents"][0] if commit["parents"] else None
        return out

    def _last_commit_for(self, repo: Repo, oid: str, path: str) -> dict:
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
        return {"id": oid, "title": "", "date": now_iso()}
