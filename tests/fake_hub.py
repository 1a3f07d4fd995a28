"""FakeHub: a local stand-in for the Hugging Face Hub's HTTP API, the one boundary tunechain cannot reach
from here. It answers the calls huggingface_hub's create_repo, create_branch and create_commit make
(repos/create, validate-yaml, branch, preupload (every file "regular", so contents come in the commit),
commit) on 127.0.0.1, requires a bearer token, and keeps what it was sent for the test to read. The
client is the real huggingface_hub; only the server is fake."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeHub:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict] = {}   # repo id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []      # {"repo", "revision", "summary", "paths"}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers by lower-case name)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                status, answer = hub.answer(self.path.split("?")[0], body)
                self._send(status, answer)

            def _send(self, status, answer):
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            asked = json.loads(body)
            repo = f"{asked['organization']}/{asked['name']}" if asked.get("organization") else asked["name"]
            if repo in self.repos:
                return 409, {"error": "You already created this model repo"}
            self.repos[repo] = {"private": asked.get("visibility") == "private", "branches": {"main": {}}}
            return 200, {"url": f"{self.url}/{repo}", "name": repo}
        if path == "/api/validate-yaml":
            return 200, {"warnings": []}
        found = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if not found or found[1] not in self.repos:
            return 404, {"error": f"Repository not found: {path}"}
        repo, action, revision = found[1], found[2], unquote(found[3])
        branches = self.repos[repo]["branches"]
        if action == "branch":
            if revision in branches:
                return 409, {"error": "Branch already exists"}
            branches[revision] = dict(branches["main"])
            return 200, {}
        if revision not in branches:
            return 404, {"error": f"Invalid rev id: {revision}"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        added = {item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in lines if item["key"] == "file"}
        branches[revision].update(added)
        oid = hashlib.sha1(json.dumps(sorted(added)).encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits.append({"repo": repo, "revision": revision, "summary": header["summary"], "paths": sorted(added)})
        return 200, {"commitOid": oid, "commitUrl": f"{self.url}/{repo}/commit/{oid}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
