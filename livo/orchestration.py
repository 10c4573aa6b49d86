"""The glue of the KFP pipeline (`pipelines/livo_full.py`), kept here so it is testable without kfp.

- `PipelineParameters`: the typed, validated parameters of one pipeline run. The pipeline's first step
  (`components/validate_inputs.py`) builds it, loads the preset and the principle set, and fails with a one-line cause
  before any other task (and so before any GPU) is requested; `livo submit` runs the same check on the client.
- `validate_kfp_cron`: the cron dialect of KFP recurring runs (6 fields, seconds first, or `@every 1h`-style).
- Run records under `pipeline-runs/<run id>/` in the object store: the skip decision of the principles check, the
  registration, and the outcome the exit handler writes whatever happened (registered | skipped | rejected | failed
  | canceled). The outcome is derived from the records, so no step has to know about the exit handler.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from livo.config import LivoConfig, format_validation_error
from livo.errors import ConfigError

# The torch threads of a task that runs beside others of its kind (the data shards under `livo run`: kfp.local runs
# them at the same time); tasks that run alone use OMP_NUM_THREADS, i.e. every core. Set by `livo run`.
ENV_PARALLEL_TASK_THREADS = "LIVO_PARALLEL_TASK_THREADS"

RUN_RECORDS_PREFIX = "pipeline-runs"
# What a run writes under its prefix `pipeline-runs/<run id>/` besides the records: the preference dataset, the
# training run (checkpoints, value encoder, result.json) and the evaluation (metrics.json last, report.html).
RUN_DATASET_DIR = "dataset"
RUN_TRAINING_DIR = "train"
RUN_EVALUATION_DIR = "evaluation"
MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
K8S_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_RUN_ID_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")

# --------------------------------------------------------------------------------------------------------- cron
# KFP's recurring runs parse cron with robfig/cron: six fields (second minute hour day-of-month month day-of-week)
# or a descriptor. A five-field crontab line is the usual mistake, so it gets its own hint.
_CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_EVERY_RE = re.compile(r"^@every\s+((\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)$")


def validate_kfp_cron(expression: str) -> str:
    """Return `expression` stripped if KFP accepts it as a recurring-run cron; raise ConfigError naming the field."""
    expr = " ".join(expression.split())
    hint = "KFP cron has 6 fields, seconds first, e.g. '0 0 3 * * *' (03:00 daily) or '@every 24h'"
    if not expr:
        raise ConfigError(f"empty cron expression; {hint}")
    if expr.startswith("@"):
        if expr in _CRON_DESCRIPTORS or _EVERY_RE.match(expr):
            return expr
        raise ConfigError(f"cron {expression!r}: unknown descriptor; use one of {', '.join(sorted(_CRON_DESCRIPTORS))}"
                          " or '@every <duration>' such as '@every 6h'")
    fields = expr.split(" ")
    if len(fields) == 5:
        raise ConfigError(f"cron {expression!r} has 5 fields; {hint} (prepend '0 ' for second 0)")
    if len(fields) != 6:
        raise ConfigError(f"cron {expression!r} has {len(fields)} fields; {hint}")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field_problem(text, low, high, names, allow_question=name in ("day-of-month", "day-of-week"))
        if problem:
            raise ConfigError(f"cron {expression!r}: {name} field {text!r} {problem}; {hint}")
    return expr


def _cron_field_problem(text: str, low: int, high: int, names: dict[str, int], allow_question: bool) -> str | None:
    if text == "?" and allow_question:
        return None

    def value(token: str) -> int | None:
        if token.upper() in names:
            return names[token.upper()]
        return int(token) if token.isdigit() else None

    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            return f"has step {step!r} (must be a positive integer)"
        if base == "*":
            continue
        start_text, dash, end_text = base.partition("-")
        start = value(start_text)
        end = value(end_text) if dash else start
        if start is None or end is None:
            return f"has {part!r} (expected *, a number, a range a-b, a list a,b or a step */n)"
        if not (low <= start <= high and low <= end <= high):
            return f"has {part!r} outside {low}-{high}"
        if start > end:
            return f"has the descending range {part!r}"
    return None


# -------------------------------------------------------------------------------------------------- parameters
# Stages whose pods get CPU/memory requests and limits from `<stage>_{cpu,memory}_{request,limit}` parameters.
RESOURCE_STAGES = ("data", "train", "eval", "control")
# The defaults of those parameters (the pipeline's signature uses these too); why these sizes: docs/operations.md.
RESOURCE_DEFAULTS = {
    "data_cpu_request": "4", "data_cpu_limit": "8", "data_memory_request": "32Gi", "data_memory_limit": "64Gi",
    "train_cpu_request": "32", "train_cpu_limit": "64", "train_memory_request": "256Gi", "train_memory_limit": "512Gi",
    "eval_cpu_request": "8", "eval_cpu_limit": "16", "eval_memory_request": "64Gi", "eval_memory_limit": "128Gi",
    "control_cpu_request": "500m", "control_cpu_limit": "2", "control_memory_request": "2Gi",
    "control_memory_limit": "8Gi",
}
_CPU_RE = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m?)$")
_MEMORY_RE = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MEMORY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_cpu_quantity(value: Any) -> float | None:
    """Cores of a Kubernetes CPU quantity ('2', '0.5', '500m'), or None when it is not one (or not above zero)."""
    match = _CPU_RE.match(str(value).strip())
    if not match:
        return None
    cores = float(match.group(1)) / (1000.0 if match.group(3) else 1.0)
    return cores if cores > 0 else None


def parse_memory_quantity(value: Any) -> float | None:
    """Bytes of a Kubernetes memory quantity ('512Mi', '32Gi', '1G'), or None when it is not one (or not above zero)."""
    match = _MEMORY_RE.match(str(value).strip())
    if not match:
        return None
    size = float(match.group(1)) * _MEMORY_UNITS[match.group(3)]
    return size if size > 0 else None


_TOLERATION_OPERATORS = ("Equal", "Exists")
_TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


class Toleration(LivoConfig):
    """A Kubernetes pod toleration (the fields of core/v1 Toleration)."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    tolerationSeconds: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value (drop `value` or use operator Equal)")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds only applies to effect NoExecute")
        return self


class PipelineParameters(LivoConfig):
    """The parameters of one `livo-full` run that can be checked before anything runs; field names are the pipeline
    parameter names (stage-prefixed), so `livo submit` checks the same values the pipeline's first step checks."""

    run_preset: str = Field(min_length=1, description="preset name (toy | tiny | toy-six | toy-sdxl | sd15 | sd21 | sdxl) or a preset YAML path")
    run_principles_uri: str = Field("", description="principles YAML (path or s3:// URI); empty = the preset's own")
    run_model_source: str = Field("", description="base model of every stage (s3:// mirror, path, hub id); empty = "
                                                  "the preset's")
    run_schedule_cron: str = Field("", description="cron of the recurring run that started this run; empty = one-off")
    run_accelerator_type: str = Field("nvidia.com/gpu", description="Kubernetes resource name of the GPUs")
    run_allow_ungated: bool = Field(False, description="register a candidate whose evaluation decides no gate, "
                                                       "marked UNGATED; without it such a run is refused up front")
    registry_model_name: str = Field(description="registry name of the aligned model: models/<name>/<version>/")
    data_shard_count: int = Field(ge=1, le=4096, description="data-generation shards run in parallel")
    data_gpus_per_shard: int = Field(1, ge=0, le=64)
    data_node_selector: dict[str, str] = Field(default_factory=dict)
    data_tolerations: list[Toleration] = Field(default_factory=list)
    data_config_overrides: list[str] = Field(default_factory=list, description="generation config key=value items")
    train_launcher: Literal["pod", "trainjob"] = "pod"
    train_num_nodes: int = Field(1, ge=1, le=512)
    train_gpus_per_node: int = Field(0, ge=0, le=64)
    train_node_selector: dict[str, str] = Field(default_factory=dict)
    train_tolerations: list[Toleration] = Field(default_factory=list)
    train_config_overrides: list[str] = Field(default_factory=list, description="training config key=value items")
    eval_gpus: int = Field(1, ge=0, le=64)
    eval_node_selector: dict[str, str] = Field(default_factory=dict)
    eval_tolerations: list[Toleration] = Field(default_factory=list)
    eval_config_overrides: list[str] = Field(default_factory=list, description="evaluation config key=value items")
    data_cpu_request: str = RESOURCE_DEFAULTS["data_cpu_request"]
    data_cpu_limit: str = RESOURCE_DEFAULTS["data_cpu_limit"]
    data_memory_request: str = RESOURCE_DEFAULTS["data_memory_request"]
    data_memory_limit: str = RESOURCE_DEFAULTS["data_memory_limit"]
    train_cpu_request: str = RESOURCE_DEFAULTS["train_cpu_request"]
    train_cpu_limit: str = RESOURCE_DEFAULTS["train_cpu_limit"]
    train_memory_request: str = RESOURCE_DEFAULTS["train_memory_request"]
    train_memory_limit: str = RESOURCE_DEFAULTS["train_memory_limit"]
    train_trainjob_timeout_hours: float = Field(48.0, gt=0, le=24 * 30)
    train_trainjob_start_timeout_minutes: float = Field(20.0, gt=0, le=24 * 60)
    eval_cpu_request: str = RESOURCE_DEFAULTS["eval_cpu_request"]
    eval_cpu_limit: str = RESOURCE_DEFAULTS["eval_cpu_limit"]
    eval_memory_request: str = RESOURCE_DEFAULTS["eval_memory_request"]
    eval_memory_limit: str = RESOURCE_DEFAULTS["eval_memory_limit"]
    control_cpu_request: str = RESOURCE_DEFAULTS["control_cpu_request"]
    control_cpu_limit: str = RESOURCE_DEFAULTS["control_cpu_limit"]
    control_memory_request: str = RESOURCE_DEFAULTS["control_memory_request"]
    control_memory_limit: str = RESOURCE_DEFAULTS["control_memory_limit"]
    store_secret_name: str = Field("mlpipeline-minio-artifact", description="Secret with keys accesskey, secretkey")
    store_config_map_name: str = Field("livo-object-store", description="ConfigMap with keys endpoint, bucket")

    @field_validator("registry_model_name")
    @classmethod
    def _model_name_is_a_key(cls, value: str) -> str:
        if not MODEL_NAME_RE.match(value):
            raise ValueError("must be 1-63 lowercase letters, digits and '-', starting with a letter or digit")
        return value

    @field_validator("store_secret_name", "store_config_map_name")
    @classmethod
    def _kubernetes_name(cls, value: str) -> str:
        if not K8S_NAME_RE.match(value):
            raise ValueError("must be a Kubernetes object name (lowercase letters, digits, '-' and '.')")
        return value

    @field_validator(*(f"{stage}_cpu_{kind}" for stage in RESOURCE_STAGES for kind in ("request", "limit")))
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        if parse_cpu_quantity(value) is None:
            raise ValueError("must be a Kubernetes CPU quantity: cores ('4', '0.5') or millicores ('500m')")
        return str(value)

    @field_validator(*(f"{stage}_memory_{kind}" for stage in RESOURCE_STAGES for kind in ("request", "limit")))
    @classmethod
    def _memory_quantity(cls, value: str) -> str:
        if parse_memory_quantity(value) is None:
            raise ValueError("must be a Kubernetes memory quantity, e.g. '512Mi', '32Gi' or '1Ti'")
        return str(value)

    @field_validator("data_config_overrides", "train_config_overrides", "eval_config_overrides")
    @classmethod
    def _overrides_are_assignments(cls, values: list[str]) -> list[str]:
        bad = [item for item in values if "=" not in str(item) or not str(item).split("=", 1)[0].strip()]
        if bad:
            raise ValueError(f"items must be key=value config overrides (e.g. 'max_steps=100'); got {bad}")
        return [str(item) for item in values]

    @field_validator("run_schedule_cron")
    @classmethod
    def _cron_is_valid(cls, value: str) -> str:
        if value.strip():
            try:
                return validate_kfp_cron(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return ""

    @model_validator(mode="after")
    def _requests_fit_limits(self) -> PipelineParameters:
        for stage in RESOURCE_STAGES:
            for what, parse in (("cpu", parse_cpu_quantity), ("memory", parse_memory_quantity)):
                request, limit = getattr(self, f"{stage}_{what}_request"), getattr(self, f"{stage}_{what}_limit")
                if parse(request) > parse(limit):
                    raise ValueError(f"{stage}_{what}_request={request} exceeds {stage}_{what}_limit={limit} "
                                     "(Kubernetes rejects such a pod); raise the limit or lower the request")
        return self

    @model_validator(mode="after")
    def _training_shape_is_consistent(self) -> PipelineParameters:
        if self.train_launcher == "pod" and self.train_num_nodes > 1:
            raise ValueError(f"train_num_nodes={self.train_num_nodes} needs train_launcher=trainjob "
                             "(one pod runs on one node)")
        if max(self.data_gpus_per_shard, self.train_gpus_per_node, self.eval_gpus) > 0 \
                and not self.run_accelerator_type:
            raise ValueError("GPU counts above 0 need run_accelerator_type (e.g. nvidia.com/gpu)")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any]) -> PipelineParameters:
        """Validate raw parameter values; a bad one raises ConfigError naming the parameter and the fix."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "pipeline parameters")) from None

    def resolve(self) -> dict[str, Any]:
        """Load the preset and the principle set they name (both must exist and validate); return what was found."""
        from livo.presets import load_preset_config
        from livo.principles import load_principles

        preset = load_preset_config(self.run_preset)
        if self.run_model_source.startswith("s3://"):
            from livo.models.mirror import read_manifest

            with _naming_parameter("run_model_source"):  # a missing or partial mirror fails here, not in a GPU pod
                manifest = read_manifest(self.run_model_source)
                if manifest["kind"] != "diffusers":
                    raise ConfigError(f"{self.run_model_source} is a {manifest['kind']} mirror; the base model must "
                                      "be a diffusers pipeline mirror")
        principles_source = self.run_principles_uri or preset.principles_path()
        principle_set = load_principles(principles_source)
        self._check_stage_configs(preset, principles_source, principle_set)
        return {
            "preset": preset.name,
            "model_source": self.run_model_source or preset.model.source,
            "principles_uri": principles_source,
            "principle_set_hash": principle_set.hash,
            "principle_ids": list(principle_set.ids),
        }


    def _check_stage_configs(self, preset: Any, principles_source: str, principle_set: Any) -> None:
        """Build each stage's typed config from the preset and its overrides, so that a misspelt key or a bad
        value fails here, not hours later in a GPU pod (the same builders the stage components call)."""
        from livo.data.generate import build_generate_config, resolve_settings
        from livo.evaluation.config import load_evaluation_config
        from livo.evaluation.protocol import plan_evaluation
        from livo.presets import check_model_settings
        from livo.training.jobs import launch_arguments, validate_launch_arguments

        model_source = self.run_model_source or preset.model.source
        with _naming_parameter("data_config_overrides"):
            generation = build_generate_config(overrides=[*self.data_config_overrides,
                                                          f"num_shards={self.data_shard_count}",
                                                          f"principles_file={principles_source}"],
                                               preset=self.run_preset)
            check_model_settings(model_source, resolution=resolve_settings(generation)["resolution"])
        with _naming_parameter("train_config_overrides"):
            # The URIs only have to be well-formed here; nothing is read from them.
            training_args = launch_arguments(dataset_uri=f"s3://validate/{RUN_DATASET_DIR}",
                                             output_uri=f"s3://validate/{RUN_TRAINING_DIR}", preset=self.run_preset,
                                             model_source=self.run_model_source,
                                             overrides=self.train_config_overrides, resume=False)
            validate_launch_arguments(training_args, world_size=max(1, self.train_gpus_per_node) * self.train_num_nodes)
        with _naming_parameter("eval_config_overrides"):
            evaluation = load_evaluation_config(preset.evaluate, preset.judges, None, self.eval_config_overrides)
            check_model_settings(model_source, resolution=evaluation.resolution or preset.generation.resolution)
            check_evaluation_gates(evaluation, plan_evaluation(principle_set, evaluation),
                                   preset_name=preset.name, allow_ungated=self.run_allow_ungated)


def check_evaluation_gates(evaluation: Any, plan: Any, *, preset_name: str, allow_ungated: bool) -> None:
    """Before any stage runs: every waiver and per-principle override names a gate of this evaluation, and an
    evaluation that would decide no gate (none configured, or all waived) is refused unless `allow_ungated` — its
    candidate could not be registered, so the GPU hours would be spent for nothing."""
    from livo.evaluation.gates import check_plan_gates, deciding_gate_names

    check_plan_gates(evaluation.gates, plan)
    if not allow_ungated and not deciding_gate_names(evaluation.gates, {item.id: item.kind for item in plan.principles}):
        raise ConfigError(f"preset {preset_name}: its evaluation sets no gate that decides anything (evaluate.gates "
                          f"{'waives every gate' if evaluation.gates.waive else 'sets no threshold'}), so the candidate "
                          "could not be registered; pass --allow-ungated (pipeline: run_allow_ungated=true) to "
                          "register it marked UNGATED, or set gates (docs/evaluation.md)")


@contextlib.contextmanager
def _naming_parameter(name: str) -> Iterator[None]:
    """Prefix a stage config's error with the pipeline parameter that carried the bad value."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# ------------------------------------------------------------------------------------------------- run records
RunStatus = Literal["registered", "skipped", "rejected", "failed", "canceled"]


def run_records_prefix(run_id: str) -> str:
    """`pipeline-runs/<run id>/`; a run id is a KFP run UUID in a cluster, a random number in kfp.local."""
    safe = _RUN_ID_UNSAFE_RE.sub("-", run_id).strip("-.")
    if not safe:
        raise ConfigError(f"run id {run_id!r} has no usable characters; pass the KFP run id")
    return f"{RUN_RECORDS_PREFIX}/{safe}/"


def record_decision(store, run_id: str, *, changed: bool, principle_set_hash: str, model_name: str,
                    forced: bool = False, latest_version: str | None = None) -> str:
    """Write the principles check's verdict (read back by the outcome); returns its key."""
    key = run_records_prefix(run_id) + "decision.json"
    store.put_json(key, {
        "changed": changed, "forced": forced, "principle_set_hash": principle_set_hash,
        "model_name": model_name, "latest_version": latest_version, "time": _now(),
    })
    return key


def record_registration(store, run_id: str, registration: dict[str, Any]) -> str:
    """Write what the registration step registered (model name, version, URI); returns its key."""
    key = run_records_prefix(run_id) + "registration.json"
    store.put_json(key, {**registration, "time": _now()})
    return key


def record_failure(store, run_id: str, *, step: str, message: str) -> str:
    """Keep a step's one-line failure cause for the outcome (KFP's own final status only says which task failed)."""
    key = run_records_prefix(run_id) + "failure.json"
    store.put_json(key, {"step": step, "message": message, "time": _now()})
    return key


def _read_record(store, run_id: str, name: str) -> dict[str, Any] | None:
    key = run_records_prefix(run_id) + name
    return store.get_json(key) if store.exists(key) else None


def build_outcome(store, *, run_id: str, run_name: str, final_state: str, error_message: str = "",
                  schedule_cron: str = "") -> dict[str, Any]:
    """Derive the run's outcome from KFP's final state and the records its steps left.

    SUCCEEDED splits three ways: no change to the principle set (`skipped`: a scheduled no-op, not a failure), a
    candidate that failed the evaluation gates (`rejected`: no registration record), or a new version (`registered`).
    """
    decision = _read_record(store, run_id, "decision.json")
    registration = _read_record(store, run_id, "registration.json")
    failure = _read_record(store, run_id, "failure.json")
    evaluation = evaluation_summary(store, run_id)
    if failure:
        error_message = f"{failure['step']}: {failure['message']}"
    state = final_state.upper()
    status: RunStatus
    if state in ("CANCELED", "CANCELLED", "CANCELLING"):
        status = "canceled"
    elif state != "SUCCEEDED":
        status = "failed"
    elif decision is not None and not decision["changed"]:
        status = "skipped"
    elif registration is not None:
        status = "registered"
    else:
        status = "rejected"
    summaries = {
        "registered": (f"registered {registration['model_name']}@{registration['version']}"
                       + (" UNGATED (no evaluation gate; --allow-ungated)" if registration.get("ungated") else "")
                       if registration else ""),
        "skipped": "principle set unchanged since the latest registered model; nothing to do",
        "rejected": (f"registration refused: {failure['message']}" if failure and failure.get("step") == "register"
                     else "the candidate failed the evaluation gates" + (
            f" ({'; '.join(evaluation['failed_gates'])})" if evaluation and evaluation["failed_gates"] else "")
            + "; nothing was registered"),
        "failed": f"the run failed: {error_message or 'see the failed task'}",
        "canceled": "the run was canceled",
    }
    return {
        "run_id": run_id, "run_name": run_name, "status": status, "kfp_state": state,
        "summary": summaries[status], "error": error_message or None, "schedule_cron": schedule_cron or None,
        "decision": decision, "evaluation": evaluation, "registration": registration, "time": _now(),
    }


def evaluation_summary(store, run_id: str) -> dict[str, Any] | None:
    """The verdict of the run's evaluation (metrics.json is written last, so its presence means complete): passed,
    the failed gates with their details, and where metrics and report are. None when the run did not evaluate."""
    prefix = f"{run_records_prefix(run_id)}{RUN_EVALUATION_DIR}/"
    metrics = _read_record(store, run_id, f"{RUN_EVALUATION_DIR}/metrics.json")
    if metrics is None:
        return None
    return {
        "passed": bool(metrics.get("passed")),
        "failed_gates": [f"{gate['name']}: {gate.get('detail', '')}".rstrip(": ")
                         for gate in metrics.get("gates", []) if not gate.get("passed")],
        "metrics_uri": store.uri(prefix + "metrics.json"),
        "report_uri": store.uri(prefix + "report.html"),
    }


def write_outcome(store, outcome: dict[str, Any]) -> str:
    key = run_records_prefix(outcome["run_id"]) + "outcome.json"
    store.put_json(key, outcome)
    return key


def read_outcome(store, run_id: str) -> dict[str, Any] | None:
    return _read_record(store, run_id, "outcome.json")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------------ registration
TRAINING_RESULT_FILE = "result.json"  # livo.training.checkpoint.RESULT_FILE: written last by a finished training run
DATASET_MANIFEST_FILE = "manifest.json"


def _join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _read_json_at(store, uri_or_path: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    from livo.errors import LivoError

    if uri_or_path.startswith("s3://"):
        from livo.store import ObjectStore, parse_s3_uri

        located = store.for_uri(uri_or_path) if store is not None else ObjectStore.for_uri(uri_or_path)
        return located.get_json(parse_s3_uri(uri_or_path)[1])
    path = Path(uri_or_path)
    if not path.is_file():
        raise LivoError(f"{uri_or_path}: no such file")
    return json.loads(path.read_text(encoding="utf-8"))


def _fetch(store, uri_or_path: str, target) -> str:
    """A local copy of a file given as a path or an s3:// URI."""
    import shutil
    from pathlib import Path

    if uri_or_path.startswith("s3://"):
        from livo.store import parse_s3_uri

        store.for_uri(uri_or_path).download_file(parse_s3_uri(uri_or_path)[1], target)
    else:
        shutil.copyfile(Path(uri_or_path), target)
    return str(target)


def registration_request(store, *, model_name: str, training_output_uri: str, evaluation_uri: str,
                         principles_uri: str, run_id: str, run_name: str, pipeline_spec_sha256: str,
                         image: str, workdir, allow_ungated: bool = False) -> Any:
    """The registry's `RegistrationRequest` for what this pipeline run produced.

    The training run's `result.json` names the value encoder, the dataset, the config, the seed and the base model
    (with its fingerprint); the evaluation wrote metrics.json and report.html under `evaluation_uri`. Copies of the
    value encoder and of the evaluation files land in `workdir`.
    """
    from pathlib import Path

    from livo.errors import LivoError
    from livo.images import running_image
    from livo.registry.registration import RegistrationRequest

    image_record = running_image(image)
    result = _read_json_at(store, _join_uri(training_output_uri, TRAINING_RESULT_FILE))
    try:
        encoder_uri = result["value_encoder"]["uri"]
        dataset_uri = result["dataset"]["uri"]
        config = result["config"]
        base_model = result["base_model"]
    except KeyError as exc:
        raise LivoError(f"{_join_uri(training_output_uri, TRAINING_RESULT_FILE)} lacks {exc}; it is not the result "
                        "of a finished livo training run") from None
    workdir = Path(workdir)
    encoder_dir = workdir / "value_encoder"
    if encoder_uri.startswith("s3://"):
        from livo.store import parse_s3_uri

        store.for_uri(encoder_uri).download_dir(parse_s3_uri(encoder_uri)[1], encoder_dir)
    else:
        encoder_dir = Path(encoder_uri)
    manifest_uri = dataset_uri if dataset_uri.endswith(".json") else _join_uri(dataset_uri, DATASET_MANIFEST_FILE)
    return RegistrationRequest(
        model_name=model_name,
        value_encoder_dir=encoder_dir,
        metrics_path=_fetch(store, _join_uri(evaluation_uri, "metrics.json"), workdir / "metrics.json"),
        report_path=_fetch(store, _join_uri(evaluation_uri, "report.html"), workdir / "report.html"),
        principles=principles_uri,
        dataset_manifest_uri=manifest_uri,
        training_config=config,
        seed=int(config.get("seed", 0)),
        base_model_id=str(base_model.get("source") or config.get("model") or "unknown"),
        base_model_fingerprint=str(base_model["fingerprint"]),
        pipeline_run_id=run_id,
        pipeline_run_name=run_name,
        pipeline_spec_hash=pipeline_spec_sha256,
        git_commit=_git_commit_of_image(),
        image_digest=image_record["reference"],
        image_ran_in=image_record["ran_in"],
        allow_ungated=allow_ungated,
    )


def _git_commit_of_image() -> str:
    """The commit the running code was built from (`LIVO_GIT_COMMIT`, set by the image build and by `livo run`)."""
    import os

    return os.environ.get("LIVO_GIT_COMMIT", "")


def use_parallel_task_threads() -> int | None:
    """In a task that runs beside others (a data shard): limit torch to `LIVO_PARALLEL_TASK_THREADS` threads, its
    share of the cores. Returns the count, or None when unset (a cluster pod has its own CPUs)."""
    import os

    raw = os.environ.get(ENV_PARALLEL_TASK_THREADS, "")
    if not raw.isdigit() or int(raw) < 1:
        return None
    import torch

    torch.set_num_threads(int(raw))
    return int(raw)
