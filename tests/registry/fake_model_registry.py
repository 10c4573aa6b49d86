"""A small in-process Kubeflow Model Registry REST server (API v1) for tests: the endpoints the `model-registry`
client calls to register a model, a version and an artifact, to read them back (by name or by id, a version's
artifacts) and to update a version's custom properties (PATCH). It stores what it receives, adds
ids and timestamps the way the real server does, answers 404 with the server's error body, and records every request.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from fake_rest import FakeRestServer

API = "/api/model_registry/v1"


class FakeModelRegistry(FakeRestServer):
    unauthorized = (401, {"code": "401", "message": "unauthorized"})

    def __init__(self, required_token: str | None = None):
        super().__init__(required_token)
        self.registered_models: dict[str, dict[str, Any]] = {}
        self.model_versions: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.artifact_parent: dict[str, str] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

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
            if method == "GET" and path.startswith(f"{API}/model_versions/") and path.endswith("/artifacts"):
                version_id = path.split("/")[-2]
                if version_id not in self.model_versions:
                    return _not_found("model version")
                items = [a for i, a in self.artifacts.items() if self.artifact_parent[i] == version_id]
                return 200, {"items": items, "size": len(items), "pageSize": int(query.get("pageSize", 100)),
                             "nextPageToken": ""}
            if method in ("GET", "PATCH") and path.startswith(f"{API}/model_versions/") and path.count("/") == 5:
                version = self.model_versions.get(path.rsplit("/", 1)[1])
                if version is None:
                    return _not_found("model version")
                if method == "PATCH":  # the server replaces the fields the update carries (customProperties whole)
                    version.update({k: v for k, v in (body or {}).items() if k not in ("id", "registeredModelId")})
                    version["lastUpdateTimeSinceEpoch"] = str(int(time.time() * 1000))
                return 200, version
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


def _not_found(what: str) -> tuple[int, dict[str, str]]:
    return 404, {"code": "404", "message": f"no {what} found"}
