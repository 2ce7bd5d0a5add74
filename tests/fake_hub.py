"""A tiny in-process fake of the Hugging Face Hub HTTP API, for tests.

Usage::

    with FakeHub() as hub:                      # starts the server and points huggingface_hub at it
        hub.add_file("me/data", "train.jsonl", b"...", repo_type="dataset")
        path = hf_hub_download("me/data", "train.jsonl", repo_type="dataset", cache_dir=tmp_path)
        HfApi(token="hf_x").upload_folder(repo_id="me/model", folder_path=out_dir)
        assert b"secret" not in hub.all_uploaded_bytes()

Written against huggingface_hub 2.4 (hf-xet installed), transformers 5.24 and peft 0.21. Only the endpoints
those clients call for download / repo creation / commits are implemented. Everything is served as plain
HTTP: the server never sends Xet headers (X-Xet-Hash, Link: xet-auth) so downloads use a plain GET, and the
``preupload`` endpoint answers ``uploadMode: "regular"`` for every file so content arrives base64-inlined
in the commit (the client would upload any "lfs" file through hf_xet whenever hf_xet is installed).
Unknown endpoints answer 404 and are listed in ``hub.unhandled``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeHub", "RecordedRequest", "Upload", "patch_hf_endpoint"]

_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # URL prefix of each repo type
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub returns as ETag / "oid" for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class RecordedRequest:
    method: str
    path: str  # raw path including the query string
    headers: "_Headers"  # case-insensitive: headers["Authorization"] == headers["authorization"]
    body: bytes


class _Headers(dict):
    """A dict of request headers with case-insensitive lookups (keys are stored lower-cased)."""

    def __init__(self, items):
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


@dataclass
class Upload:
    """A file content received by the commit endpoint (also when the commit was then rejected)."""

    repo_type: str
    repo_id: str
    path: str
    data: bytes
    committed: bool


@dataclass
class _Repo:
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch name -> commit sha
    commits: dict[str, dict[str, str]] = field(default_factory=dict)  # commit sha -> {path: blob sha256}


class _HubError(Exception):
    """Raised by route handlers; turned into a JSON error response. `code` becomes the X-Error-Code header
    that huggingface_hub maps to RepositoryNotFoundError / RevisionNotFoundError / EntryNotFoundError."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _NoRoute(_HubError):
    def __init__(self, method: str, path: str):
        super().__init__(404, f"FakeHub: no route for {method} {path}")


class FakeHub:
    """Fake Hub server on 127.0.0.1:<random port>; `with FakeHub() as hub:` also patches the endpoint.

    Attributes a test may set: ``fail_commit`` / ``fail_create_repo`` (an HTTP status such as 500 or 403,
    None = normal). Recorded: ``requests`` (every request), ``uploads`` (every file content received by a
    commit), ``unhandled`` (requests no route matched).

    ``disable_xet=True`` (default) also sets HF_HUB_DISABLE_XET while patched: ``upload_folder`` then takes the
    single ``create_commit`` path, whose commit POST is not retried, so ``fail_commit = 500`` fails at once.
    With hf_xet enabled, ``upload_folder`` uses its pipelined uploader, which retries a 5xx commit with
    backoff (6 tries, ~23 s) before raising (4xx still fail at once). No Xet/LFS traffic happens in either mode.
    ``hub_cache`` (optional path) becomes the huggingface_hub cache (HF_HUB_CACHE) while patched.
    """

    def __init__(self, *, user: str = "fake-user", disable_xet: bool = True, hub_cache: str | os.PathLike | None = None):
        self.user = user
        self.disable_xet = disable_xet
        self.hub_cache = hub_cache
        self.fail_commit: int | None = None
        self.fail_create_repo: int | None = None
        self.requests: list[RecordedRequest] = []
        self.uploads: list[Upload] = []
        self.unhandled: list[RecordedRequest] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._patch: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-hub-")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "FakeHub":
        self.start()
        self._patch = contextlib.ExitStack()
        try:
            self._patch.enter_context(patch_hf_endpoint(self.url, disable_xet=self.disable_xet, hub_cache=self.hub_cache))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._patch is not None:
                self._patch.close()
        finally:
            self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "FakeHub is not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ test helpers
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> bool:
        """Create an empty repo (one empty commit on "main"); False if it already existed."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return False
            repo = self._repos[(repo_type, repo_id)] = _Repo(private=private)
            self._new_commit(repo, "main", {}, "initial commit")
            return True

    def add_file(self, repo_id: str, path: str, data: bytes | str, repo_type: str = "model", revision: str = "main") -> str:
        """Seed a file (creating the repo if needed); returns the new commit sha."""
        data = data.encode() if isinstance(data, str) else bytes(data)
        with self._lock:
            self.create_repo(repo_id, repo_type)
            repo = self._repos[(repo_type, repo_id)]
            tree = dict(repo.commits[repo.refs[revision]])
            tree[path] = self._store_blob(data)
            return self._new_commit(repo, revision, tree, f"add {path}")

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self._repos

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Content of the repo at `revision`: {path: bytes}."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            tree = repo.commits[self._resolve(repo, revision)]
            return {p: self._read_blob(b) for p, b in sorted(tree.items())}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """All commit shas of the repo, oldest first."""
        return list(self._get_repo(repo_type, repo_id).commits)

    def all_uploaded_bytes(self) -> bytes:
        """Every byte clients sent: decoded commit file contents (even rejected ones) + raw request bodies.
        Grep this for secrets (request *headers*, e.g. the Authorization token, are not included)."""
        with self._lock:
            parts = [u.data for u in self.uploads] + [r.body for r in self.requests if r.body]
        return b"\n".join(parts)

    # ------------------------------------------------------------------ storage internals
    def _store_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = Path(self._tmp.name) / "blobs" / digest
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return digest

    def _read_blob(self, digest: str) -> bytes:
        return (Path(self._tmp.name) / "blobs" / digest).read_bytes()

    def _new_commit(self, repo: _Repo, branch: str, tree: dict[str, str], message: str) -> str:
        seed = json.dumps([repo.refs.get(branch), sorted(tree.items()), message, len(repo.commits), time.time()])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> str:
        """Branch name, full commit sha or unique sha prefix (>= 7 chars) -> commit sha."""
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        matches = [sha for sha in repo.commits if len(revision) >= 7 and sha.startswith(revision)]
        if len(matches) == 1:
            return matches[0]
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_PREFIX[repo_type]}{repo_id}"

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, raw_path: str, body: bytes):
        """Returns (status, headers, body-bytes-or-json-object)."""
        split = urlsplit(raw_path)
        path, query = split.path, {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            if path.startswith("/api/"):
                return self._route_api(method, path, query, body)
            # File download: /[datasets/|spaces/]owner/name/resolve/<revision>/<path>
            m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and method in ("GET", "HEAD"):
                repo_type = _API_TYPES.get(m.group(1) or "models")
                return self._resolve_file(repo_type, unquote(m.group(2)), unquote(m.group(3)), unquote(m.group(4)))
        raise _NoRoute(method, path)

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, filename: str):
        repo = self._get_repo(repo_type, repo_id)
        sha = self._resolve(repo, revision)
        blob = repo.commits[sha].get(filename)
        if blob is None:  # X-Repo-Commit lets the client cache the non-existence (.no_exist)
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = self._read_blob(blob)
        return 200, {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',  # becomes the blob file name in the client's cache
            "X-Repo-Commit": sha,  # required: the client refuses responses without it
            "Accept-Ranges": "none",
        }, data

    def _route_api(self, method: str, path: str, query: dict, body: bytes):
        if path == "/api/whoami-v2":
            return 200, {}, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}}
        if path == "/api/agent-harnesses" or path.startswith("/api/telemetry/"):  # client housekeeping calls
            raise _HubError(404, "not served by FakeHub")  # (a 200 would make the client cache it in HF_HOME)
        if path == "/api/validate-yaml" and method == "POST":  # README.md metadata check before commits
            return 200, {}, {"errors": [], "warnings": []}
        if path in ("/api/repos/create", "/api/repos/delete") and method == "POST":
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
            if path.endswith("delete"):
                self._get_repo(repo_type, repo_id)
                del self._repos[(repo_type, repo_id)]
                return 200, {}, {}
            if self.fail_create_repo is not None:
                raise _HubError(self.fail_create_repo, "FakeHub: injected create-repo failure")
            url = self._repo_url(repo_type, repo_id)
            if not self.create_repo(repo_id, repo_type, private=payload.get("visibility") == "private"):
                # `create_repo(exist_ok=True)` swallows the 409 and then reads "url" from this body.
                return 409, {}, {"error": f"You already created this {repo_type} repo", "url": url}
            return 200, {}, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}

        # Per-repo endpoints: /api/{models|datasets|spaces}/owner/name[/<action>/<revision>[/<path>]]
        m = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit|branch)/([^/]+)(/.*)?)?", path)
        if not m:
            raise _NoRoute(method, path)
        repo_type, repo_id, action = _API_TYPES[m.group(1)], unquote(m.group(2)), m.group(3)
        revision = unquote(m.group(4)) if m.group(4) else "main"
        sub_path = unquote(m.group(5) or "").strip("/")
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, revision, body, create_pr=query.get("create_pr") == "1")
        repo = self._get_repo(repo_type, repo_id)
        if action in (None, "revision") and method == "GET":
            return 200, {}, self._info(repo_type, repo_id, repo, revision, blobs=query.get("blobs") in ("True", "true", "1"))
        if action == "tree" and method == "GET":
            return 200, {}, self._tree(repo, revision, sub_path, recursive=query.get("recursive") in ("True", "true", "1"))
        if action == "preupload" and method == "POST":
            tree = repo.commits[self._resolve(repo, revision)]
            files = []
            for f in json.loads(body)["files"]:
                old = tree.get(f["path"])  # git oid of the current file lets the client skip unchanged files
                files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                              "oid": git_blob_sha1(self._read_blob(old)) if old else None})
            return 200, {}, {"files": files, "commitOid": repo.refs.get(revision)}
        if action == "branch" and method == "POST":
            if revision in repo.refs:
                raise _HubError(409, f"Branch {revision} already exists")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            repo.refs[revision] = self._resolve(repo, start)
            return 200, {}, {}
        raise _NoRoute(method, path)

    def _info(self, repo_type: str, repo_id: str, repo: _Repo, revision: str, blobs: bool) -> dict:
        """/api/models/<id>[/revision/<rev>]: ModelInfo / DatasetInfo JSON (`sha` is what snapshot_download needs)."""
        sha = self._resolve(repo, revision)
        siblings = []
        for p, b in sorted(repo.commits[sha].items()):
            sibling = {"rfilename": p}
            if blobs:
                data = self._read_blob(b)
                sibling.update(size=len(data), blobId=git_blob_sha1(data))
            siblings.append(sibling)
        return {"_id": sha[:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "createdAt": _now(), "lastModified": _now()}

    def _tree(self, repo: _Repo, revision: str, sub_path: str, recursive: bool) -> list[dict]:
        """/api/models/<id>/tree/<rev>[/<path>]: files and folders under `sub_path` (no "lfs"/"xetHash" keys)."""
        tree = repo.commits[self._resolve(repo, revision)]
        prefix = f"{sub_path}/" if sub_path else ""
        entries: dict[str, dict] = {}
        for p, b in sorted(tree.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):  # parent folders of the file, below sub_path
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "path": folder})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                data = self._read_blob(b)
                entries[p] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
        if sub_path and not entries:
            raise _HubError(404, f"Entry not found: {sub_path}", "EntryNotFound")
        return list(entries.values())

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, create_pr: bool):
        """/api/models/<id>/commit/<rev>: ndjson with one "header" line then file/deletedFile/deletedFolder lines."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        ops = [(item["key"], item["value"]) for item in lines if item["key"] != "header"]
        # Record received contents before anything can fail, so leak tests also see rejected uploads.
        added: dict[str, Upload] = {}
        for key, value in ops:
            if key == "file":
                raw = value["content"]
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                added[value["path"]] = Upload(repo_type, repo_id, value["path"], data, committed=False)
        self.uploads.extend(added.values())
        if self.fail_commit is not None:
            raise _HubError(self.fail_commit, "FakeHub: injected commit failure")
        if any(key == "lfsFile" for key, _ in ops):  # never happens: preupload always answers "regular"
            raise _HubError(400, "FakeHub does not support LFS files")
        repo = self._get_repo(repo_type, repo_id)
        if create_pr:
            base = self._resolve(repo, revision)
            revision = f"refs/pr/{1 + sum(ref.startswith('refs/pr/') for ref in repo.refs)}"
            repo.refs[revision] = base
        if revision not in repo.refs:  # commits go to branches only
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        parent = header.get("parentCommit")
        if parent and not repo.refs[revision].startswith(parent):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(repo.commits[repo.refs[revision]])
        for key, value in ops:
            if key == "file":
                tree[value["path"]] = self._store_blob(added[value["path"]].data)
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {p: b for p, b in tree.items() if not p.startswith(folder)}
        sha = self._new_commit(repo, revision, tree, header.get("summary", ""))
        for upload in added.values():
            upload.committed = True
        url = self._repo_url(repo_type, repo_id)
        pr_url = f"{url}/discussions/{revision.rsplit('/', 1)[-1]}" if create_pr else None
        return 200, {}, {"success": True, "commitOid": sha, "commitUrl": f"{url}/commit/{sha}", "hookOutput": "",
                         "pullRequestUrl": pr_url}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length

    def log_message(self, format, *args):  # silence the default stderr logging
        pass

    def _handle(self):
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        request = RecordedRequest(self.command, self.path, _Headers(self.headers.items()),
                                  self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with hub._lock:
            hub.requests.append(request)
        try:
            status, headers, payload = hub._route(self.command, self.path, request.body)
        except _HubError as e:
            status, headers, payload = e.status, dict(e.headers), {"error": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            if isinstance(e, _NoRoute):
                with hub._lock:
                    hub.unhandled.append(request)
        except Exception:
            status, headers, payload = 500, {}, {"error": "FakeHub crashed:\n" + traceback.format_exc()}
            print(payload["error"], file=sys.stderr)
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


# ---------------------------------------------------------------------- endpoint patching
_ENDPOINT_NAMES = {"ENDPOINT", "HF_ENDPOINT", "HUGGINGFACE_CO_RESOLVE_ENDPOINT"}


def _retarget_module_globals(old: str, new: str, old_template: str, new_template: str, undo: list) -> None:
    """Point every already-imported copy of the endpoint at `new`: module-level `ENDPOINT`-like strings and
    URL templates, and module-level HfApi / HfFileSystem instances (e.g. `huggingface_hub.hf_api.api`, behind
    the top-level `create_repo`/`upload_folder` functions, `huggingface_hub.hffs`, `transformers.utils.hub._hf_api`)."""
    from huggingface_hub import HfApi, HfFileSystem

    def patch(obj, attr, value):
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            kind = type(value)  # not isinstance(): that may trigger lazy/deprecated attribute hooks
            try:
                if kind is str:
                    if name in _ENDPOINT_NAMES and value == old:
                        patch(module, name, new)
                    elif value == old_template and name == "HUGGINGFACE_CO_URL_TEMPLATE":
                        patch(module, name, new_template)
                elif issubclass(kind, HfApi) and value.endpoint == old:
                    patch(value, "endpoint", new)
                elif issubclass(kind, HfFileSystem) and value.endpoint == old:
                    patch(value, "endpoint", new)
                    patch(value._api, "endpoint", new)
                    value.dircache.clear()
            except Exception:  # exotic module attributes: never let patching break a test
                continue


@contextlib.contextmanager
def patch_hf_endpoint(url: str, *, disable_xet: bool = True, hub_cache: str | os.PathLike | None = None):
    """Point huggingface_hub (already imported or not, in this process and in subprocesses) at `url`.

    Sets HF_ENDPOINT (and NO_PROXY for 127.0.0.1, unsets HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) in os.environ and
    patches the import-time copies: huggingface_hub.constants.{ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE,
    HF_URL_HOSTS, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET[, HF_HUB_CACHE]}, the Hub-origin allow-list of utils._http,
    and any module-level copy / HfApi instance (see `_retarget_module_globals`). Everything is restored on exit.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import _http

    url = url.rstrip("/")
    env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_DATASETS_OFFLINE": None,
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, [os.environ.get(key), "127.0.0.1", "localhost"]))
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(hub_cache)
    saved_env = {key: os.environ.get(key) for key in env}
    undo: list[tuple[object, str, object]] = []

    def patch(obj, attr, value):
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    old, old_template = constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE
    new_template = url + "/{repo_id}/resolve/{revision}/{filename}"
    saved_fs_cache = dict(HfFileSystem._cache)
    try:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _retarget_module_globals(old, url, old_template, new_template, undo)  # includes constants.ENDPOINT
        patch(constants, "ENDPOINT", url)
        patch(constants, "HUGGINGFACE_CO_URL_TEMPLATE", new_template)
        patch(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
        patch(constants, "HF_HUB_OFFLINE", False)
        patch(constants, "HF_HUB_DISABLE_XET", constants.HF_HUB_DISABLE_XET or disable_xet)
        if hub_cache is not None:
            patch(constants, "HF_HUB_CACHE", str(hub_cache))
        patch(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(url)})
        HfFileSystem._cache.clear()  # fsspec caches instances (and their endpoint) by constructor args
        _http.close_session()  # the shared httpx client read proxy settings from the env when it was created
        yield
    finally:
        undo_after: list = []  # HfApi objects created lazily inside the block (e.g. transformers' shared one)
        _retarget_module_globals(url, old, new_template, old_template, undo_after)
        for obj, attr, value in reversed(undo):
            setattr(obj, attr, value)
        HfFileSystem._cache.clear()
        HfFileSystem._cache.update(saved_fs_cache)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _http.close_session()
