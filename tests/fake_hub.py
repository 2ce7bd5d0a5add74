"""A tiny in-process fake of the Hugging Face Hub HTTP API, for tests.

    with FakeHub() as hub:  # starts the server and points huggingface_hub (and subprocesses) at it
        hub.add_file("me/data", "train.jsonl", b"...", repo_type="dataset")
        path = hf_hub_download("me/data", "train.jsonl", repo_type="dataset", cache_dir=tmp_path)
        HfApi(token="hf_x").upload_folder(repo_id="me/model", folder_path=out_dir)
        assert b"secret" not in hub.all_uploaded_bytes()

Written against huggingface_hub 2.4 (with hf-xet installed), transformers 5.24 and peft 0.21; only the endpoints
they call for downloads, repo creation and commits exist. Everything stays plain HTTP, with no Xet and no LFS:
  * downloads: the server never sends the Xet headers (X-Xet-Hash, X-Xet-Refresh-Route, Link: xet-auth), so
    `hf_hub_download` does a HEAD then a plain GET on /resolve/;
  * uploads: `preupload` answers uploadMode "regular" for every file, so contents come base64-inlined in the
    commit ndjson. (Any file the server marks "lfs" is uploaded through hf_xet when hf_xet is installed; the
    client itself only forces empty files to "regular", and never insists on LFS.)
Unknown endpoints answer 404 and are recorded in `hub.unhandled`.
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
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit


__all__ = ["FakeHub", "RecordedRequest", "Upload", "patch_hf_endpoint"]

_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_TRUE = ("1", "true", "True")


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: what the Hub returns as ETag and tree "oid" of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RecordedRequest:
    method: str
    path: str  # raw path, with the query string
    headers: Message  # http.client.HTTPMessage: case-insensitive, e.g. headers["Authorization"]
    body: bytes


@dataclass
class Upload:
    """A file content received by the commit endpoint (recorded even when the commit is then rejected)."""

    repo_type: str
    repo_id: str
    path: str
    data: bytes
    committed: bool


@dataclass
class _Repo:
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, str]] = field(default_factory=dict)  # commit sha -> {path: blob sha256}


class _HubError(Exception):
    """Becomes a JSON error response. `code` goes to the X-Error-Code header, which huggingface_hub maps to
    RepositoryNotFoundError ("RepoNotFound"), RevisionNotFoundError, RemoteEntryNotFoundError ("EntryNotFound")."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _NoRouteError(_HubError):
    def __init__(self, method: str, path: str):
        super().__init__(404, f"FakeHub: no route for {method} {path}")


class FakeHub:
    """Fake Hub on 127.0.0.1:<free port>, served by a background thread; repos live in a temp directory.

    `with FakeHub() as hub:` = `start()` + `patch_hf_endpoint(hub.url)`, all undone on exit.
    Failure injection (HTTP status or None): `fail_commit`, `fail_create_repo`; `fail_download` {file name: status};
    `answer_delay`: seconds every answer waits (a slow Hub).
    Recording: `requests`, `uploads` (decoded commit contents), `unhandled`; helpers `files()`, `all_uploaded_bytes()`.

    `disable_xet=True` (default) sets HF_HUB_DISABLE_XET while patched, so `upload_folder` takes the plain
    `create_commit` path, whose commit POST is not retried: `fail_commit = 500` raises at once. With hf_xet
    enabled, `upload_folder` runs its pipelined uploader, which retries a 5xx commit with backoff (6 tries, ~23 s)
    before raising; 4xx fail at once. Neither mode produces Xet or LFS traffic against this server.
    `hub_cache`: optional directory used as huggingface_hub's cache (HF_HUB_CACHE) while patched.
    """

    def __init__(
        self, *, user: str = "fake-user", disable_xet: bool = True, hub_cache: str | os.PathLike | None = None
    ):
        self.user, self.disable_xet, self.hub_cache = user, disable_xet, hub_cache
        self.fail_commit: int | None = None
        self.fail_create_repo: int | None = None
        self.fail_download: dict[str, int] = {}  # file name -> HTTP status its download answers
        self.answer_delay = 0.0  # seconds before every answer
        self.requests: list[RecordedRequest] = []
        self.uploads: list[Upload] = []
        self.unhandled: list[RecordedRequest] = []
        self._repos: dict[tuple[str, str], _Repo] = {}  # (repo_type, repo_id) -> repo
        self._lock = threading.RLock()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._patch = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-hub-")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeHub:
        self.start()
        self._patch = patch_hf_endpoint(self.url, disable_xet=self.disable_xet, hub_cache=self.hub_cache)
        try:
            self._patch.__enter__()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._patch.__exit__(*exc)
        finally:
            self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "FakeHub is not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ test helpers
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> bool:
        """Create a repo with one empty commit on "main"; False if it already exists."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return False
            repo = self._repos[(repo_type, repo_id)] = _Repo(private=private)
            self._new_commit(repo, "main", {}, "initial commit")
            return True

    def add_file(
        self, repo_id: str, path: str, data: bytes | str, repo_type: str = "model", revision: str = "main"
    ) -> str:
        """Seed a file (creating the repo if needed) in a new commit on `revision`; returns the commit sha."""
        data = data.encode() if isinstance(data, str) else bytes(data)
        with self._lock:
            self.create_repo(repo_id, repo_type)
            repo = self._repos[(repo_type, repo_id)]
            tree = {**repo.commits[repo.refs[revision]], path: self._store_blob(data)}
            return self._new_commit(repo, revision, tree, f"add {path}")

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self._repos

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """{path: bytes} of the repo at `revision` (branch or commit sha)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return {p: self._read_blob(b) for p, b in sorted(repo.commits[self._resolve(repo, revision)].items())}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit shas of the repo, oldest first."""
        return list(self._get_repo(repo_type, repo_id).commits)

    def all_uploaded_bytes(self) -> bytes:
        """All bytes clients sent, to grep for secrets: decoded commit file contents (rejected commits included)
        plus every raw request body. Request headers (where the Authorization token lives) are not included."""
        with self._lock:
            return b"\n".join([u.data for u in self.uploads] + [r.body for r in self.requests if r.body])

    # ------------------------------------------------------------------ storage
    def _store_blob(self, data: bytes) -> str:
        path = Path(self._tmp.name, "blobs", hashlib.sha256(data).hexdigest())
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path.name

    def _read_blob(self, digest: str) -> bytes:
        return Path(self._tmp.name, "blobs", digest).read_bytes()

    def _new_commit(self, repo: _Repo, branch: str, tree: dict[str, str], message: str) -> str:
        seed = json.dumps([repo.refs.get(branch), sorted(tree.items()), message, len(repo.commits), time.time()])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        if (repo_type, repo_id) not in self._repos:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return self._repos[(repo_type, repo_id)]

    def _resolve(self, repo: _Repo, revision: str) -> str:
        """Branch, commit sha or unique sha prefix (7+ chars) -> commit sha."""
        if revision in repo.refs:
            return repo.refs[revision]
        matches = [sha for sha in repo.commits if len(revision) >= 7 and sha.startswith(revision)]
        if len(matches) != 1:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return matches[0]

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, raw_path: str, body: bytes):
        """Returns a JSON-able object (status 200) or a (status, headers, bytes-or-JSON-able) tuple."""
        split = urlsplit(raw_path)
        path, query = split.path, {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            if path.startswith("/api/"):
                return self._route_api(method, path, query, body)
            # File download (HEAD for metadata, then GET): /[datasets/]owner/name/resolve/<revision>/<path>
            m = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and method in ("GET", "HEAD"):
                repo_type = _API_TYPES[m.group(1) or "models"]
                return self._resolve_file(repo_type, *(unquote(g) for g in m.group(2, 3, 4)))
        raise _NoRouteError(method, path)

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, filename: str):
        if filename in self.fail_download:
            raise _HubError(self.fail_download[filename], f"fake Hub fails {filename}")
        repo = self._get_repo(repo_type, repo_id)
        sha = self._resolve(repo, revision)
        if filename not in repo.commits[sha]:  # X-Repo-Commit lets the client cache the absence (.no_exist/)
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = self._read_blob(repo.commits[sha][filename])
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',  # required; names the blob file in the client's cache
            "X-Repo-Commit": sha,  # required: without it the client says this is not a Hub endpoint
        }
        return 200, headers, data

    def _route_api(self, method: str, path: str, query: dict, body: bytes):
        if path == "/api/whoami-v2":
            return {
                "type": "user",
                "name": self.user,
                "fullname": self.user,
                "orgs": [],
                "auth": {"type": "access_token"},
            }
        if path == "/api/agent-harnesses" or path.startswith("/api/telemetry/"):  # client housekeeping
            raise _HubError(404, "not served by FakeHub")  # (a 200 would make the client cache it in HF_HOME)
        if path == "/api/validate-yaml" and method == "POST":  # README.md metadata check before a commit
            return {"errors": [], "warnings": []}
        if path == "/api/repos/create" and method == "POST":
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
            url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
            if self.fail_create_repo is not None:
                raise _HubError(self.fail_create_repo, "FakeHub: injected create-repo failure")
            if not self.create_repo(repo_id, repo_type, private=payload.get("visibility") == "private"):
                # create_repo(exist_ok=True) ignores the 409 but then reads "url" from this body.
                return 409, {}, {"error": f"You already created this {repo_type} repo", "url": url}
            return {"url": url, "name": repo_id}

        # Per-repo endpoints: /api/{models|datasets|spaces}/owner/name[/<action>/<revision>[/<path>]]
        actions = "revision|tree|preupload|commit|branch"
        m = re.fullmatch(rf"/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/({actions})/([^/]+)(/.*)?)?", path)
        if not m:
            raise _NoRouteError(method, path)
        repo_type, repo_id, action = _API_TYPES[m.group(1)], unquote(m.group(2)), m.group(3)
        revision, sub_path = unquote(m.group(4) or "main"), unquote(m.group(5) or "").strip("/")
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, revision, body, create_pr=query.get("create_pr") == "1")
        repo = self._get_repo(repo_type, repo_id)
        if action in (None, "revision") and method == "GET":  # model_info / dataset_info / repo_info
            return self._info(repo_id, repo, revision, blobs=query.get("blobs") in _TRUE)
        if action == "tree" and method == "GET":  # list_repo_tree / list_repo_files
            return self._tree(repo, revision, sub_path, recursive=query.get("recursive") in _TRUE)
        if action == "preupload" and method == "POST":
            tree = repo.commits[self._resolve(repo, revision)]
            # "oid" of the current file (if any) lets the client drop unchanged files from the commit.
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": self._oid(tree, f["path"])}
                for f in json.loads(body)["files"]
            ]
            return {"files": files, "commitOid": repo.refs.get(revision)}
        if action == "branch" and method == "POST":  # create_branch (used by push_to_hub(revision=...))
            if revision in repo.refs:
                raise _HubError(409, f"Branch {revision} already exists")
            repo.refs[revision] = self._resolve(repo, (json.loads(body or b"{}") or {}).get("startingPoint") or "main")
            return {}
        raise _NoRouteError(method, path)

    def _oid(self, tree: dict[str, str], path: str) -> str | None:
        return git_blob_sha1(self._read_blob(tree[path])) if path in tree else None

    def _info(self, repo_id: str, repo: _Repo, revision: str, blobs: bool) -> dict:
        """ModelInfo / DatasetInfo JSON; `sha` is what snapshot_download / resolve_revision need."""
        sha = self._resolve(repo, revision)
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        if blobs:
            for s in siblings:
                data = self._read_blob(repo.commits[sha][s["rfilename"]])
                s.update(size=len(data), blobId=git_blob_sha1(data))
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return {"id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings, "createdAt": now,
                "lastModified": now}  # fmt: skip

    def _tree(self, repo: _Repo, revision: str, sub_path: str, recursive: bool) -> list[dict]:
        """Files and folders under `sub_path`, without "lfs" / "xetHash" keys (so: no Xet downloads)."""
        tree = repo.commits[self._resolve(repo, revision)]
        prefix = f"{sub_path}/" if sub_path else ""
        entries: dict[str, dict] = {}
        for p in sorted(p for p in tree if p.startswith(prefix)):
            parts = p[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):  # parent folders
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = {
                    "type": "directory",
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                    "path": folder,
                }
            if recursive or len(parts) == 1:
                data = self._read_blob(tree[p])
                entries[p] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
        if sub_path and not entries:
            raise _HubError(404, f"Entry not found: {sub_path}", "EntryNotFound")
        return list(entries.values())

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, create_pr: bool):
        """ndjson: a "header" line (summary, description, parentCommit?), then "file" (base64 content),
        "deletedFile", "deletedFolder" lines ("lfsFile" never comes: preupload never answers "lfs")."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        ops = [(item["key"], item["value"]) for item in lines if item["key"] != "header"]
        added = {}  # recorded before anything can fail, so leak checks also see rejected uploads
        for key, value in ops:
            if key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                added[value["path"]] = Upload(repo_type, repo_id, value["path"], data, committed=False)
        self.uploads.extend(added.values())
        if self.fail_commit is not None:
            raise _HubError(self.fail_commit, "FakeHub: injected commit failure")
        repo = self._get_repo(repo_type, repo_id)
        if create_pr:  # create_commit(create_pr=True): commit onto a new refs/pr/N branch
            base, revision = self._resolve(repo, revision), f"refs/pr/{1 + sum('/pr/' in r for r in repo.refs)}"
            repo.refs[revision] = base
        if revision not in repo.refs:  # commits go to branches only
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if header.get("parentCommit") and not repo.refs[revision].startswith(header["parentCommit"]):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(repo.commits[repo.refs[revision]])
        for key, value in ops:
            if key == "file":
                tree[value["path"]] = self._store_blob(added[value["path"]].data)
            elif key == "deletedFile" and tree.pop(value["path"], None) is None:
                raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                tree = {p: b for p, b in tree.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key not in ("file", "deletedFile"):
                raise _HubError(400, f"FakeHub: unsupported commit operation {key!r}")
        sha = self._new_commit(repo, revision, tree, header.get("summary", ""))
        for upload in added.values():
            upload.committed = True
        url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        pr_url = f"{url}/discussions/{revision.rsplit('/', 1)[-1]}" if create_pr else None
        return {"success": True, "commitOid": sha, "commitUrl": f"{url}/commit/{sha}", "pullRequestUrl": pr_url}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length

    def log_message(self, format, *args):  # no per-request logging on stderr
        pass

    def _handle(self):
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = RecordedRequest(self.command, self.path, self.headers, body)
        with hub._lock:
            hub.requests.append(request)
        try:
            result = hub._route(self.command, self.path, body)
            status, headers, payload = result if isinstance(result, tuple) else (200, {}, result)
        except _HubError as e:
            status, payload = e.status, {"error": e.message}
            headers = {**e.headers, "X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            if isinstance(e, _NoRouteError):
                hub.unhandled.append(request)
        except Exception:  # a bug in the fake: make it visible in the client's error and on stderr
            status, headers, payload = 500, {}, {"error": "FakeHub crashed:\n" + traceback.format_exc()}
            print(payload["error"], file=sys.stderr)
        if not isinstance(payload, bytes):
            payload, headers = json.dumps(payload).encode(), {**headers, "Content-Type": "application/json"}
        time.sleep(hub.answer_delay)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 (http.server's naming)


# ---------------------------------------------------------------------- endpoint patching
_ENDPOINT_NAMES = {"ENDPOINT", "HF_ENDPOINT", "HUGGINGFACE_CO_RESOLVE_ENDPOINT"}
_URL_TEMPLATE = "{}/{{repo_id}}/resolve/{{revision}}/{{filename}}"  # constants.HUGGINGFACE_CO_URL_TEMPLATE


def _endpoint_copies(old: str, new: str) -> list[tuple[object, str, str]]:
    """(object, attribute, new value) for every imported copy of endpoint `old`: module-level ENDPOINT-like
    strings and URL templates (huggingface_hub.constants' own included), and module-level HfApi / HfFileSystem
    instances, which keep the endpoint they were created with (`huggingface_hub.hf_api.api`, behind the top-level
    `create_repo` / `upload_folder` / ... functions, `huggingface_hub.hffs`, `transformers.utils.hub._hf_api`)."""
    from huggingface_hub import HfApi, HfFileSystem

    found = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        for name, value in list(namespace.items()) if isinstance(namespace, dict) else []:
            kind = type(value)  # not isinstance(): it can trigger lazy / deprecated attribute hooks
            try:
                if kind is str and name in _ENDPOINT_NAMES and value == old:
                    found.append((module, name, new))
                elif kind is str and name == "HUGGINGFACE_CO_URL_TEMPLATE" and value == _URL_TEMPLATE.format(old):
                    found.append((module, name, _URL_TEMPLATE.format(new)))
                elif issubclass(kind, (HfApi, HfFileSystem)) and value.endpoint == old:
                    found.append((value, "endpoint", new))
                    if issubclass(kind, HfFileSystem):
                        found.append((value._api, "endpoint", new))
                        value.dircache.clear()
            except Exception:  # exotic module attributes: never let this break a test
                continue
    return found


@contextlib.contextmanager
def patch_hf_endpoint(url: str, *, disable_xet: bool = True, hub_cache: str | os.PathLike | None = None):
    """Point huggingface_hub at `url`, in this process (even when already imported) and in subprocesses.

    os.environ: HF_ENDPOINT, NO_PROXY/no_proxy += 127.0.0.1,localhost, HF_HUB_DISABLE_TELEMETRY (+ HF_HUB_DISABLE_XET,
    HF_HUB_CACHE if asked); HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE are removed.
    In process: constants.ENDPOINT / HUGGINGFACE_CO_URL_TEMPLATE and their copies (`_endpoint_copies`),
    constants.HF_URL_HOSTS / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET (/ HF_HUB_CACHE), the Hub-origin allow-list of
    utils._http, fsspec's HfFileSystem instance cache, and the shared HTTP client (its proxy settings come from the
    environment at creation). Everything is restored on exit.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import _http

    url, old = url.rstrip("/"), constants.ENDPOINT
    env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, [os.environ.get(key), "127.0.0.1", "localhost"]))
    patches = _endpoint_copies(old, url) + [
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"}),
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "HF_HUB_DISABLE_XET", constants.HF_HUB_DISABLE_XET or disable_xet),
        (_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(url)}),
    ]
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(hub_cache)
        patches.append((constants, "HF_HUB_CACHE", str(hub_cache)))

    def reset_late_copies():  # HfApi objects created lazily inside the block (e.g. transformers' shared one)
        for obj, attr, value in _endpoint_copies(url, old):
            setattr(obj, attr, value)

    with contextlib.ExitStack() as stack:  # undone in reverse order
        stack.callback(_http.close_session)
        stack.callback(reset_late_copies)
        stack.enter_context(mock.patch.dict(os.environ, env))
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.pop(key, None)
        stack.enter_context(mock.patch.dict(HfFileSystem._cache, clear=True))  # cached instances keep old endpoints
        for obj, attr, value in patches:
            stack.enter_context(mock.patch.object(obj, attr, value))
        _http.close_session()
        yield
