"""Model registration, lineage records, model cards, the Kubeflow Model Registry client and scheduling.

The object store is `livo.store`, below every stage. Submodules: `versions` (where versions live, name@version
resolution), `registration` (register_model, versions, principles_changed),
`lineage` (record, verify, diff), `model_card`, `model_registry` (Kubeflow Model Registry), `schedule` (KFP recurring
runs). This package's `__init__` imports nothing (so no submodule import can loop through it).
"""
