"""Strict offline validation of the Kubeflow Trainer objects livo creates (TrainJob, TrainingRuntime).

The `kubeflow_trainer_api` package (Trainer v2.3, generated from the upstream OpenAPI) holds pydantic models of the
Trainer API and of the Kubernetes core types it embeds (PodSpec, EnvVar, ResourceRequirements, ...). Their
`from_dict` checks types but silently drops keys it does not know, so a misspelt field (`spec.trainer.commands`) would
pass and then be ignored by the API server's pruning. `validate_strict` walks the model tree and rejects every key the
models do not declare, naming its path; then `from_dict` checks the types.

Other custom resources (KServe's InferenceService) are checked against the OpenAPI v3 schema of their CRD, vendored
as a file (tests/manifests/schemas/). A CRD schema is "structural": the API server prunes fields it does not declare
instead of rejecting them, so `strict_json_schema` closes every object that does not opt into unknown fields
(`x-kubernetes-preserve-unknown-fields`) and `custom_resource_problems` reports each unknown field, missing required
field and wrong type with its path; `metadata` is checked against the Kubernetes ObjectMeta schema of
kubernetes-validate.
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


# The Kubernetes ObjectMeta schema inside kubernetes-validate's definitions (strict variant: unknown keys rejected).
OBJECT_META_REF = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
TRIMMED_MARKER = "x-livo-trimmed"  # a subtree removed from a vendored schema (see tests/manifests/schemas/)


def strict_json_schema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as a JSON Schema that rejects what the API server would prune: every
    object without `x-kubernetes-preserve-unknown-fields` or `additionalProperties` gets `additionalProperties:
    false`; `nullable` admits null; int-or-string without alternatives gets them; a trimmed subtree rejects any value.
    """
    if isinstance(node, list):
        return [strict_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if TRIMMED_MARKER in node:
        return {"not": {}, TRIMMED_MARKER: node[TRIMMED_MARKER]}
    out = {key: strict_json_schema(value) if key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not")
           else value for key, value in node.items() if key != "properties"}
    if "properties" in node:
        out["properties"] = {name: strict_json_schema(sub) for name, sub in node["properties"].items()}
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    is_object = node.get("type") == "object" or "properties" in node
    if is_object and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _describe(error: Any) -> list[str]:
    """One line per problem in a jsonschema error, naming the field's path."""
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        declared = set(error.schema.get("properties", {}))
        unknown = sorted(key for key in error.instance if key not in declared)
        return [f"unknown field {_path([*error.absolute_path, key])}" for key in unknown]
    if error.validator == "required":
        missing = error.message.split("'")[1] if error.message.count("'") >= 2 else error.message
        return [f"missing required field {_path([*error.absolute_path, missing])}"]
    if error.validator == "not" and TRIMMED_MARKER in error.schema:
        return [f"{where}: not in the vendored schema (trimmed there: {error.schema[TRIMMED_MARKER]}); re-vendor the "
                "full schema to use it"]
    return [f"{where}: {error.message}"]


def custom_resource_problems(doc: dict[str, Any], crd_schema: dict[str, Any]) -> list[str]:
    """Every problem of `doc` against a CRD's openAPIV3Schema (strictly, see `strict_json_schema`), with its path."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    schema = strict_json_schema(crd_schema)
    schema.setdefault("properties", {})["metadata"] = {"$ref": OBJECT_META_REF}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["allOf"] = [*schema.get("allOf", []), {"properties": {"metadata": {"required": ["name"]}}}]
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{kubernetes_validate.latest_version()}-local-strict/_definitions.json",
        kubernetes_validate.latest_version())
    registry = Resource.from_contents(definitions) @ Registry()
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        for line in _describe(error):
            if line not in problems:
                problems.append(line)
    return problems


def validate_custom_resource(doc: dict[str, Any], crd_schema: dict[str, Any], api: str) -> None:
    """Raise ConfigError listing every problem of `doc` against the CRD schema of `api` (e.g. "KServe v0.15")."""
    problems = custom_resource_problems(doc, crd_schema)
    if problems:
        what = f"{doc.get('kind', '?')} {(doc.get('metadata') or {}).get('name', '?')}"
        shown = "; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else "")
        raise ConfigError(f"{what} does not validate against the {api} API: {shown}")
