"""Strict offline validation of the Kubeflow Trainer objects livo creates (TrainJob, TrainingRuntime).

The `kubeflow_trainer_api` package (Trainer v2.3, generated from the upstream OpenAPI) holds pydantic models of the
Trainer API and of the Kubernetes core types it embeds (PodSpec, EnvVar, ResourceRequirements, ...). Their
`from_dict` checks types but silently drops keys it does not know, so a misspelt field (`spec.trainer.commands`) would
pass and then be ignored by the API server's pruning. `validate_strict` walks the model tree and rejects every key the
models do not declare, naming its path; then `from_dict` checks the types.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from livo.errors import ConfigError

TRAINER_API_VERSION = "2.3"  # the Kubeflow Trainer release whose API models we validate against (docs/training.md)


def _model_classes(annotation: Any) -> tuple[list[type], bool, bool]:
    """(pydantic model classes inside `annotation`, is a list, is a dict) after unwrapping Optional/Annotated."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_classes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[type] = []
        is_list = is_dict = False
        for arg in typing.get_args(annotation):
            classes, a_list, a_dict = _model_classes(arg)
            found += classes
            is_list, is_dict = is_list or a_list, is_dict or a_dict
        return found, is_list, is_dict
    if origin in (list, typing.List):  # noqa: UP006 - generated models use typing.List
        return _model_classes(typing.get_args(annotation)[0])[0], True, False
    if origin in (dict, typing.Dict):  # noqa: UP006
        return _model_classes(typing.get_args(annotation)[1])[0], False, True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False, False
    return [], False, False


def _is_one_of_wrapper(model: type) -> bool:
    """Generated oneOf wrappers (e.g. Quantity, IntOrString) hold a primitive in `actual_instance`."""
    return "actual_instance" in model.model_fields


def unknown_fields(model: type, value: Any, path: str = "") -> list[str]:
    """Paths of every key in `value` that `model` (recursively) does not declare."""
    if _is_one_of_wrapper(model) or not isinstance(value, dict):
        return []
    by_key = {}
    for name, info in model.model_fields.items():
        by_key[info.alias or name] = info
    problems: list[str] = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        info = by_key.get(key)
        if info is None:
            problems.append(where)
            continue
        classes, is_list, is_dict = _model_classes(info.annotation)
        if not classes or item is None:
            continue
        if is_list and isinstance(item, list):
            entries = [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        elif is_dict and isinstance(item, dict):
            entries = [(f"{where}.{k}", v) for k, v in item.items()]
        else:
            entries = [(where, item)]
        for entry_path, entry in entries:
            for cls in classes:
                problems += unknown_fields(cls, entry, entry_path)
    return problems


def validate_strict(model: type, obj: dict[str, Any], what: str) -> None:
    """Raise ConfigError naming the first unknown fields, or the type error `from_dict` reports."""
    unknown = unknown_fields(model, obj)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ConfigError(f"{what}: unknown field(s) {shown} for the Kubeflow Trainer v{TRAINER_API_VERSION} API; "
                          "fix the spelling or remove them")
    try:
        model.from_dict(obj)
    except Exception as exc:  # pydantic ValidationError: a wrong type or value
        first = " ".join(str(exc).split())
        raise ConfigError(f"{what} does not validate against the Kubeflow Trainer v{TRAINER_API_VERSION} API: "
                          f"{first}") from exc


def validate_trainjob(body: dict[str, Any]) -> None:
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    name = (body.get("metadata") or {}).get("name", "?")
    validate_strict(TrainerV1alpha1TrainJob, body, f"TrainJob {name}")


def validate_training_runtime(doc: dict[str, Any]) -> None:
    from kubeflow_trainer_api import models

    kinds = {"TrainingRuntime": models.TrainerV1alpha1TrainingRuntime,
             "ClusterTrainingRuntime": models.TrainerV1alpha1ClusterTrainingRuntime}
    kind = doc.get("kind")
    if kind not in kinds:
        raise ConfigError(f"kind {kind!r} is not a Trainer runtime; expected TrainingRuntime or ClusterTrainingRuntime")
    validate_strict(kinds[kind], doc, f"{kind} {(doc.get('metadata') or {}).get('name', '?')}")
