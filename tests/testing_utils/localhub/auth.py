"""LocalHub authentication: bearer tokens, namespaces and organisations.

``tokens`` maps ``token -> username``. A user may write to repos in their own namespace and in the
organisations ``orgs`` lists them in. Public repos are readable without a token; private ones only
by users who may write to their namespace. As on the Hub, an unreadable or missing repo gives
``401`` + ``X-Error-Code: RepoNotFound`` without a token and ``404`` + ``RepoNotFound`` with one; an
unknown token gives ``401 Invalid credentials in Authorization header`` on every request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage import HubError, Repo

if TYPE_CHECKING:
    from .handler import RequestHandler


class AuthMixin:
    """Who is asking, and may they read or write (``tokens``, ``orgs``, ``_repos``)."""

    def _user(self, req: RequestHandler) -> str | None:
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

    def _repo_for_read(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._can_write_ns(user, repo.namespace)):
            if user is None:
                raise HubError(401, "Invalid username or password.", code="RepoNotFound")
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self._repo_for_read(repo_type, repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        if not self._can_write_ns(user, repo.namespace):
            raise HubError(403, f"You don't have the rights to write to {repo_type} {repo_id}")
        return repo
