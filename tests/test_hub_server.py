"""The real ``huggingface_hub`` client against ``LocalHub`` (testing_utils/localhub), over HTTP.

No mocking: the server runs in a background thread of this process and the client runs
in a subprocess whose environment comes from ``apply_client_env`` (``HF_ENDPOINT`` & co.
must be set before ``huggingface_hub`` is imported). One in-process test also drives the
client from this very process, as a conftest-managed session hub would be used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from testing_utils.localhub import CLIENT_ENV_UNSET, LocalHub, apply_client_env, configure_client_env

ALICE = "hf_test_alice_token"
BOB = "hf_test_bob_token"
TOKENS = {ALICE: "alice", BOB: "bob"}
CLIENT_TIMEOUT_S = 120  # bound on each client subprocess

# Helpers available to every client script (run with `python -c`, args in sys.argv[1] as JSON).
_PRELUDE = textwrap.dedent(
    """
    import json, os, sys, hashlib
    ARGS = json.loads(sys.argv[1])

    def catch(fn, *args, **kwargs):
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # report the exception class (and its bases) to the test
            response = getattr(exc, "response", None)
            return {
                "error": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "status": getattr(response, "status_code", None),
                "message": str(exc)[:500],
            }
        return {"ok": value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)}

    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("latin-1")

    def tree_digest(root):
        out = {}
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                full = os.path.join(dirpath, name)
                with open(full, "rb") as f:
                    out[os.path.relpath(full, root).replace(os.sep, "/")] = hashlib.sha256(f.read()).hexdigest()
        return out

    RESULT = {}
    """
)
_EPILOGUE = '\nprint("@@RESULT@@" + json.dumps(RESULT))\n'


def run_client(hub_url: str, hf_home: Path, script: str, args: dict | None = None, **extra_env: str) -> dict:
    """Run ``script`` with the real client in a subprocess configured for ``hub_url``."""
    env = apply_client_env(dict(os.environ), hub_url, hf_home)
    env.update(extra_env)
    code = _PRELUDE + textwrap.dedent(script) + _EPILOGUE
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args or {})],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        cwd=str(hf_home.parent),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"client script failed (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return json.loads(lines[-1][len("@@RESULT@@") :])


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_digest(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*") if p.is_file()}


def assert_error(result: dict, expected: str, status: int | None = None) -> None:
    assert "error" in result, f"expected {expected}, got success: {result}"
    assert expected in result["mro"], f"expected {expected}, got {result}"
    if status is not None:
        assert result["status"] == status, result


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("localhub"), tokens=TOKENS) as server:
        yield server


@pytest.fixture
def hf_home(tmp_path) -> Path:
    return tmp_path / "hf_home"  # empty: fresh token-less client, empty cache


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """config.json + README.md + a ~100 KB model.safetensors written by safetensors.torch."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("model")
    weights = torch.arange(160 * 160, dtype=torch.float32).reshape(160, 160) / 7.0
    save_file({"proj.weight": weights, "proj.bias": torch.ones(160)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 160}, indent=2))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\nA test model.\n")
    assert 90_000 < (folder / "model.safetensors").stat().st_size < 120_000
    return folder


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_configure_client_env(tmp_path):
    env = configure_client_env("http://127.0.0.1:1234/", tmp_path / "home", token="tok")
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:1234"
    assert env["HF_HOME"] == str(tmp_path / "home")
    assert env["HF_HUB_CACHE"] == str(tmp_path / "home" / "hub")
    assert env["HF_HUB_DISABLE_XET"] == "1"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["HF_TOKEN"] == "tok"
    assert "HF_TOKEN" not in configure_client_env("http://x", tmp_path)

    environ = {"HF_TOKEN": "stray", "TRANSFORMERS_OFFLINE": "1", "PATH": "/bin"}
    out = apply_client_env(environ, "http://127.0.0.1:1", tmp_path)
    assert out is environ and environ["PATH"] == "/bin"
    assert not any(key in environ for key in CLIENT_ENV_UNSET)
    assert environ["HF_ENDPOINT"] == "http://127.0.0.1:1"


def test_upload_folder_then_download(hub, hf_home, model_folder, tmp_path):
    """create_repo + upload_folder in one commit; snapshot_download + hf_hub_download."""
    result = run_client(
        hub.url,
        hf_home,
        """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi(token=ARGS["token"])
        RESULT["whoami"] = api.whoami()["name"]
        RESULT["url"] = str(api.create_repo("alice/tiny-model"))
        RESULT["again_exist_ok"] = str(api.create_repo("alice/tiny-model", exist_ok=True))
        RESULT["again"] = catch(api.create_repo, "alice/tiny-model")
        info = api.upload_folder(repo_id="alice/tiny-model", folder_path=ARGS["folder"], commit_message="add model")
        RESULT["commit"] = info.oid
        RESULT["commit_url"] = info.commit_url
        snap = snapshot_download("alice/tiny-model", cache_dir=ARGS["cache1"], token=ARGS["token"])
        RESULT["snapshot"] = snap
        RESULT["snapshot_digest"] = tree_digest(snap)
        RESULT["file"] = hf_hub_download("alice/tiny-model", "config.json", cache_dir=ARGS["cache2"])
        mi = api.model_info("alice/tiny-model", files_metadata=True)
        RESULT["info_sha"] = mi.sha
        RESULT["siblings"] = {s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in mi.siblings}
        RESULT["files"] = sorted(api.list_repo_files("alice/tiny-model"))
        """,
        {"token": ALICE, "folder": str(model_folder), "cache1": str(tmp_path / "c1"), "cache2": str(tmp_path / "c2")},
    )
    assert result["whoami"] == "alice"
    assert result["url"] == result["again_exist_ok"] == f"{hub.url}/alice/tiny-model"
    assert_error(result["again"], "HfHubHTTPError", 409)

    commit = result["commit"]
    assert len(commit) == 40 and int(commit, 16) >= 0
    assert result["commit_url"] == f"{hub.url}/alice/tiny-model/commit/{commit}"
    assert result["info_sha"] == commit == hub.branch_head("alice/tiny-model")
    # one commit on top of the repo's initial commit (which holds the default .gitattributes)
    assert result["files"] == [".gitattributes", "README.md", "config.json", "model.safetensors"]

    # the snapshot holds exactly the uploaded bytes (+ the Hub's initial .gitattributes)
    local = tree_digest(model_folder)
    snap = result["snapshot_digest"]
    assert set(snap) == set(local) | {".gitattributes"}
    assert {k: snap[k] for k in local} == local
    assert Path(result["snapshot"]).name == commit

    # model.safetensors went through LFS, the text files were committed inline
    files = hub.files_at("alice/tiny-model")
    assert files["model.safetensors"]["lfs"] is True
    assert files["config.json"]["lfs"] is False and files["README.md"]["lfs"] is False
    st_sha = sha256_file(model_folder / "model.safetensors")
    assert result["siblings"]["model.safetensors"] == [(model_folder / "model.safetensors").stat().st_size, st_sha]
    assert result["siblings"]["config.json"][1] is None
    assert hub.requests_matching("PUT", "/lfs-upload/"), "LFS upload did not use the basic transfer PUT"
    assert hub.requests_matching("POST", ".git/info/lfs/objects/verify")

    # cache layout: LFS blob named by sha256 (X-Linked-Etag), regular blob by git sha1 (ETag)
    snap_dir = Path(result["snapshot"])
    assert Path(os.path.realpath(snap_dir / "model.safetensors")).name == st_sha
    config_bytes = (model_folder / "config.json").read_bytes()
    assert Path(os.path.realpath(snap_dir / "config.json")).name == git_blob_sha1(config_bytes)
    assert Path(result["file"]).read_bytes() == config_bytes

    # the LFS payload came from the "CDN" origin, without the Authorization header
    cdn = [r for r in hub.request_log if r["server"] == "cdn"]
    assert cdn and not any(r["auth"] for r in cdn)
    assert any(r["auth"] for r in hub.requests_matching("HEAD", "/resolve/"))

    from safetensors.torch import load_file

    got, want = load_file(str(snap_dir / "model.safetensors")), load_file(str(model_folder / "model.safetensors"))
    assert set(got) == set(want) and all(bool((got[k] == want[k]).all()) for k in want)


def test_history_revisions_branches_tags(hub, hf_home, model_folder):
    """Second commit: both revisions downloadable by sha, main is the newest, model_info().sha matches."""
    result = run_client(
        hub.url,
        hf_home,
        """
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
        rid = "alice/versioned"
        api = HfApi(token=ARGS["token"])
        api.create_repo(rid)
        c1 = api.upload_folder(repo_id=rid, folder_path=ARGS["folder"]).oid
        c2 = api.create_commit(
            rid,
            [CommitOperationAdd("config.json", b'{"version": 2}'), CommitOperationDelete("README.md"),
             CommitOperationAdd("nested/dir/notes.txt", b"nested file")],
            commit_message="v2", commit_description="second commit",
        ).oid
        RESULT.update(c1=c1, c2=c2)
        # unchanged content: preupload returns the remote oid and the client skips the commit
        RESULT["noop"] = api.upload_file(path_or_fileobj=b'{"version": 2}', path_in_repo="config.json", repo_id=rid).oid
        # stale parent_commit -> 412 from the commit endpoint
        RESULT["stale"] = catch(api.create_commit, rid, [CommitOperationAdd("x.txt", b"x")],
                                commit_message="stale", parent_commit=c1)
        RESULT["cfg_c1"] = read(hf_hub_download(rid, "config.json", revision=c1))
        RESULT["cfg_c2"] = read(hf_hub_download(rid, "config.json", revision=c2))
        RESULT["cfg_main"] = read(hf_hub_download(rid, "config.json"))
        RESULT["readme_c2"] = catch(hf_hub_download, rid, "README.md", revision=c2)
        RESULT["readme_c1"] = read(hf_hub_download(rid, "README.md", revision=c1))
        RESULT["sha_main"] = api.model_info(rid).sha
        RESULT["sha_c1"] = api.model_info(rid, revision=c1).sha
        RESULT["snap_c1"] = sorted(tree_digest(snapshot_download(rid, revision=c1)))
        RESULT["snap_main"] = sorted(tree_digest(snapshot_download(rid)))
        RESULT["tree_top"] = sorted(f.path for f in api.list_repo_tree(rid))
        RESULT["commits"] = [(c.commit_id, c.title) for c in api.list_repo_commits(rid)]
        api.create_tag(rid, tag="v1", revision=c1)
        RESULT["cfg_tag"] = read(hf_hub_download(rid, "config.json", revision="v1"))
        api.create_branch(rid, branch="dev", revision=c1)
        c3 = api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=rid, revision="dev").oid
        RESULT["c3"] = c3
        RESULT["dev_sha"] = api.model_info(rid, revision="dev").sha
        RESULT["main_after_dev"] = api.model_info(rid).sha
        refs = api.list_repo_refs(rid)
        RESULT["branches"] = {b.name: b.target_commit for b in refs.branches}
        RESULT["tags"] = {t.name: t.target_commit for t in refs.tags}
        RESULT["dev_files"] = sorted(api.list_repo_files(rid, revision="dev"))
        """,
        {"token": ALICE, "folder": str(model_folder)},
    )
    c1, c2 = result["c1"], result["c2"]
    assert c1 != c2 and len(c2) == 40
    assert result["noop"] == c2
    assert_error(result["stale"], "HfHubHTTPError", 412)
    assert result["cfg_c1"] == (model_folder / "config.json").read_text()
    assert json.loads(result["cfg_c2"]) == json.loads(result["cfg_main"]) == {"version": 2}
    assert_error(result["readme_c2"], "EntryNotFoundError", 404)
    assert result["readme_c1"] == (model_folder / "README.md").read_text()
    assert result["sha_main"] == c2 and result["sha_c1"] == c1
    assert "README.md" in result["snap_c1"] and "nested/dir/notes.txt" not in result["snap_c1"]
    assert "README.md" not in result["snap_main"] and "nested/dir/notes.txt" in result["snap_main"]
    assert result["tree_top"] == [".gitattributes", "config.json", "model.safetensors", "nested"]
    assert [c[0] for c in result["commits"]][:2] == [c2, c1] and len(result["commits"]) == 3
    assert result["commits"][0][1] == "v2"
    assert result["cfg_tag"] == result["cfg_c1"]
    assert result["dev_sha"] == result["c3"] and result["main_after_dev"] == c2
    assert result["branches"] == {"main": c2, "dev": result["c3"]} and result["tags"] == {"v1": c1}
    assert "dev.txt" in result["dev_files"] and "README.md" in result["dev_files"]
    # the server keeps every snapshot immutable
    assert set(hub.files_at("alice/versioned", c1)) == {".gitattributes", "README.md", "config.json",
                                                         "model.safetensors"}


def test_private_repo_needs_token(hub, hf_home, tmp_path):
    result = run_client(
        hub.url,
        hf_home,
        """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        rid = "alice/secret"
        alice = HfApi(token=ARGS["alice"])
        alice.create_repo(rid, private=True)
        alice.upload_file(path_or_fileobj=b'{"secret": true}', path_in_repo="config.json", repo_id=rid)
        alice.create_repo("alice/open")
        c = lambda name: os.path.join(ARGS["tmp"], name)
        RESULT["anon_download"] = catch(hf_hub_download, rid, "config.json", token=False, cache_dir=c("a"))
        RESULT["anon_snapshot"] = catch(snapshot_download, rid, token=False, cache_dir=c("b"))
        RESULT["anon_info"] = catch(lambda: HfApi(token=False).model_info(rid).sha)
        RESULT["bob_download"] = catch(hf_hub_download, rid, "config.json", token=ARGS["bob"], cache_dir=c("c"))
        RESULT["bob_snapshot"] = catch(snapshot_download, rid, token=ARGS["bob"], cache_dir=c("d"))
        RESULT["bob_info"] = catch(lambda: HfApi(token=ARGS["bob"]).model_info(rid).sha)
        RESULT["bad_token"] = catch(hf_hub_download, rid, "config.json", token="hf_not_a_token", cache_dir=c("e"))
        RESULT["alice_download"] = read(hf_hub_download(rid, "config.json", token=ARGS["alice"], cache_dir=c("f")))
        RESULT["alice_snapshot"] = sorted(tree_digest(snapshot_download(rid, token=ARGS["alice"], cache_dir=c("g"))))
        RESULT["alice_info_private"] = alice.model_info(rid).private
        RESULT["bob_writes_alice"] = catch(HfApi(token=ARGS["bob"]).upload_file, path_or_fileobj=b"x",
                                           path_in_repo="x.txt", repo_id="alice/open")
        RESULT["bob_creates_in_alice"] = catch(HfApi(token=ARGS["bob"]).create_repo, "alice/bobs")
        RESULT["anon_create"] = catch(HfApi(token=False).create_repo, "alice/anon")
        RESULT["anon_reads_public"] = catch(lambda: HfApi(token=False).model_info("alice/open").id)
        alice.update_repo_settings(rid, private=False)
        RESULT["anon_after_public"] = read(hf_hub_download(rid, "config.json", token=False, cache_dir=c("h")))
        """,
        {"alice": ALICE, "bob": BOB, "tmp": str(tmp_path)},
    )
    for key in ("anon_download", "anon_snapshot", "anon_info"):
        assert_error(result[key], "RepositoryNotFoundError", 401)
    for key in ("bob_download", "bob_snapshot", "bob_info"):
        assert_error(result[key], "RepositoryNotFoundError", 404)
    assert_error(result["bad_token"], "HfHubHTTPError", 401)
    assert "RepositoryNotFoundError" not in result["bad_token"]["mro"]
    assert json.loads(result["alice_download"]) == {"secret": True}
    assert result["alice_snapshot"] == [".gitattributes", "config.json"]
    assert result["alice_info_private"] is True
    assert_error(result["bob_writes_alice"], "HfHubHTTPError", 403)
    assert_error(result["bob_creates_in_alice"], "HfHubHTTPError", 403)
    assert_error(result["anon_create"], "HfHubHTTPError", 401)
    assert result["anon_reads_public"] == {"ok": "alice/open"}
    assert json.loads(result["anon_after_public"]) == {"secret": True}


def test_missing_repo_file_revision_errors(hub, hf_home, tmp_path):
    result = run_client(
        hub.url,
        hf_home,
        """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi(token=ARGS["token"])
        api.create_repo("alice/present")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="alice/present")
        c = lambda name: os.path.join(ARGS["tmp"], name)
        RESULT["repo_dl"] = catch(hf_hub_download, "alice/absent", "a.txt", token=ARGS["token"], cache_dir=c("1"))
        RESULT["repo_dl_anon"] = catch(hf_hub_download, "alice/absent", "a.txt", token=False, cache_dir=c("2"))
        RESULT["repo_snap"] = catch(snapshot_download, "alice/absent", token=ARGS["token"], cache_dir=c("3"))
        RESULT["repo_info"] = catch(api.model_info, "alice/absent")
        RESULT["file_dl"] = catch(hf_hub_download, "alice/present", "nope.txt", cache_dir=c("4"))
        RESULT["file_dl_nested"] = catch(hf_hub_download, "alice/present", "a/b/nope.bin", cache_dir=c("4"))
        RESULT["rev_dl"] = catch(hf_hub_download, "alice/present", "hello.txt", revision="no-such-branch",
                                 cache_dir=c("5"))
        RESULT["rev_sha_dl"] = catch(hf_hub_download, "alice/present", "hello.txt", revision="0" * 40,
                                     cache_dir=c("6"))
        RESULT["rev_snap"] = catch(snapshot_download, "alice/present", revision="no-such-branch", cache_dir=c("7"))
        RESULT["rev_info"] = catch(api.model_info, "alice/present", revision="no-such-branch")
        RESULT["exists"] = [api.repo_exists("alice/present"), api.repo_exists("alice/absent"),
                            api.file_exists("alice/present", "hello.txt"), api.file_exists("alice/present", "x"),
                            api.revision_exists("alice/present", "main"), api.revision_exists("alice/present", "zz")]
        RESULT["ok"] = read(hf_hub_download("alice/present", "hello.txt", cache_dir=c("8")))
        """,
        {"token": ALICE, "tmp": str(tmp_path)},
    )
    assert_error(result["repo_dl"], "RepositoryNotFoundError", 404)
    assert_error(result["repo_dl_anon"], "RepositoryNotFoundError", 401)
    assert_error(result["repo_snap"], "RepositoryNotFoundError", 404)
    assert_error(result["repo_info"], "RepositoryNotFoundError", 404)
    assert_error(result["file_dl"], "EntryNotFoundError", 404)
    assert_error(result["file_dl_nested"], "EntryNotFoundError", 404)
    for key in ("rev_dl", "rev_sha_dl", "rev_snap", "rev_info"):
        assert_error(result[key], "RevisionNotFoundError", 404)
    assert result["exists"] == [True, False, True, False, True, False]
    assert result["ok"] == "hello"


def test_offline_snapshot_from_cache_after_server_stops(tmp_path, model_folder):
    hf_home = tmp_path / "hf_home"
    hub = LocalHub(tmp_path / "server", tokens=TOKENS).start()
    try:
        online = run_client(
            hub.url,
            hf_home,
            """
            from huggingface_hub import HfApi, hf_hub_download, snapshot_download
            api = HfApi(token=ARGS["token"])
            api.create_repo("alice/offline")
            RESULT["commit"] = api.upload_folder(repo_id="alice/offline", folder_path=ARGS["folder"]).oid
            RESULT["snap"] = snapshot_download("alice/offline")
            RESULT["digest"] = tree_digest(RESULT["snap"])
            """,
            {"token": ALICE, "folder": str(model_folder)},
        )
    finally:
        hub.stop()
    assert not hub.running
    n_requests = len(hub.request_log)

    offline_script = """
        from huggingface_hub import hf_hub_download, snapshot_download
        snap = snapshot_download("alice/offline")
        RESULT["snap"] = snap
        RESULT["digest"] = tree_digest(snap)
        RESULT["file"] = read(hf_hub_download("alice/offline", "config.json"))
        RESULT["by_sha"] = snapshot_download("alice/offline", revision=ARGS["commit"])
        RESULT["never_downloaded"] = catch(snapshot_download, "alice/other")
    """
    # HF_HUB_OFFLINE=1: no HTTP at all, everything from the cache
    offline = run_client(hub.url, hf_home, offline_script, {"commit": online["commit"]}, HF_HUB_OFFLINE="1")
    # HF_HUB_OFFLINE=0 but the server is down: the client falls back to the cache too
    down = run_client(hub.url, hf_home, offline_script, {"commit": online["commit"]})

    for result in (offline, down):
        assert result["snap"] == online["snap"] == result["by_sha"]
        assert result["digest"] == online["digest"]
        assert result["file"] == (model_folder / "config.json").read_text()
        assert_error(result["never_downloaded"], "LocalEntryNotFoundError")
    assert len(hub.request_log) == n_requests


def test_in_process_client_and_stop_cuts_connections(tmp_path, monkeypatch):
    """Server thread + client in the same process (the conftest set-up), with explicit endpoint=."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import HfApi, constants, hf_hub_download

    # This process may have imported huggingface_hub without the LocalHub env: force LFS uploads.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = LocalHub(tmp_path / "server", tokens=TOKENS).start()
    outcome: dict = {}

    def scenario():
        api = HfApi(endpoint=hub.url, token=ALICE)
        api.create_repo("alice/inproc")
        weights = bytes(range(256)) * 64  # binary => LFS
        commit = api.create_commit(
            "alice/inproc",
            [huggingface_hub.CommitOperationAdd("w.bin", weights),
             huggingface_hub.CommitOperationAdd("a.txt", b"text")],
            commit_message="in-process",
        ).oid
        path = hf_hub_download("alice/inproc", "w.bin", endpoint=hub.url, token=ALICE, cache_dir=str(tmp_path / "c"))
        outcome.update(commit=commit, ok=Path(path).read_bytes() == weights,
                       sha=api.model_info("alice/inproc").sha)
        hub.stop()  # pooled keep-alive connections must not keep talking to a stopped hub
        try:
            api.model_info("alice/inproc")
            outcome["after_stop"] = "answered"
        except Exception as exc:  # noqa: BLE001
            outcome["after_stop"] = type(exc).__name__

    thread = threading.Thread(target=scenario, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout=90)
    hub.stop()
    assert not thread.is_alive(), "in-process client hung"
    assert outcome.get("ok") is True, outcome
    assert outcome["sha"] == outcome["commit"]
    assert hub.files_at("alice/inproc")["w.bin"]["lfs"] is True
    assert outcome["after_stop"] != "answered"
    assert time.monotonic() - start < 60


def test_raw_protocol_headers(hub):
    """Headers the client depends on, checked on the wire (no client)."""
    port = hub.port

    def request(method, path, headers=None, body=None, port=port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    auth = {"Authorization": f"Bearer {ALICE}"}
    status, _, body = request("POST", "/api/repos/create", {**auth, "Content-Type": "application/json"},
                              json.dumps({"name": "raw", "organization": None, "type": "model"}))
    assert status == 200 and json.loads(body)["url"] == f"{hub.url}/alice/raw"
    head = hub.branch_head("alice/raw")

    status, h, _ = request("HEAD", "/alice/raw/resolve/main/.gitattributes")
    gitattributes = hub.read_file("alice/raw", ".gitattributes")
    assert status == 200 and h["x-repo-commit"] == head
    assert h["etag"] == f'"{git_blob_sha1(gitattributes)}"' and int(h["content-length"]) == len(gitattributes)

    status, h, body = request("GET", "/alice/raw/resolve/main/.gitattributes", {"Range": "bytes=2-9"})
    assert status == 206 and body == gitattributes[2:10] and h["content-range"].endswith(f"/{len(gitattributes)}")

    for path, code, status_ in [
        ("/alice/nothing/resolve/main/x", "RepoNotFound", 401),
        ("/alice/raw/resolve/nobranch/x", "RevisionNotFound", 404),
        ("/alice/raw/resolve/main/x", "EntryNotFound", 404),
    ]:
        status, h, _ = request("HEAD", path)
        assert (status, h.get("x-error-code")) == (status_, code), path
    assert h["x-repo-commit"] == head  # EntryNotFound carries the commit (the client caches .no_exist)

    status, h, _ = request("GET", "/api/models/alice/raw", {"Authorization": "Bearer wrong"})
    assert status == 401 and h["x-error-message"] == "Invalid credentials in Authorization header"

    # LFS: batch -> PUT with a chunked body -> commit -> 302 to the CDN with X-Linked-* headers
    data = b"\0binary" * 1000
    oid = hashlib.sha256(data).hexdigest()
    lfs_headers = {**auth, "Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}
    status, _, body = request("POST", "/alice/raw.git/info/lfs/objects/batch", lfs_headers,
                              json.dumps({"operation": "upload", "transfers": ["basic"],
                                          "objects": [{"oid": oid, "size": len(data)}]}))
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub.url)
    chunks = iter([data[:3000], data[3000:]])
    status, _, _ = request("PUT", href[len(hub.url):], {}, chunks)  # iterable body: http.client sends it chunked
    assert status == 200
    ndjson = "\n".join(json.dumps(line) for line in [
        {"key": "header", "value": {"summary": "raw lfs", "description": ""}},
        {"key": "lfsFile", "value": {"path": "blob.bin", "algo": "sha256", "oid": oid, "size": len(data)}},
    ])
    status, _, body = request("POST", "/api/models/alice/raw/commit/main",
                              {**auth, "Content-Type": "application/x-ndjson"}, ndjson)
    assert status == 200, body
    commit = json.loads(body)["commitOid"]
    status, h, _ = request("HEAD", "/alice/raw/resolve/main/blob.bin")
    assert status == 302 and h["x-repo-commit"] == commit
    assert h["x-linked-etag"] == f'"{oid}"' and h["x-linked-size"] == str(len(data))
    assert h["location"].startswith(hub.cdn_url)
    status, _, body = request("GET", h["location"][len(hub.cdn_url):], port=int(hub.cdn_url.rsplit(":", 1)[1]))
    assert status == 200 and body == data
    # a commit may only reference LFS objects uploaded to this repo
    bad = ndjson.replace(oid, "f" * 64)
    status, _, _ = request("POST", "/api/models/alice/raw/commit/main",
                           {**auth, "Content-Type": "application/x-ndjson"}, bad)
    assert status == 422
