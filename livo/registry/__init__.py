"""Object store, model registration, lineage records, model cards, the Kubeflow Model Registry client and scheduling.

Submodules: `store` (ObjectStore, EmbeddedSeaweedFS), `registration` (register_model, versions, principles_changed),
`lineage` (record, verify, diff), `model_card`, `model_registry` (Kubeflow Model Registry), `schedule` (KFP recurring
runs). Importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def principles_changed(store: Any, model_name: str, principle_set_hash: str) -> bool:
    """Has the principle set changed since the latest registered version of `model_name`? (see `registration`)"""
    from livo.registry.registration import principles_changed as _principles_changed

    return _principles_changed(store, model_name, principle_set_hash)


__all__ = ["principles_changed"]
