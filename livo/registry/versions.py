"""Where registered versions live in the object store, and how a name and version resolve.

`models/<name>/v<N>/` holds one version; it is committed when its `manifest.json` exists. Below lineage and
registration (both address versions through this module), so neither imports the other for it.
"""

from __future__ import annotations

import re
from typing import Any

from livo.errors import ConfigError, ModelNotFound

MANIFEST_FILE = "manifest.json"  # the commit object of a version (sealed by registration, checked by lineage verify)
MODELS_PREFIX = "models"
VALUE_ENCODER_DIR = "value_encoder"
MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the same rule as livo.orchestration.MODEL_NAME_RE
VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")


def model_prefix(name: str) -> str:
    _check_name(name)
    return f"{MODELS_PREFIX}/{name}/"


def version_prefix(name: str, version: str) -> str:
    if not VERSION_RE.match(version):
        raise ConfigError(f"version {version!r}: versions are v1, v2, …")
    return f"{model_prefix(name)}{version}/"


def _check_name(name: str) -> None:
    if not MODEL_NAME_RE.match(name or ""):
        raise ConfigError(f"model name {name!r}: use 1-63 lowercase letters, digits and '-', starting with a letter or "
                          "digit")


def _version_number(version: str) -> int:
    match = VERSION_RE.match(version)
    assert match, version
    return int(match.group(1))


def _version_dirs(store: Any, name: str) -> list[str]:
    """Every v<N> directory under the model, committed or not, in numeric order."""
    prefix = model_prefix(name)
    names = [entry[len(prefix):].rstrip("/") for entry in store.list(prefix, recursive=False) if entry.endswith("/")]
    return sorted((n for n in names if VERSION_RE.match(n)), key=_version_number)


def list_versions(store: Any, name: str) -> list[str]:
    """Committed versions of `name` (those whose manifest.json exists), oldest first."""
    return [v for v in _version_dirs(store, name) if store.exists(version_prefix(name, v) + MANIFEST_FILE)]


def list_models(store: Any) -> list[str]:
    names = [entry[len(MODELS_PREFIX) + 1:].rstrip("/") for entry in store.list(MODELS_PREFIX, recursive=False)
             if entry.endswith("/")]
    return sorted(n for n in names if MODEL_NAME_RE.match(n))


def latest_version(store: Any, name: str) -> str | None:
    versions = list_versions(store, name)
    return versions[-1] if versions else None


def resolve_version(store: Any, name: str, version: str | None) -> str:
    """`version`, or the latest when None; a clear error for an unknown model or version."""
    versions = list_versions(store, name)
    if not versions:
        known = list_models(store)
        raise ModelNotFound(f"unknown model {name!r} in {store.uri(MODELS_PREFIX)}: no registered version"
                          + (f"; registered models: {', '.join(known)}" if known else "; nothing is registered yet"))
    if version is None:
        return versions[-1]
    if version not in versions:
        raise ModelNotFound(f"unknown version {name}@{version}; registered versions: {', '.join(versions)}")
    return version
