"""`livo register`: register an evaluated value encoder as the next version of a model in the object store.

    livo register --model-name livo-toy --value-encoder runs/x/train/value_encoder --metrics runs/x/eval/metrics.json \
        --report runs/x/eval/report.html --principles configs/principles/default.yaml \
        --dataset-manifest s3://livo/datasets/toy/ds-1/manifest.json --training-config runs/x/train/config.yaml \
        --base-model toy --base-model-fingerprint sha256:… --run-id local-1

Or put the fields of `RegistrationRequest` (docs/registry.md) in a YAML file: `livo register --request req.yaml`;
flags override the file. The object store comes from `LIVO_S3_*`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from livo.errors import ConfigError

# flag dest -> RegistrationRequest field
_FIELDS = {
    "model_name": "model_name", "value_encoder": "value_encoder_dir", "metrics": "metrics_path",
    "report": "report_path", "principles": "principles", "dataset_manifest": "dataset_manifest_uri", "seed": "seed",
    "base_model": "base_model_id", "base_model_fingerprint": "base_model_fingerprint", "run_id": "pipeline_run_id",
    "run_name": "pipeline_run_name", "spec_hash": "pipeline_spec_hash", "git_commit": "git_commit",
    "image_digest": "image_digest", "description": "description",
}


def _read_yaml_file(path: Path, read_yaml: Any) -> Any:
    """`read_yaml`, with a YAML syntax error as one line: the file, the line and column, the problem."""
    try:
        return read_yaml(path)
    except ConfigError as exc:
        cause = exc.__cause__
        mark = getattr(cause, "problem_mark", None)
        if mark is None:
            raise
        problem = " ".join(str(getattr(cause, "problem", None) or "invalid YAML").split())
        context = " ".join(str(getattr(cause, "context", None) or "").split())
        raise ConfigError(f"{path}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
                          + (f" ({context})" if context else "") + "; fix the file") from None


def build_request(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from livo.config import format_validation_error, read_yaml
    from livo.registry.registration import RegistrationRequest

    data: dict[str, Any] = {}
    source = "livo register"
    if args.request:
        loaded = _read_yaml_file(args.request, read_yaml) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.request}: expected a mapping of RegistrationRequest fields")
        data.update(loaded)
        source = str(args.request)
    if args.training_config:
        config = _read_yaml_file(args.training_config, read_yaml) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{args.training_config}: expected a mapping (the training config)")
        data["training_config"] = config
        if "seed" in config and args.seed is None and "seed" not in data:
            data["seed"] = config["seed"]
    data.update({field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest) is not None})
    if args.force:
        data["force"] = True
    if getattr(args, "allow_ungated", False):
        data["allow_ungated"] = True
    try:
        return RegistrationRequest.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def cmd_register(args: argparse.Namespace) -> int:
    from livo.registry.registration import register_model
    from livo.store import ObjectStore

    request = build_request(args)
    store = ObjectStore.from_env()
    result = register_model(store, request)
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    elif result.created:
        extra = f" (same weights as {', '.join(result.same_weights_as)})" if result.same_weights_as else ""
        print(f"registered {result.ref} at {result.uri}{extra}"
              + (" — UNGATED: its evaluation decided no gate (--allow-ungated)" if result.ungated else ""))
    else:
        print(f"already registered: pipeline run {request.pipeline_run_id} is {result.ref} at {result.uri}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register", help="register an evaluated value encoder as a new model version",
        description="Register a value encoder with its evaluation, model card and lineage as the next version of "
                    "models/<name>/ in the object store (LIVO_S3_*). Atomic: a version is visible only when complete. "
                    "Idempotent: the same --run-id registers once. Refuses a candidate whose metrics say passed: false "
                    "unless --force, and one whose evaluation decided no gate (none configured or all waived) unless "
                    "--allow-ungated. Also registers it in the Kubeflow Model Registry when LIVO_MODEL_REGISTRY_URL is set.")
    parser.add_argument("--request", type=Path, help="YAML file with RegistrationRequest fields (flags override it)")
    parser.add_argument("--model-name", help="model name: models/<name>/<version>/")
    parser.add_argument("--value-encoder", type=Path, help="value encoder folder (config.json + model.safetensors)")
    parser.add_argument("--metrics", type=Path, help="metrics.json written by `livo evaluate`")
    parser.add_argument("--report", type=Path, help="report.html written by `livo evaluate`")
    parser.add_argument("--principles", help="principles file: path or s3:// URI")
    parser.add_argument("--dataset-manifest", help="dataset manifest.json: s3:// URI or path")
    parser.add_argument("--training-config", type=Path, help="training config (YAML/JSON) recorded in the lineage")
    parser.add_argument("--seed", type=int, help="training seed (default: the training config's `seed`)")
    parser.add_argument("--base-model", help="base model id (preset name, path, URI or hub id)")
    parser.add_argument("--base-model-fingerprint", help="sha256 fingerprint of the base model's weights")
    parser.add_argument("--run-id", help="pipeline run id (the idempotency key)")
    parser.add_argument("--run-name", help="pipeline run name")
    parser.add_argument("--spec-hash", help="sha256 of the compiled pipeline package")
    parser.add_argument("--git-commit", help="git commit of the code that trained the model")
    parser.add_argument("--image-digest", help="container image digest of the pipeline's components")
    parser.add_argument("--description", help="free text for the model card")
    parser.add_argument("--force", action="store_true", help="register even though the evaluation gates failed")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="register even though the evaluation decided no gate (none configured, or all waived); "
                             "the version is marked UNGATED in its lineage and model card")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_register)
