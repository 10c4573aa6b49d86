"""A small in-process KFP API server (v2beta1) for tests: the pipeline, experiment and recurring-run endpoints that
`livo schedule` calls, with KFP's JSON field names and 404/409 answers. Every request is recorded."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from fake_rest import FakeRestServer

API = "/apis/v2beta1"


class FakeKfpApi(FakeRestServer):
    unauthorized = (401, {"error": "unauthenticated", "code": 16})

    def __init__(self, required_token: str | None = None):
        super().__init__(required_token)
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.uploads: list[bytes] = []
        self.versions: dict[str, list[dict[str, Any]]] = {}  # pipeline id -> versions, oldest first
        self.version_uploads: list[bytes] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add_pipeline(self, name: str) -> str:
        pipeline_id = f"pipeline-{next(self._ids)}"
        self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "name": name, "display_name": name}
        self.add_version(pipeline_id, name)  # KFP creates a first version named after the pipeline
        return pipeline_id

    def add_version(self, pipeline_id: str, name: str) -> dict[str, Any]:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": f"version-{next(self._ids)}", "name": name,
                   "display_name": name, "created_at": f"2026-11-29T00:00:{len(self.versions.get(pipeline_id, [])):02d}Z"}
        self.versions.setdefault(pipeline_id, []).append(version)
        return version

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path, query, body if not isinstance(body, bytes) else "<multipart>"))
            if method == "GET" and path.startswith(f"{API}/pipelines/names/"):
                name = path.rsplit("/", 1)[1]
                found = [p for p in self.pipelines.values() if p["name"] == name]
                return (200, found[0]) if found else (404, {"error": f"pipeline {name} not found", "code": 5})
            if method == "POST" and path == f"{API}/pipelines/upload":
                self.uploads.append(body)
                pipeline_id = self.add_pipeline(query["name"])
                return 200, self.pipelines[pipeline_id]
            if method == "POST" and path == f"{API}/pipelines/upload_version":
                if query.get("pipelineid") not in self.pipelines:
                    return 404, {"error": f"pipeline {query.get('pipelineid')} not found", "code": 5}
                self.version_uploads.append(body)
                return 200, self.add_version(query["pipelineid"], query["name"])
            if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
                pipeline_id = path.split("/")[-2]
                assert query.get("sort_by") == "created_at desc", query
                items = list(reversed(self.versions.get(pipeline_id, [])))[:int(query.get("page_size", 100))]
                return 200, {"pipeline_versions": items, "total_size": len(self.versions.get(pipeline_id, []))}
            if method == "GET" and path == f"{API}/experiments":
                wanted = _filter_value(query.get("filter"))
                items = [e for e in self.experiments.values() if wanted is None or e["display_name"] == wanted]
                return 200, {"experiments": items, "total_size": len(items)}
            if method == "POST" and path == f"{API}/experiments":
                experiment = {**body, "experiment_id": f"experiment-{next(self._ids)}"}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if method == "GET" and path == f"{API}/recurringruns":
                wanted = _filter_value(query.get("filter"))
                items = [r for r in self.recurring_runs.values()
                         if r.get("experiment_id") == query.get("experiment_id")
                         and (wanted is None or r["display_name"] == wanted)]
                return 200, {"recurringRuns": items, "total_size": len(items)}
            if method == "POST" and path == f"{API}/recurringruns":
                pipeline_id = (body.get("pipeline_version_reference") or {}).get("pipeline_id")
                if pipeline_id not in self.pipelines:
                    return 404, {"error": f"pipeline {pipeline_id} not found", "code": 5}
                run = {**body, "recurring_run_id": f"recurring-{next(self._ids)}", "status": "ENABLED"}
                self.recurring_runs[run["recurring_run_id"]] = run
                return 200, run
            if method == "DELETE" and path.startswith(f"{API}/recurringruns/"):
                self.recurring_runs.pop(path.rsplit("/", 1)[1], None)
                return 200, {}
            return 404, {"error": f"fake KFP has no route {method} {path}", "code": 5}


def _filter_value(raw: str | None) -> str | None:
    if not raw:
        return None
    predicates = json.loads(raw)["predicates"]
    assert predicates[0]["operation"] == "EQUALS" and predicates[0]["key"] == "display_name", predicates
    return predicates[0]["string_value"]
