"""A small in-process Kubeflow Model Registry REST server (API v1) for tests: the endpoints the `model-registry`
client calls to register a model, a version and an artifact and to read them back. It stores what it receives, adds
ids and timestamps the way the real server does, answers 404 with the server's error body, and records every request.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/api/model_registry/v1"


class FakeModelRegistry:
    def __init__(self, required_token: str | None = None):
        self.required_token = required_token
        self.registered_models: dict[str, dict[str, Any]] = {}
        self.model_versions: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.artifact_parent: dict[str, str] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeModelRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------------ storage
    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        now = str(int(time.time() * 1000))
        return {**body, "id": str(next(self._ids)), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path, body))
            if method == "GET" and path == f"{API}/registered_models":
                items = list(self.registered_models.values())
                return 200, {"items": items, "size": len(items), "pageSize": int(query.get("pageSize", 100)),
                             "nextPageToken": ""}
            if method == "GET" and path == f"{API}/registered_model":
                found = [m for m in self.registered_models.values() if m["name"] == query.get("name")]
                return (200, found[0]) if found else _not_found("registered model")
            if method == "GET" and path.startswith(f"{API}/registered_models/"):
                model = self.registered_models.get(path.rsplit("/", 1)[1])
                return (200, model) if model else _not_found("registered model")
            if method == "POST" and path == f"{API}/registered_models":
                if any(m["name"] == body["name"] for m in self.registered_models.values()):
                    return 409, {"code": "409", "message": "registered model already exists"}
                model = self._new(body)
                self.registered_models[model["id"]] = model
                return 201, model
            if method == "GET" and path == f"{API}/model_version":
                found = [v for v in self.model_versions.values()
                         if v["name"] == query.get("name") and v["registeredModelId"] == query.get("parentResourceId")]
                return (200, found[0]) if found else _not_found("model version")
            if method == "POST" and path == f"{API}/model_versions":
                if body.get("registeredModelId") not in self.registered_models:
                    return 400, {"code": "400", "message": "registeredModelId does not exist"}
                version = self._new(body)
                self.model_versions[version["id"]] = version
                return 201, version
            if method == "POST" and path.startswith(f"{API}/model_versions/") and path.endswith("/artifacts"):
                version_id = path.split("/")[-2]
                if version_id not in self.model_versions:
                    return _not_found("model version")
                artifact = self._new(body)
                self.artifacts[artifact["id"]] = artifact
                self.artifact_parent[artifact["id"]] = version_id
                return 200, artifact
            if method == "GET" and path == f"{API}/model_artifact":
                found = [a for i, a in self.artifacts.items() if a.get("name") == query.get("name")
                         and self.artifact_parent[i] == query.get("parentResourceId")]
                return (200, found[0]) if found else _not_found("model artifact")
            return 404, {"code": "404", "message": f"fake registry has no route {method} {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self, method: str) -> None:
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if fake.required_token and self.headers.get("Authorization") != f"Bearer {fake.required_token}":
                    status, payload = 401, {"code": "401", "message": "unauthorized"}
                else:
                    status, payload = fake.route(method, parsed.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._respond("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._respond("POST")

            def do_PATCH(self) -> None:  # noqa: N802
                self._respond("PATCH")

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _not_found(what: str) -> tuple[int, dict[str, str]]:
    return 404, {"code": "404", "message": f"no {what} found"}
