"""A local HTTP server that answers like the Hugging Face hub and CivitAI do, with real files.

Only the parts ALICE uses: HF's model search, revision, tree and resolve routes (as
huggingface_hub calls them), CivitAI's /api/v1/models and download routes, and `/redirect?to=URL`
(a 302 there). Downloads honour HTTP Range, and a file can be told to break off half-way (once,
to test resuming, or always), or to come without a Content-Length.

A repo can be gated as the real hub gates FLUX.1-dev: its listing is public, its files answer
401 without a token and 403 to a token not granted access, both with `X-Error-Code: GatedRepo`
and the hub's words; with `hf_tokens` set, any other token is refused with a 401 everywhere.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeSources:
    hf_repos: dict[str, Path] = field(default_factory=dict)  # repo id -> folder
    civitai_models: dict[int, dict] = field(default_factory=dict)  # id -> CivitAI model JSON
    civitai_files: dict[int, Path] = field(default_factory=dict)  # version id -> file
    break_once: set[str] = field(default_factory=set)  # request paths to cut off half-way, once
    break_always: set[str] = field(default_factory=set)  # request paths to cut off half-way, every time
    no_length: bool = False  # send files without Content-Length (the end is where the connection closes)
    slow: bool = False  # trickle downloads (to cancel one mid-way)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    seen_paths: list[str] = field(default_factory=list)  # every request, "GET /path", in order
    stall: threading.Event | None = None  # downloads' bodies wait until it is set (a task before its first byte)
    stalled: list[str] = field(default_factory=list)  # the paths that waited
    gated: dict[str, set[str]] = field(default_factory=dict)  # gated repo id -> tokens granted access
    hf_tokens: set[str] | None = None  # the tokens the hub knows (None: it takes any)
    url: str = ""

    def add_civitai_file(self, model_id: int, version_id: int, name: str, kind: str, path: Path,
                         sha256: str | None = None, base_model: str = "SD 1.5") -> None:
        digest = sha256 or hashlib.sha256(path.read_bytes()).hexdigest().upper()
        self.civitai_files[version_id] = path
        self.civitai_models[model_id] = {
            "id": model_id, "name": name, "type": kind, "nsfw": False, "creator": {"username": "tester"},
            "stats": {"downloadCount": 10}, "tags": ["test"],
            "modelVersions": [{
                "id": version_id, "name": "v1", "baseModel": base_model,
                "files": [{"id": version_id * 10, "name": path.name, "sizeKB": path.stat().st_size / 1024,
                           "primary": True, "hashes": {"SHA256": digest},
                           "downloadUrl": f"{self.url}/api/download/models/{version_id}"}],
            }],
        }


def start(sources: FakeSources) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            sources.seen_headers.append(dict(self.headers))
            sources.seen_paths.append(f"{self.command} {self.path}")
            url = urlparse(self.path)
            query = parse_qs(url.query)
            path = url.path
            if path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if path == "/api/models":
                search = query.get("search", [""])[0]
                found = [{"id": repo, "_id": repo, "modelId": repo, "downloads": 100, "likes": 5,
                          "tags": ["diffusers", "text-to-image"], "pipeline_tag": "text-to-image"}
                         for repo in sources.hf_repos if search.lower() in repo.lower()]
                return self.json(found)
            if path.startswith("/api/models/"):
                if self.hub_refuses_token():
                    return
                return self.hf_api(path.removeprefix("/api/models/"))
            if path.startswith("/api/v1/models"):
                return self.civitai_api(path, query)
            if path.startswith("/api/download/models/"):
                file = sources.civitai_files.get(int(path.rsplit("/", 1)[1]))
                return self.file(file, head) if file else self.send_error(404)
            for repo, folder in sources.hf_repos.items():
                prefix = f"/{repo}/resolve/{COMMIT}/"
                if path.startswith(prefix):
                    if self.hub_refuses_token() or self.hub_refuses_gated(repo):
                        return
                    return self.file(folder / path.removeprefix(prefix), head)
            self.send_error(404)

        def bearer(self) -> str | None:
            value = self.headers.get("Authorization", "")
            return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None

        def hub_refuses_token(self) -> bool:
            if sources.hf_tokens is None or self.bearer() is None or self.bearer() in sources.hf_tokens:
                return False
            self.refuse(401, None, "Invalid credentials in Authorization header")
            return True

        def hub_refuses_gated(self, repo: str) -> bool:
            if repo not in sources.gated or self.bearer() in sources.gated[repo]:
                return False
            if self.bearer() is None:
                self.refuse(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                                              "and be authenticated to access it. Please log in.")
            else:
                self.refuse(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the "
                                              f"authorized list. Visit https://huggingface.co/{repo} to ask for access.")
            return True

        def refuse(self, status: int, code: str | None, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def hf_api(self, rest: str) -> None:
            for repo, folder in sources.hf_repos.items():
                if rest.startswith(f"{repo}/revision/") or rest == repo:
                    return self.json({"id": repo, "_id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                      "siblings": [{"rfilename": p} for p in self.files(folder)]})
                if rest.startswith(f"{repo}/tree/"):
                    entries = []
                    for relative in self.files(folder):
                        data = (folder / relative).read_bytes()
                        entry = {"type": "file", "path": relative, "size": len(data),
                                 "oid": hashlib.sha1(data).hexdigest()}
                        if relative.endswith((".safetensors", ".gguf")):
                            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                            "pointerSize": 134}
                        entries.append(entry)
                    return self.json(entries)
            self.send_error(404)

        def civitai_api(self, path: str, query: dict) -> None:
            if path == "/api/v1/models":
                items = list(sources.civitai_models.values())
                if "types" in query and "query" not in query:
                    items = [i for i in items if i["type"] in query["types"]]
                if "query" in query:
                    # Like the real API: with a query its type filter is unreliable, so ignore it.
                    items = [i for i in items if query["query"][0].lower() in i["name"].lower()]
                return self.json({"items": items, "metadata": {"totalItems": len(items)}})
            model = sources.civitai_models.get(int(path.rsplit("/", 1)[1]))
            return self.json(model) if model else self.send_error(404)

        @staticmethod
        def files(folder: Path) -> list[str]:
            return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

        def json(self, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def file(self, file: Path, head: bool) -> None:
            if not file.is_file():
                return self.send_error(404)
            data = file.read_bytes()
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged.removeprefix("bytes=").split("-")[0])
            body = data[start:]
            self.send_response(206 if start else 200)
            if not sources.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            # huggingface_hub's own reads (a plan's model_index.json) are the listing, not the download.
            if sources.stall is not None and "hf_hub" not in self.headers.get("User-Agent", ""):
                sources.stalled.append(self.path)
                sources.stall.wait(60)
            if self.path in sources.break_always or (self.path in sources.break_once and not start):
                sources.break_once.discard(self.path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # the connection drops half-way
                return
            step = 4096 if sources.slow else len(body)
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])
                if sources.slow:
                    import time

                    time.sleep(0.05)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sources.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
