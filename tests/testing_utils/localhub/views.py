"""LocalHub JSON views: repo info, file and directory entries, trees, paths-info and refs."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .storage import URL_PREFIX, HubError, Repo, lfs_pointer

if TYPE_CHECKING:
    from .handler import RequestHandler


class ViewsMixin:
    """The JSON bodies of the read endpoints, as the Hub shapes them."""

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _file_json(self, repo: Repo, commit_oid: str, path: str, entry: dict, expand: bool) -> dict:
        out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {
                "oid": entry["sha256"],
                "size": entry["size"],
                "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"])),
            }
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, commit_oid, path)
            out["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                         "pickleImportScan": None}
        return out

    def _dir_json(self, repo: Repo, commit_oid: str, path: str, files: dict, expand: bool) -> dict:
        content = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
        out = {"type": "directory", "oid": hashlib.sha1(json.dumps(content).encode()).hexdigest(), "size": 0,
               "path": path}
        if expand:
            out["lastCommit"] = self._last_commit_for(repo, commit_oid, path)
        return out

    def _info_json(self, repo: Repo, commit_oid: str, blobs: bool) -> dict:
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
                        "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"])),
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

    def _tree(self, repo: Repo, oid: str, path: str, recursive: bool, expand: bool) -> list[dict]:
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

    def _paths_info(self, req: RequestHandler, repo: Repo, oid: str) -> list[dict]:
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

    def _refs(self, repo: Repo) -> dict:
        return {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in sorted(repo.branches.items())],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["oid"]} for t, v in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [],
        }
