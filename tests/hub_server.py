"""A tiny in-process fake of the Hugging Face Hub, enough for ``create_repo`` + ``upload_folder``.

Routes (what huggingface_hub 2.4 calls, read from its ``hf_api.py`` and ``_commit_api.py``):

- ``POST /api/repos/create``: JSON ``{name, organization, visibility?, type}`` -> ``{"url": ...}``,
  409 when the repo exists (``create_repo(exist_ok=True)`` swallows it);
- ``POST /api/validate-yaml``: JSON ``{content, repoType}`` -> ``{"errors": [], "warnings": []}``,
  400 with errors when the README front matter is not a YAML mapping;
- ``POST /api/models/{repo}/branch/{branch}``: 409 when the branch exists;
- ``POST /api/models/{repo}/preupload/{rev}``: JSON ``{files: [{path, sample, size}]}`` ->
  ``{files: [{path, uploadMode: "regular", shouldIgnore: false, oid: null}]}``; answering
  "regular" for every file makes the client inline all contents in the commit, so neither the
  LFS batch API nor Xet storage is needed (with or without ``hf_xet`` installed);
- ``POST /api/models/{repo}/commit/{rev}``: ndjson body, a ``header`` line ``{summary,
  description}`` then one ``file`` line per file ``{path, content (base64), encoding}`` or one
  ``deletedFile`` line ``{path}`` per file to delete -> ``{commitUrl, commitOid, success, pullRequestUrl}``;
- ``GET /api/models/{repo}/tree/{rev}`` (``upload_folder(delete_patterns=...)`` lists the files):
  every file of the branch, ``[{type: "file", path, size, oid}]``, in one page.

Anything else answers 404 and is recorded, so tests can check that nothing unexpected was called.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

REPO_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+|[^/]+)/(?P<action>preupload|commit|branch|tree)/(?P<rev>[^/]+)$")


@dataclass
class Request:
    """One recorded request (header names lower-cased) and the status it was answered with."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Commit:
    """One commit received: its repo, branch, header and file contents."""

    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]
    deleted: list[str] = field(default_factory=list)


@dataclass
class Repo:
    """A fake repository: branches and their current files."""

    visibility: str | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


class FakeHub:
    """The server state and lifecycle: ``with FakeHub() as hub: HfApi(endpoint=hub.url)``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.commits: list[Commit] = []
        self.repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one request: (status, JSON body)."""
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return _validate_yaml(json.loads(body)["content"])
        match = REPO_ROUTE.match(path)
        if match is None or method != ("GET" if match["action"] == "tree" else "POST"):
            return 404, {"error": f"fake hub does not implement {method} {path}"}
        repo_id, action, revision = match["repo"], match["action"], unquote(match["rev"])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": f"Repository {repo_id} not found"}
        if action == "branch":
            return self._create_branch(repo, revision)
        if revision not in repo.branches:
            return 404, {"error": f"Revision {revision} not found"}
        if action == "preupload":
            return 200, _preupload(json.loads(body))
        if action == "tree":
            return 200, [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                         for name, data in sorted(repo.branches[revision].items())]
        return self._commit(repo_id, repo, revision, body)

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = Repo(visibility=payload.get("visibility"))
        return 200, {"url": url, "name": repo_id}

    @staticmethod
    def _create_branch(repo: Repo, branch: str) -> tuple[int, dict[str, Any]]:
        if branch in repo.branches:
            return 409, {"error": "Reference already exists"}
        repo.branches[branch] = dict(repo.branches["main"])
        return 200, {}

    def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes) -> tuple[int, dict[str, Any]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        if header["key"] != "header":
            return 400, {"error": "the commit must start with a header line"}
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in operations:
            if line["key"] == "deletedFile":
                deleted.append(line["value"]["path"])
                continue
            if line["key"] != "file":
                return 400, {"error": f"fake hub only accepts inline files and file deletions, got {line['key']}"}
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        for name in deleted:
            repo.branches[revision].pop(name, None)
        repo.branches[revision].update(files)
        self.commits.append(Commit(repo_id, revision, header["value"]["summary"], files, deleted))
        oid = hashlib.sha1(body).hexdigest()
        return 200, {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{repo_id}/commit/{oid}",
            "pullRequestUrl": None,
        }


def _preupload(payload: dict[str, Any]) -> dict[str, Any]:
    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in payload["files"]]
    return {"files": files}


def _validate_yaml(content: str) -> tuple[int, dict[str, Any]]:
    match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
    try:
        metadata = yaml.safe_load(match[1]) if match else None
    except yaml.YAMLError as err:
        metadata = err
    if not isinstance(metadata, dict):
        return 400, {"errors": [{"message": "README.md front matter is not a YAML mapping"}], "warnings": []}
    return 200, {"errors": [], "warnings": []}


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            with hub._lock:
                status, answer = hub.route(self.command, path, body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                hub.requests.append(Request(self.command, path, headers, body, status))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
            return

    return Handler
