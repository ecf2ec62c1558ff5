"""LocalHub writes: preupload (regular or LFS), NDJSON commits, branches and tags.

A file goes through LFS (decided at preupload) when its size is at least ``lfs_threshold``, a NUL
byte is in its first 512 bytes, or a ``filter=lfs`` pattern of the repo's ``.gitattributes``
(e.g. ``*.safetensors``) matches it. Branches and tags are written only by the server's own tests
(``create_branch``, ``create_tag``); the client reads refs internally.
"""

from __future__ import annotations

import base64
import json
import os
from typing import TYPE_CHECKING, Any

from .storage import (
    SHA1_RE, SHA256_RE, HubError, Repo, git_blob_sha1, gitattributes_lfs_patterns, lfs_pointer, matches_pattern,
    valid_repo_path,
)

if TYPE_CHECKING:
    from .handler import RequestHandler


class CommitsMixin:
    """Preupload, commit, branch and tag endpoints."""

    def _lfs_patterns(self, repo: Repo, oid: str) -> list[str]:
        entry = repo.commits[oid]["files"].get(".gitattributes")
        if entry is None:
            return []
        with open(self._blob_path(entry["sha256"]), "rb") as f:
            return gitattributes_lfs_patterns(f.read().decode("utf-8", "replace"))

    def _gitignore(self, repo: Repo, oid: str) -> list[str]:
        entry = repo.commits[oid]["files"].get(".gitignore")
        if entry is None:
            return []
        with open(self._blob_path(entry["sha256"]), "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()

    def _preupload(self, req: RequestHandler, repo: Repo, revision: str) -> dict:
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
            lfs = size >= self.lfs_threshold or b"\0" in sample or any(matches_pattern(path, p) for p in patterns)
            should_ignore = any(matches_pattern(path, p) for p in ignore_patterns if not p.startswith("!"))
            item: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                    "shouldIgnore": should_ignore}
            existing = files.get(path)
            if existing is not None:
                item["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
            out.append(item)
        return {"files": out, "commitOid": oid}

    def _commit(self, req: RequestHandler, repo: Repo, revision: str, user: str) -> dict:
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
            if key in ("file", "lfsFile", "deletedFile") and not valid_repo_path(path):
                raise HubError(400, f"Invalid path: {path!r}")
            if key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = {"sha256": self._store_bytes(data), "size": len(data), "lfs": False,
                               "oid": git_blob_sha1(data)}
            elif key == "lfsFile":
                sha256 = value.get("oid", "")
                if value.get("algo", "sha256") != "sha256" or not SHA256_RE.match(sha256):
                    raise HubError(400, f"Invalid LFS oid for {path}")
                blob = self._blob_path(sha256)
                if sha256 not in repo.lfs_oids or not os.path.exists(blob):
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                        f"does not exist ({path}: {sha256})")
                size = os.path.getsize(blob)
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubError(422, f"LFS object size mismatch for {path}")
                files[path] = {"sha256": sha256, "size": size, "lfs": True,
                               "oid": git_blob_sha1(lfs_pointer(sha256, size))}
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

    def _branch(self, req: RequestHandler, repo: Repo, branch: str) -> None:
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
            if not branch or branch.startswith("refs/") or SHA1_RE.match(branch):
                raise HubError(400, f"Invalid branch name: {branch}")
            repo.branches[branch] = self._resolve(repo, payload.get("startingPoint"))
        self._save(repo)
        req.send_json({})

    def _tag(self, req: RequestHandler, repo: Repo, arg: str) -> None:
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
