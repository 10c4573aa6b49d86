"""Kubeflow Model Registry entries for registered versions (the `model-registry` client, REST API v1).

Configured by environment variables; without `LIVO_MODEL_REGISTRY_URL` the step is skipped with an info log:

- `LIVO_MODEL_REGISTRY_URL`: ``http(s)://host[:port]`` of the model-registry REST service, e.g.
  ``http://model-registry-service.kubeflow.svc.cluster.local:8080``;
- `LIVO_MODEL_REGISTRY_AUTHOR`: author recorded on versions (default ``livo``);
- `LIVO_MODEL_REGISTRY_TOKEN_PATH`: file holding a bearer token (default: the client's own lookup,
  `KF_PIPELINES_SA_TOKEN_PATH` and then the pod's service-account token).

One registered model per livo model name, one model version per livo version (same name, ``v3``), one model artifact
whose URI is the version's ``s3://`` prefix. The version carries, as custom properties, the livo name and version, the
sha256 of its lineage.json as stored (`lineage_sha256`), the KFP run id and name, the MLflow run id and tracking URI,
the report URI and the lineage hashes. Registering a version that already exists for the same KFP run returns it
(idempotent; properties it lacks, e.g. from before a property was added, are filled in); the same version name from
another run, or another lineage digest for the same run, is a conflict.

`find_version(id)` reads a version back by its registry id (`livo lineage show mr:<id>`) and `livo_reference` maps it
to the livo name@version whose lineage it carries.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import urlparse

from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event

logger = get_logger("livo.registry.model_registry")

ENV_URL = "LIVO_MODEL_REGISTRY_URL"
ENV_AUTHOR = "LIVO_MODEL_REGISTRY_AUTHOR"
ENV_TOKEN_PATH = "LIVO_MODEL_REGISTRY_TOKEN_PATH"
MODEL_FORMAT_NAME = "safetensors"
MODEL_FORMAT_VERSION = "1"


def version_properties(record: Any, lineage_sha256: str = "") -> dict[str, str | bool]:
    """Custom properties of a model version: the livo name@version, the lineage digest, the KFP and MLflow runs and
    the lineage hashes (strings and bools only; empty values are left out)."""
    props: dict[str, str | bool] = {
        "livo_model": record.model.name,
        "livo_version": record.model.version,
        "lineage_sha256": lineage_sha256,
        "kfp_run_id": record.pipeline.run_id,
        "kfp_run_name": record.pipeline.run_name,
        "pipeline_spec_hash": record.pipeline.spec_hash,
        "git_commit": record.pipeline.git_commit,
        "image_digest": record.pipeline.image_digest,
        "mlflow_run_id": getattr(record.pipeline, "mlflow_run_id", ""),
        "mlflow_tracking_uri": getattr(record.pipeline, "tracking_uri", ""),
        "principle_set_hash": record.principles.hash,
        "principle_ids": ",".join(record.principles.ids),
        "dataset_manifest_uri": record.dataset.manifest_uri,
        "dataset_manifest_sha256": record.dataset.manifest_sha256,
        "base_model_id": record.base_model.id,
        "base_model_fingerprint": record.base_model.fingerprint,
        "weights_sha256": record.model.weights_sha256,
        "training_seed": str(record.training.seed),
        "parent_version": record.model.parent_version or "",
        "evaluation_passed": bool(record.evaluation.passed),
        "evaluation_report_uri": record.evaluation.report_uri,
    }
    return {k: v for k, v in props.items() if v != ""}


class KubeflowModelRegistry:
    """A thin, error-translating wrapper over `model_registry.ModelRegistry`."""

    def __init__(self, url: str, *, author: str = "livo", user_token: str | None = None):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"{ENV_URL}={url!r}: expected http(s)://host[:port]")
        self.url = url.rstrip("/")
        self.secure = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.secure else 80)
        self.server_address = f"{parsed.scheme}://{parsed.hostname}"
        self.author = author
        self._user_token = user_token
        self._client: Any = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> KubeflowModelRegistry | None:
        env = os.environ if env is None else env
        url = env.get(ENV_URL, "").strip()
        if not url:
            return None
        token = None
        token_path = env.get(ENV_TOKEN_PATH)
        if token_path:
            try:
                with open(token_path, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except OSError as exc:
                raise ConfigError(f"{ENV_TOKEN_PATH}={token_path}: cannot read the token ({exc.strerror})") from None
        return cls(url, author=env.get(ENV_AUTHOR) or "livo", user_token=token)

    def __repr__(self) -> str:
        return f"KubeflowModelRegistry(url={self.url!r})"

    # ------------------------------------------------------------------------------------------------- client
    def _connect(self) -> Any:
        if self._client is None:
            import warnings

            from model_registry import ModelRegistry

            with warnings.catch_warnings():  # "User access token is missing" is expected on an open dev registry
                warnings.simplefilter("ignore")
                self._client = self._call("connect", lambda: ModelRegistry(
                    self.server_address, self.port, author=self.author, is_secure=self.secure,
                    user_token=self._user_token, log_level=logging.ERROR))
        return self._client

    def _call(self, action: str, func: Any) -> Any:
        try:
            return func()
        except LivoError:
            raise
        except Exception as exc:  # the client raises aiohttp, mr_openapi and its own errors; all end here
            raise LivoError(f"Kubeflow Model Registry at {self.url} failed to {action}: {_describe(exc)}") from None

    # --------------------------------------------------------------------------------------------- operations
    def register(self, record: Any, *, uri: str, lineage_sha256: str = "") -> dict[str, Any]:
        """Create (or find, for the same KFP run) the registered model, version and artifact of `record`.
        `lineage_sha256`: the sha256 of the version's lineage.json as stored (property `lineage_sha256`)."""
        client = self._connect()
        name, version = record.model.name, record.model.version
        properties = version_properties(record, lineage_sha256)
        existing = self._find_version(client, name, version)
        created = False
        if existing is not None:
            current = dict(existing.custom_properties or {})
            run_id = current.get("kfp_run_id")
            if run_id != record.pipeline.run_id:
                raise LivoError(f"{name} version {version} already exists in the Kubeflow Model Registry for KFP run "
                                f"{run_id!r}, not {record.pipeline.run_id!r}; it belongs to another registration")
            recorded = current.get("lineage_sha256")
            if recorded and lineage_sha256 and recorded != lineage_sha256:
                raise LivoError(f"{name} version {version} in the Kubeflow Model Registry records lineage digest "
                                f"{recorded}, but the stored lineage.json is {lineage_sha256}; run `livo lineage verify "
                                f"{name}@{version}`")
            missing = {k: v for k, v in properties.items() if k not in current}
            if missing:  # an entry written before these properties existed: fill them in, change nothing else
                existing.custom_properties = {**current, **missing}
                existing = self._call(f"update {name} {version}", lambda: client.update(existing))
        else:
            self._call(f"register {name} {version}", lambda: client.register_model(
                name, uri, model_format_name=MODEL_FORMAT_NAME, model_format_version=MODEL_FORMAT_VERSION,
                version=version, version_description=f"LiVO value encoder {name}@{version} "
                                                     f"(principle set {record.principles.hash})",
                metadata=properties))
            created = True
            existing = self._find_version(client, name, version)
            if existing is None:
                raise LivoError(f"Kubeflow Model Registry at {self.url} accepted {name} {version} but does not return "
                                "it; check the registry's logs")
        model = self._call(f"read {name}", lambda: client.get_registered_model(name))
        artifact = self._call(f"read the artifact of {name} {version}", lambda: client.get_model_artifact(name, version))
        entry = {"url": self.url, "registered_model_id": model.id, "model_version_id": existing.id,
                 "model_artifact_id": artifact.id if artifact is not None else None, "created": created}
        log_event(logger, "Kubeflow Model Registry entry " + ("created" if created else "exists"), model=name,
                  version=version, **{k: v for k, v in entry.items() if k.endswith("_id")})
        return entry

    def find_version(self, version_id: str) -> dict[str, Any] | None:
        """The model version with registry id `version_id`: its name, registered model, custom properties and model
        artifact URI; None when the registry has no such version."""
        if not re.fullmatch(r"[0-9]+", str(version_id)):
            raise ConfigError(f"model registry version id {version_id!r}: expected the numeric id of a model version")
        client = self._connect()
        found = self._call(f"look up model version {version_id}",
                           lambda: client.async_runner(client._api.get_model_version_by_id(str(version_id))))
        if found is None:
            return None
        model = self._call(f"read registered model {found.registered_model_id}", lambda: client.async_runner(
            client._api.get_registered_model_by_id(str(found.registered_model_id))))
        artifacts = self._call(f"read the artifacts of model version {version_id}", lambda: client.async_runner(
            client._api.get_model_version_artifacts(str(version_id))))
        uris = [a.uri for a in artifacts if getattr(a, "uri", None)]
        return {"url": self.url, "model_version_id": found.id, "version": found.name,
                "registered_model_id": found.registered_model_id,
                "registered_model": model.name if model is not None else None,
                "properties": dict(found.custom_properties or {}), "artifact_uri": uris[0] if uris else None}

    def _find_version(self, client: Any, name: str, version: str) -> Any:
        from model_registry.exceptions import StoreError as RegistryStoreError

        def find() -> Any:
            try:
                return client.get_model_version(name, version)
            except RegistryStoreError as exc:
                if "does not exist" in str(exc):
                    return None
                raise

        return self._call(f"look up {name} {version}", find)


_ARTIFACT_URI_RE = re.compile(r"(?:^|/)models/(?P<name>[^/]+)/(?P<version>v[1-9][0-9]*)/?$")


def livo_reference(entry: dict[str, Any]) -> tuple[str, str]:
    """(livo model name, version) of a `find_version` entry: its `livo_model`/`livo_version` properties, else
    (entries written before them) the registered model's and version's names, else the artifact URI
    ``s3://bucket/models/<name>/v<N>/``. Raises `ConfigError` when none of them names a livo version."""
    props = entry.get("properties") or {}
    if props.get("livo_model") and props.get("livo_version"):
        return str(props["livo_model"]), str(props["livo_version"])
    if entry.get("registered_model") and re.fullmatch(r"v[1-9][0-9]*", str(entry.get("version") or "")):
        return str(entry["registered_model"]), str(entry["version"])
    match = _ARTIFACT_URI_RE.search(str(entry.get("artifact_uri") or ""))
    if match:
        return match["name"], match["version"]
    raise ConfigError(f"model registry version {entry.get('model_version_id')} ({entry.get('registered_model')} "
                      f"{entry.get('version')}) is not a livo registration: no livo_model/livo_version property and "
                      f"no models/<name>/v<N>/ artifact URI")


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        body = " ".join(str(getattr(exc, "body", "") or "").split())[:200]
        hint = " (check LIVO_MODEL_REGISTRY_TOKEN_PATH)" if status in (401, 403) else ""
        return f"HTTP {status} {reason or ''} {body}".strip() + hint
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if "Cannot connect" in text or "Connect call failed" in text or isinstance(exc, ConnectionError | OSError):
        return f"unreachable ({text}); check {ENV_URL}"
    return text
