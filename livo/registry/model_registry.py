"""Kubeflow Model Registry entries for registered versions (the `model-registry` client, REST API v1).

Configured by environment variables; without `LIVO_MODEL_REGISTRY_URL` the step is skipped with an info log:

- `LIVO_MODEL_REGISTRY_URL`: ``http(s)://host[:port]`` of the model-registry REST service, e.g.
  ``http://model-registry-service.kubeflow.svc.cluster.local:8080``;
- `LIVO_MODEL_REGISTRY_AUTHOR`: author recorded on versions (default ``livo``);
- `LIVO_MODEL_REGISTRY_TOKEN_PATH`: file holding a bearer token (default: the client's own lookup,
  `KF_PIPELINES_SA_TOKEN_PATH` and then the pod's service-account token).

One registered model per livo model name, one model version per livo version (same name, ``v3``), one model artifact
whose URI is the version's ``s3://`` prefix. The version carries the KFP run id and name and the lineage hashes as
custom properties. Registering a version that already exists for the same KFP run returns it (idempotent); the same
version name from another run is a conflict.
"""

from __future__ import annotations

import logging
import os
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


def version_properties(record: Any) -> dict[str, str | bool]:
    """Custom properties of a model version: the KFP run and the lineage hashes (strings and bools only)."""
    props: dict[str, str | bool] = {
        "kfp_run_id": record.pipeline.run_id,
        "kfp_run_name": record.pipeline.run_name,
        "pipeline_spec_hash": record.pipeline.spec_hash,
        "git_commit": record.pipeline.git_commit,
        "image_digest": record.pipeline.image_digest,
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
    def register(self, record: Any, *, uri: str) -> dict[str, Any]:
        """Create (or find, for the same KFP run) the registered model, version and artifact of `record`."""
        client = self._connect()
        name, version = record.model.name, record.model.version
        properties = version_properties(record)
        existing = self._find_version(client, name, version)
        created = False
        if existing is not None:
            run_id = (existing.custom_properties or {}).get("kfp_run_id")
            if run_id != record.pipeline.run_id:
                raise LivoError(f"{name} version {version} already exists in the Kubeflow Model Registry for KFP run "
                                f"{run_id!r}, not {record.pipeline.run_id!r}; it belongs to another registration")
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
