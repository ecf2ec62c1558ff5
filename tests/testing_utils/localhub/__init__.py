"""A local, Hub-compatible HTTP server for the test suite (standard library only).

``LocalHub`` speaks enough of the Hugging Face Hub HTTP API for the *real* ``huggingface_hub``
client (written against 2.4.0) to push and pull model repos over HTTP: ``create_repo``,
``upload_folder`` / ``upload_file`` / ``create_commit`` (preupload, LFS batch + basic transfer,
NDJSON commit), ``hf_hub_download``, ``snapshot_download``, ``model_info`` / ``repo_info``,
``list_repo_tree`` / ``list_repo_files``, ``list_repo_refs``, ``list_repo_commits``, branches,
tags, ``delete_repo``, ``whoami``. Errors carry the ``X-Error-Code`` headers the client maps to
``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``EntryNotFoundError``.

One module per concern:

- ``storage``: repos, commits and content-addressed blobs on disk; revisions. A new repo gets an
  initial commit holding the Hub's default ``.gitattributes``, as on the real Hub
  (``initial_gitattributes=False`` to start with an empty commit instead).
- ``auth``: bearer tokens, namespaces, organisations, private repos.
- ``routes``: method + path -> endpoint; whoami, create and delete.
- ``views``: repo info, trees, paths-info and refs as JSON.
- ``commits``: preupload, NDJSON commits, branches and tags.
- ``lfs``: LFS batch / upload / verify and downloads through a second-origin "CDN".
- ``handler``: the HTTP server and request handler.
- ``server``: ``LocalHub`` (threads, start / stop, direct helpers) and the client environment.
- ``plugin``: the pytest plugin that runs one ``LocalHub`` for the session.

Endpoints the library and its tests use: ``create_repo``, ``upload_folder`` / ``upload_file``,
``snapshot_download``, ``list_repo_commits``, ``list_repo_files``, ``delete_repo``. Branch and tag
writes are used only by the server's own tests (``tests/test_hub_server.py``); ``whoami`` and
``list_repo_refs`` are also called by the client internally, so they stay.

Usage: the suite's ``conftest.py`` names the plugin (``pytest_plugins``); a test asks for the
``local_hub`` fixture, and ``HfApi(token="hf_alice_token").create_repo("alice/my-model")``,
``snapshot_download("alice/my-model")`` etc. need no ``endpoint=`` argument. Use a unique repo name
per test (the session server is shared). ``LocalHub.request_log`` records every request (method,
path, which server, whether an Authorization header was sent).

Client behaviour worth knowing (huggingface_hub 2.4.0):

* The client maps a bare 401 to ``RepositoryNotFoundError`` only for ``https://`` URLs, so LocalHub
  (plain http) always sends ``X-Error-Code: RepoNotFound`` for it.
* ``create_repo(exist_ok=True)`` reads ``"url"`` from the JSON body of the 409 answer.
* The LFS ``PUT`` has no ``Authorization`` header (the href is a one-time signed URL); it comes
  with a ``Content-Length``. A ``README.md`` is first POSTed to ``/api/validate-yaml`` (twice per
  ``upload_folder``).
* ``snapshot_download`` resolves the sha with ``/api/models/<id>/revision/<rev>`` and then lists
  files with ``/tree/<sha>?recursive=true`` (not ``siblings``). ``siblings`` carry ``size``/``lfs``
  only with ``files_metadata=True`` (``?blobs=true``), as on the Hub.
* Preupload returns the remote ``oid`` of existing files (git blob sha1, or sha256 for LFS); the
  client uses it to drop unchanged files and skips an empty commit.
* ``hf_hub_download``/``snapshot_download`` fall back to the local cache on a 401/404
  ``RepoNotFound`` when the revision is cached: use a fresh ``cache_dir`` to see the error.

Not implemented: Xet, pull requests (``create_pr=True`` gives 400), gated repos, multipart LFS
transfer, pagination (lists come back in one page), Spaces runtime APIs.
"""

from .server import CLIENT_ENV_UNSET, LocalHub, apply_client_env, check_client_configured, configure_client_env
from .storage import DEFAULT_GITATTRIBUTES, HubError

__all__ = [
    "CLIENT_ENV_UNSET",
    "DEFAULT_GITATTRIBUTES",
    "HubError",
    "LocalHub",
    "apply_client_env",
    "check_client_configured",
    "configure_client_env",
]
