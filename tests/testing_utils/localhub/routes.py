"""LocalHub routing: from method and path to the endpoint, plus the repo-level endpoints.

Paths served: ``/api/whoami-v2``, ``/api/repos/{create,delete}``, ``/api/validate-yaml``,
``/api/{models,datasets,spaces}/<id>[/revision/<rev>|/tree/<rev>/<path>|/paths-info/<rev>|/refs|
/commits/<rev>|/preupload/<rev>|/commit/<rev>|/branch/<name>|/tag/<rev>|/settings]``, the git LFS
``<id>.git/info/lfs/objects/{batch,verify}``, ``/lfs-upload/<token>`` and
``<id>/resolve/<rev>/<path>``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from .storage import (
    DEFAULT_GITATTRIBUTES, NAME_RE, REPO_TYPES, URL_PREFIX, HubError, Repo, git_blob_sha1, now_iso, require_method,
)

if TYPE_CHECKING:
    from .handler import RequestHandler


class RoutesMixin:
    """Dispatch of the API server's requests, and the whoami / create / delete endpoints."""

    def _handle(self, req: RequestHandler) -> None:
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
            require_method(method, "PUT")
            return self._lfs_upload(req, segs[1])
        # git LFS endpoints: /[datasets/|spaces/]<ns>/<name>.git/info/lfs/objects/{batch,verify}
        for i, seg in enumerate(segs):
            if seg.endswith(".git") and segs[i + 1 : i + 4] == ["info", "lfs", "objects"] and len(segs) == i + 5:
                repo_type, id_segs = self._split_type(segs[:i] + [seg[:-4]])
                require_method(method, "POST")
                if segs[i + 4] == "batch":
                    return self._lfs_batch(req, repo_type, "/".join(id_segs))
                if segs[i + 4] == "verify":
                    return self._lfs_verify(req, repo_type, "/".join(id_segs))
        # /[datasets/|spaces/]<ns>/<name>/resolve/<revision>/<path...>
        repo_type, rest = self._split_type(segs)
        for i in (1, 2):
            if len(rest) > i + 2 and rest[i] == "resolve":
                require_method(method, "GET", "HEAD")
                return self._resolve_file(req, repo_type, "/".join(rest[:i]), rest[i + 1], "/".join(rest[i + 2 :]))
        raise HubError(404, f"Not found: {split.path}")

    @staticmethod
    def _split_type(segs: list[str]) -> tuple[str, list[str]]:
        if segs and segs[0] in ("datasets", "spaces") and len(segs) > 1:
            return REPO_TYPES[segs[0]], segs[1:]
        return "model", segs

    def _handle_api(self, req: RequestHandler, method: str, segs: list[str], query: dict) -> None:
        if segs == ["whoami-v2"]:
            require_method(method, "GET")
            return self._whoami(req)
        if segs == ["repos", "create"]:
            require_method(method, "POST")
            return self._create_repo(req)
        if segs == ["repos", "delete"]:
            require_method(method, "DELETE")
            return self._delete_repo(req)
        if segs == ["validate-yaml"]:
            require_method(method, "POST")
            req.body()
            return req.send_json({"errors": [], "warnings": []})
        if segs and segs[0] in REPO_TYPES and len(segs) >= 2:
            repo_type = REPO_TYPES[segs[0]]
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
                require_method(method, "GET", "HEAD")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0] if args else None)
                return req.send_json(self._info_json(repo, oid, blobs=flag("blobs")))
            if action == "tree" and args:
                require_method(method, "GET")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0])
                return req.send_json(self._tree(repo, oid, "/".join(args[1:]), flag("recursive"), flag("expand")))
            if action == "paths-info" and len(args) == 1:
                require_method(method, "POST")
                repo = self._repo_for_read(repo_type, repo_id, user)
                oid = self._resolve(repo, args[0])
                return req.send_json(self._paths_info(req, repo, oid))
            if action == "refs" and not args:
                require_method(method, "GET")
                repo = self._repo_for_read(repo_type, repo_id, user)
                return req.send_json(self._refs(repo))
            if action == "commits" and len(args) == 1:
                require_method(method, "GET")
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
                require_method(method, "POST")
                repo = self._repo_for_write(repo_type, repo_id, user)
                if flag("create_pr"):
                    raise HubError(400, "LocalHub does not support pull requests (create_pr)")
                return req.send_json(self._preupload(req, repo, args[0]))
            if action == "commit" and len(args) == 1:
                require_method(method, "POST")
                repo = self._repo_for_write(repo_type, repo_id, user)
                if flag("create_pr"):
                    raise HubError(400, "LocalHub does not support pull requests (create_pr)")
                return req.send_json(self._commit(req, repo, args[0], user))
            if action == "branch" and len(args) == 1:
                require_method(method, "POST", "DELETE")
                repo = self._repo_for_write(repo_type, repo_id, user)
                return self._branch(req, repo, args[0])
            if action == "tag" and len(args) == 1:
                require_method(method, "POST", "DELETE")
                repo = self._repo_for_write(repo_type, repo_id, user)
                return self._tag(req, repo, args[0])
            if action == "settings" and not args:
                require_method(method, "PUT")
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

    def _whoami(self, req: RequestHandler) -> None:
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

    def _create_repo(self, req: RequestHandler) -> None:
        user = self._user(req)
        payload = req.json_body()
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or user
        if not NAME_RE.match(name) or not NAME_RE.match(namespace) or name.endswith(".git"):
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
            repo = Repo(repo_type, repo_id, private, now_iso(), secrets.token_hex(12))
            files = {}
            if self.initial_gitattributes:
                data = DEFAULT_GITATTRIBUTES.encode()
                files[".gitattributes"] = {"sha256": self._store_bytes(data), "size": len(data), "lfs": False,
                                           "oid": git_blob_sha1(data)}
            repo.branches["main"] = self._new_commit(repo, None, files, "initial commit", "", user)
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            req.send_json({"url": self._repo_url(repo), "name": repo_id, "id": repo.uid})

    def _delete_repo(self, req: RequestHandler) -> None:
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
