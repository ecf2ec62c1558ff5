"""LocalHub LFS: batch API, one-time upload URLs, verify, and downloads through a "CDN".

LFS files are uploaded by the client through the batch API to a one-time upload URL on this
server. When downloaded, ``/resolve`` answers them, as the Hub does, with a 302 to a signed URL on a
second port (the "CDN"; another origin, so the client drops its ``Authorization`` header) plus
``X-Linked-Etag`` (sha256) / ``X-Linked-Size``. Regular files are served directly with the git
blob sha1 as ``ETag``. Byte ranges are honoured.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from .storage import CHUNK, SHA256_RE, URL_PREFIX, HubError, header_safe, require_method

if TYPE_CHECKING:
    from .handler import RequestHandler


class LfsMixin:
    """LFS batch / upload / verify, ``/resolve`` downloads and the CDN origin."""

    def _sign(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def _cdn_href(self, sha256: str, filename: str | None = None) -> str:
        url = f"{self.cdn_url}/lfs-cdn/{sha256}?sig={self._sign(sha256)}"
        if filename:
            url += "&filename=" + quote(filename, safe="")
        return url

    def _lfs_batch(self, req: RequestHandler, repo_type: str, repo_id: str) -> None:
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
                if not SHA256_RE.match(sha256) or not isinstance(size, int) or size < 0:
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
                            "verify": {"href": f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}.git"
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

    def _lfs_upload(self, req: RequestHandler, token: str) -> None:
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

    def _lfs_verify(self, req: RequestHandler, repo_type: str, repo_id: str) -> None:
        user = self._user(req)
        payload = req.json_body()
        with self._lock:
            repo = self._repo_for_write(repo_type, repo_id, user)
            sha256 = payload.get("oid", "")
            blob = self._blob_path(sha256) if SHA256_RE.match(str(sha256)) else None
            if blob is None or sha256 not in repo.lfs_oids or not os.path.exists(blob):
                raise HubError(404, f"LFS object {sha256} not found")
            if payload.get("size") is not None and os.path.getsize(blob) != int(payload["size"]):
                raise HubError(422, f"LFS object {sha256} has a different size")
        req.send_json({"message": "Verified"}, content_type="application/vnd.git-lfs+json")

    # -- downloads -------------------------------------------------------------------

    def _resolve_file(self, req: RequestHandler, repo_type: str, repo_id: str, revision: str, path: str) -> None:
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
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{header_safe(filename)}\"",
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

    def _handle_cdn(self, req: RequestHandler) -> None:
        split = urlsplit(req.path)
        segs = split.path.split("/")[1:]
        query = parse_qs(split.query)
        if len(segs) != 2 or segs[0] != "lfs-cdn" or not SHA256_RE.match(segs[1]):
            raise HubError(404, "Not found")
        require_method(req.command, "GET", "HEAD")
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

    def _serve_blob(self, req: RequestHandler, sha256: str, size: int, headers: dict) -> None:
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
                chunk = f.read(min(remaining, CHUNK))
                if not chunk:
                    break
                req.wfile.write(chunk)
                remaining -= len(chunk)
