"""Model registration: `models/<name>/<version>/` in the object store — atomic, idempotent, versioned.

Layout of one version (docs/registry.md)::

    models/<name>/v<N>/value_encoder/config.json, model.safetensors   the weights (authors' layout)
                      metrics.json, report.html                          the evaluation
                      principles.yaml                                    the principle set, byte for byte
                      model_card.md, lineage.json                        the card and the lineage record
                      manifest.json                                      commit object, written LAST, sealed
    models/<name>/.registrations/v<N>.json                               in-flight marker (deleted after commit)

- Versions are ``v1, v2, …`` per model name, in registration order. A version exists when its manifest.json exists;
  everything else under an uncommitted prefix is the debris of an interrupted registration, invisible to readers and
  reclaimed by the next registration of that name.
- Idempotent: registering the same pipeline run again returns the version it already created (re-running only
  re-syncs the Kubeflow Model Registry entry). The same weights from a different run become a new version whose
  lineage names the earlier ones (`model.same_weights_as`).
- The release gate is bound to the weights: metrics.json records what it evaluated (``evaluated``: the value
  encoder's `weights_digest`, the base model's fingerprint, the principle-set hash, the evaluation config's digest);
  registration recomputes them for the candidate and refuses any mismatch. Metrics without them (older format) are
  refused unless `force` is set.
- A candidate whose metrics say ``passed: false`` is refused unless `force` is set (recorded in the lineage).
- A candidate whose evaluation decided no gate (none configured, or all waived: `livo.evaluation.gates.gate_summary`)
  is refused unless `allow_ungated` is set; such a version is marked `ungated` in its lineage and model card. The
  waivers its gates used are recorded in the lineage (`evaluation.waivers`).
- The commit object (manifest.json) is sealed with a digest over all of its fields (and an HMAC when
  `LIVO_LINEAGE_HMAC_KEY` is set); readers that decide something from it (`principles_changed`, idempotency) verify
  the seal first (`read_verified_manifest`).
- Secrets never reach the card or the lineage record (`lineage.redact`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from livo.config import LivoConfig
from livo.errors import ConfigError, LivoError, StoreError
from livo.evaluation.gates import gate_summary
from livo.log import get_logger, log_event
from livo.registry.lineage import (
    EVALUATED_KEY,
    LINEAGE_FILE,
    BaseModelSection,
    DatasetSection,
    EvaluationSection,
    LineageRecord,
    ModelSection,
    PipelineSection,
    PrinciplesSection,
    TrainingSection,
    canonical_sha256,
    check_manifest,
    digest_at,
    read_bytes_at,
    redact,
    seal_manifest,
    value_encoder_digest,
    weights_digest,
)
from livo.registry.versions import (  # noqa: F401  (re-exported: the registry's public layout API)
    MANIFEST_FILE,
    MODEL_NAME_RE,
    MODELS_PREFIX,
    VALUE_ENCODER_DIR,
    VERSION_RE,
    _check_name,
    _version_dirs,
    _version_number,
    latest_version,
    list_models,
    list_versions,
    model_prefix,
    resolve_version,
    version_prefix,
)

logger = get_logger("livo.registry.registration")

STALE_REGISTRATION_S = 30 * 60  # an in-flight marker older than this belongs to a registration that died


class UngatedEvaluation(ConfigError):
    """The evaluation decided no gate and the request did not say `allow_ungated` (bad input, exit 2)."""


class ArtifactDigestMismatch(ConfigError):
    """A digest a KFP artifact carried differs from what registration computes (bad input, exit 2)."""


# ------------------------------------------------------------------------------------------------------ layout
def _marker_key(name: str, version: str) -> str:
    return f"{model_prefix(name)}.registrations/{version}.json"


def load_manifest(store: Any, name: str, version: str) -> dict[str, Any]:
    """The commit object of a registered version, verified (raises for an unknown model or version)."""
    resolve_version(store, name, version)
    return read_verified_manifest(store, name, version)


def read_verified_manifest(store: Any, name: str, version: str) -> dict[str, Any]:
    """The commit object of a committed version, only if its seal (content digest, HMAC when keyed) verifies."""
    key = version_prefix(name, version) + MANIFEST_FILE
    manifest, problems = check_manifest(store.get_bytes(key))
    if manifest is None or problems:
        raise LivoError(f"{store.uri(key)} does not verify ({problems[0]}); it is not trusted — run `livo lineage "
                        f"verify {name}@{version}` for the full report and restore or re-register the version")
    return manifest


def load_lineage(store: Any, name: str, version: str | None = None) -> LineageRecord:
    version = resolve_version(store, name, version)
    key = version_prefix(name, version) + LINEAGE_FILE
    if not store.exists(key):
        raise LivoError(f"{name}@{version} has no lineage record ({store.uri(key)} is missing); run "
                        f"`livo lineage verify {name}@{version}` for the full damage report")
    return LineageRecord.from_json_bytes(store.get_bytes(key), store.uri(key))


def load_stored_principles(store: Any, record: LineageRecord) -> Any:
    """The principle set stored beside a version (a `PrincipleSet`)."""
    from livo.principles import load_principles_text

    key = version_prefix(record.model.name, record.model.version) + record.principles.stored_copy
    return load_principles_text(store.get_bytes(key).decode("utf-8"), source=store.uri(key))


def principles_changed(store: Any, model_name: str, principle_set_hash: str) -> bool:
    """Has the principle set changed since the latest registered version of `model_name`?

    True when the model has no registered version yet or its latest version was trained on another principle-set
    hash; the pipeline's first step skips all work when this is False.
    """
    latest = latest_version(store, model_name)
    if latest is None:
        log_event(logger, "no registered version", model=model_name)
        return True
    # The commit object carries the hash (one small read), trusted only when its seal verifies: a tampered manifest
    # must neither skip a needed retraining nor trigger a needless one, so it stops the check with an error.
    manifest = read_verified_manifest(store, model_name, latest)
    registered = manifest["principle_set_hash"]
    changed = registered != principle_set_hash
    log_event(logger, "principles compared", model=model_name, latest=latest, registered=registered,
              current=principle_set_hash, changed=changed)
    return changed


# ---------------------------------------------------------------------------------------------------- request
class RegistrationRequest(LivoConfig):
    """Everything a registration needs. Local files are copied into the version; URIs are hashed and recorded."""

    model_name: str = Field(description="models/<name>/…: 1-63 lowercase letters, digits, '-'")
    value_encoder_dir: Path = Field(description="config.json + model.safetensors (or a parent with value_encoder/)")
    metrics_path: Path = Field(description="the evaluation's metrics.json")
    report_path: Path = Field(description="the evaluation's HTML report")
    principles: str = Field(description="the principles file: local path or s3:// URI")
    dataset_manifest_uri: str = Field(description="manifest.json of the preference dataset (s3:// URI or path)")
    training_config: dict[str, Any] = Field(default_factory=dict)
    seed: int
    base_model_id: str = Field(min_length=1)
    base_model_fingerprint: str = Field(min_length=1, description="livo.presets.pipeline_fingerprint of the base")
    pipeline_run_id: str = Field(min_length=1, description="the KFP run id (idempotency key)")
    pipeline_run_name: str = ""
    pipeline_spec_hash: str = ""
    git_commit: str = ""
    image_digest: str = ""
    image_ran_in: str = ""
    mlflow_run_id: str = Field("", description="the pipeline run's MLflow run id (empty: tracking off)")
    tracking_uri: str = Field("", description="the MLflow tracking URI of that run")
    artifact_digests: dict[str, str] = Field(
        default_factory=dict, description="sha256 digests the KFP artifacts carried (value_encoder, metrics, report, "
                                          "dataset_manifest): each must equal what registration computes, else it "
                                          "refuses naming both")
    description: str = ""
    force: bool = Field(False, description="register even though metrics.json says passed: false or lacks the "
                                           "digests of what it evaluated (older format)")
    allow_ungated: bool = Field(False, description="register even though the evaluation decided no gate (none "
                                                   "configured or all waived); the version is marked ungated")

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_NAME_RE.match(value):
            raise ValueError("use 1-63 lowercase letters, digits and '-', starting with a letter or digit")
        return value


class RegistrationResult(LivoConfig):
    model_name: str
    version: str
    uri: str
    created: bool = Field(description="False when this pipeline run was already registered (idempotent re-run)")
    weights_sha256: str
    same_weights_as: list[str] = Field(default_factory=list)
    ungated: bool = Field(False, description="registered with allow_ungated: its evaluation decided no gate")
    model_registry: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such metrics file; pass the metrics.json written by `livo evaluate`")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("principles"), dict):
        raise ConfigError(f"{path}: expected an evaluation metrics object with a 'principles' mapping")
    if not isinstance(metrics.get("passed"), bool):
        raise ConfigError(f"{path}: 'passed' must be true or false (the evaluation gate verdict)")
    return metrics


BINDING_FIELDS = {
    "value_encoder_sha256": "value encoder",
    "base_model_fingerprint": "base model",
    "principle_set_hash": "principle set",
    "config_sha256": "evaluation config",
}


def check_evaluation_binding(metrics: dict[str, Any], metrics_path: Path, *, value_encoder_sha256: str,
                             base_model_fingerprint: str, principle_set_hash: str) -> list[str]:
    """Is metrics.json the evaluation of this very candidate? Raises `ConfigError` naming both digests on a mismatch;
    returns what is missing (metrics written before evaluations recorded their digests), which only force accepts."""
    evaluated = metrics.get(EVALUATED_KEY)
    if not isinstance(evaluated, dict):
        evaluated = {}
    expected = {"value_encoder_sha256": value_encoder_sha256, "base_model_fingerprint": base_model_fingerprint,
                "principle_set_hash": principle_set_hash, "config_sha256": canonical_sha256(metrics.get("config"))}
    missing = []
    for key, what in BINDING_FIELDS.items():
        recorded = evaluated.get(key)
        if not recorded:
            missing.append(f"{EVALUATED_KEY}.{key}")
            continue
        if recorded != expected[key]:
            if key == "config_sha256":
                raise ConfigError(f"{metrics_path}: its config was edited after the evaluation (evaluated config "
                                  f"{recorded}, the file's config is {expected[key]}); use the metrics.json "
                                  "`livo evaluate` wrote")
            candidate = "the training result names" if key == "base_model_fingerprint" else "the candidate is"
            raise ConfigError(f"{metrics_path} evaluated {what} {recorded} but {candidate} {expected[key]}; evaluate "
                              "this model (livo evaluate --value-encoder … --principles …) before registering it")
    return missing


ARTIFACT_DIGEST_KEYS = ("value_encoder", "metrics", "report", "dataset_manifest")


def check_artifact_digests(given: dict[str, str], computed: dict[str, tuple[str, str]]) -> None:
    """Each digest the KFP artifacts carried (`RegistrationRequest.artifact_digests`) must equal what registration
    computed (`computed`: key -> (digest, where it was computed from)); raises `ArtifactDigestMismatch` naming the
    artifact and both hashes on the first difference."""
    unknown = sorted(set(given) - set(ARTIFACT_DIGEST_KEYS))
    if unknown:
        raise ConfigError(f"artifact_digests names unknown artifact(s) {', '.join(unknown)}; use "
                          f"{', '.join(ARTIFACT_DIGEST_KEYS)}")
    for key in ARTIFACT_DIGEST_KEYS:
        if key in given and given[key] != computed[key][0]:
            raise ArtifactDigestMismatch(
                f"the {key} artifact carries sha256 {given[key]} but registration computed {computed[key][0]} from "
                f"{computed[key][1]}; nothing was registered (the pipeline's artifacts and the object store disagree: "
                "re-run the step that wrote it)")


def _check_input_exists(store: Any, what: str, location: str) -> None:
    """A missing input is bad input (exit 2), named before anything is written."""
    if location.startswith("s3://"):
        from livo.store import parse_s3_uri

        if not store.for_uri(location).exists(parse_s3_uri(location)[1]):
            raise ConfigError(f"{location}: no such {what} in the object store; pass the URI of an existing object")
    elif not Path(location).is_file():
        raise ConfigError(f"{location}: no such {what}; pass a local path or an s3:// URI")


def _secrets_in_env() -> tuple[str, ...]:
    names = ("LIVO_S3_SECRET_KEY", "LIVO_S3_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
             "LIVO_MODEL_REGISTRY_TOKEN", "KFP_TOKEN")
    return tuple(os.environ[n] for n in names if os.environ.get(n))


# -------------------------------------------------------------------------------------------------- register
def register_model(store: Any, request: RegistrationRequest, *, model_registry: Any = None,
                   now: float | None = None) -> RegistrationResult:
    """Register the candidate described by `request` as the next version of `request.model_name`.

    `model_registry`: a `livo.registry.model_registry.KubeflowModelRegistry` (default: from the environment when
    `LIVO_MODEL_REGISTRY_URL` is set, else skipped with an info log). Raises before anything is written when an input
    is missing or invalid, or the candidate failed its gates without `force`.
    """
    from livo.modeling import resolve_value_encoder_dir
    from livo.principles import load_principles_text

    name = request.model_name
    metrics = _read_metrics(request.metrics_path)
    encoder_dir = resolve_value_encoder_dir(request.value_encoder_dir)
    if not request.report_path.is_file():
        raise ConfigError(f"{request.report_path}: no such report file; pass the report.html written by "
                          "`livo evaluate`")
    for what, location in (("principles file", request.principles), ("dataset manifest", request.dataset_manifest_uri)):
        _check_input_exists(store, what, location)
    principles_bytes = read_bytes_at(store, request.principles)
    try:
        principle_set = load_principles_text(principles_bytes.decode("utf-8"), source=request.principles)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{request.principles}: not UTF-8 text ({exc})") from None
    dataset_sha256 = digest_at(store, request.dataset_manifest_uri)
    dataset_manifest = _dataset_manifest(store, request.dataset_manifest_uri)  # id and size per principle, if any
    value_encoder_sha256 = value_encoder_digest(encoder_dir)
    check_artifact_digests(request.artifact_digests, {
        "value_encoder": (value_encoder_sha256, str(request.value_encoder_dir)),
        "metrics": (digest_at(store, str(request.metrics_path)), str(request.metrics_path)),
        "report": (digest_at(store, str(request.report_path)), str(request.report_path)),
        "dataset_manifest": (dataset_sha256, request.dataset_manifest_uri),
    })

    forced_reasons = []
    unbound = check_evaluation_binding(metrics, request.metrics_path,
                                       value_encoder_sha256=value_encoder_sha256,
                                       base_model_fingerprint=request.base_model_fingerprint,
                                       principle_set_hash=principle_set.hash)
    if unbound:
        if not request.force:
            raise ConfigError(f"{request.metrics_path} does not record what it evaluated (no {', '.join(unbound)}: "
                              "written by an older `livo evaluate`?); re-evaluate the candidate, or pass --force to "
                              "register it anyway (recorded in the lineage)")
        forced_reasons.append(f"metrics not bound to the weights (missing {', '.join(unbound)})")
    if not metrics["passed"]:
        if not request.force:
            raise LivoError(f"{name}: the candidate failed its evaluation gates (passed: false in "
                            f"{request.metrics_path}); nothing was registered (pass --force to register it anyway, "
                            "recorded in the lineage)")
        forced_reasons.append("failed its evaluation gates")
    gates = gate_summary(metrics.get("gates") if isinstance(metrics.get("gates"), list) else None)
    if gates["ungated"] and not request.allow_ungated:
        raise UngatedEvaluation(f"{name}: {request.metrics_path} decided no evaluation gate (none configured"
                          f"{', or all waived' if gates['waivers'] else ''}), so passed: true proves nothing; nothing "
                          "was registered (set evaluate.gates in the preset, docs/evaluation.md, or pass "
                          "--allow-ungated to register it marked ungated)")

    with tempfile.TemporaryDirectory(prefix="livo-register-") as tmp:
        staging = Path(tmp)
        shutil.copytree(encoder_dir, staging / VALUE_ENCODER_DIR)
        shutil.copyfile(request.metrics_path, staging / "metrics.json")
        shutil.copyfile(request.report_path, staging / "report.html")
        (staging / "principles.yaml").write_bytes(principles_bytes)

        weights_sha256 = weights_digest(_digests(staging), VALUE_ENCODER_DIR)

        existing = _find_existing(store, name, request.pipeline_run_id, weights_sha256)
        if existing["same_run"] is not None:
            version = existing["same_run"]
            log_event(logger, "already registered", model=name, version=version, run_id=request.pipeline_run_id)
            result = RegistrationResult(model_name=name, version=version, uri=store.uri(version_prefix(name, version)),
                                        created=False, weights_sha256=weights_sha256,
                                        same_weights_as=existing["same_weights"], ungated=gates["ungated"])
            return _sync_model_registry(store, result, model_registry)

        version, parent = _claim_version(store, name, request.pipeline_run_id, now)
        prefix = version_prefix(name, version)
        registered_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now if now is not None else time.time()))
        hidden = _secrets_in_env()
        record = LineageRecord(
            model=ModelSection(name=name, version=version, registered_at=registered_at,
                               description=redact(request.description, hidden), parent_version=parent,
                               weights_sha256=weights_sha256, same_weights_as=existing["same_weights"],
                               value_encoder_path=VALUE_ENCODER_DIR),
            pipeline=PipelineSection(run_id=request.pipeline_run_id, run_name=request.pipeline_run_name,
                                     spec_hash=request.pipeline_spec_hash, git_commit=request.git_commit,
                                     image_digest=request.image_digest, image_ran_in=request.image_ran_in,
                                     mlflow_run_id=request.mlflow_run_id,
                                     tracking_uri=redact(request.tracking_uri, hidden)),
            principles=PrinciplesSection(hash=principle_set.hash, uri=redact(request.principles, hidden),
                                         ids=list(principle_set.ids)),
            dataset=DatasetSection(manifest_uri=redact(request.dataset_manifest_uri, hidden),
                                   manifest_sha256=dataset_sha256),
            training=TrainingSection(config=redact(request.training_config, hidden), seed=request.seed),
            base_model=BaseModelSection(id=redact(request.base_model_id, hidden),
                                        fingerprint=request.base_model_fingerprint),
            evaluation=EvaluationSection(passed=metrics["passed"], forced=bool(forced_reasons),
                                         forced_reasons=forced_reasons, ungated=gates["ungated"],
                                         waivers=redact(gates["waivers"], hidden),
                                         report_uri=store.uri(prefix + "report.html"),
                                         metrics=redact(metrics, hidden)),
            files={},
        )
        if record.evaluation.metrics != metrics:  # redacted: the stored copy must equal the record's (verify)
            (staging / "metrics.json").write_text(json.dumps(record.evaluation.metrics, indent=2), encoding="utf-8")
        from livo.registry.model_card import render_model_card, report_lineage

        _add_registration_to_report(staging / "report.html", report_lineage(record, dataset_manifest))
        record.files = _digests(staging)  # the card lists every file but itself
        card = staging / "model_card.md"
        card.write_text(render_model_card(record, principle_set, dataset_manifest), encoding="utf-8")
        record.files = _digests(staging)
        (staging / LINEAGE_FILE).write_text(record.to_json(), encoding="utf-8")

        try:
            uploaded = store.upload_dir(prefix.rstrip("/"), staging)
            if uploaded != _digests(staging):
                raise StoreError(f"the upload to {store.uri(prefix)} does not match the staged files (digests "
                                 "differ); retry the registration")
            # The commit object, written last and sealed: a digest over every field (files included), so that no
            # field of it can be edited unnoticed (docs/registry.md "Verification chain").
            store.put_bytes(prefix + MANIFEST_FILE, seal_manifest({
                "model": name, "version": version, "pipeline_run_id": request.pipeline_run_id,
                "weights_sha256": weights_sha256, "principle_set_hash": principle_set.hash,
                "committed_at": registered_at, "files": uploaded,
            }), content_type="application/json")
        except BaseException as exc:
            _abandon(store, name, version)
            if isinstance(exc, LivoError):
                raise LivoError(f"registration of {name}@{version} failed, nothing was registered: {exc}") from exc
            raise
    _release_marker(store, name, version)
    log_event(logger, "model registered", model=name, version=version, uri=store.uri(prefix),
              run_id=request.pipeline_run_id, parent=parent, same_weights_as=existing["same_weights"] or None)
    result = RegistrationResult(model_name=name, version=version, uri=store.uri(prefix), created=True,
                                weights_sha256=weights_sha256, same_weights_as=existing["same_weights"],
                                ungated=gates["ungated"])
    return _sync_model_registry(store, result, model_registry)


def _digests(directory: Path) -> dict[str, str]:
    from livo.store import sha256_file

    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def _find_existing(store: Any, name: str, run_id: str, weights_sha256: str) -> dict[str, Any]:
    same_run: str | None = None
    same_weights: list[str] = []
    for version in list_versions(store, name):
        manifest = read_verified_manifest(store, name, version)
        if manifest.get("pipeline_run_id") == run_id:
            if manifest.get("weights_sha256") != weights_sha256:
                raise LivoError(f"pipeline run {run_id} already registered {name}@{version} with other weights "
                                f"({manifest.get('weights_sha256')}); a run registers one model — start a new run")
            same_run = version
        elif manifest.get("weights_sha256") == weights_sha256:
            same_weights.append(version)
    return {"same_run": same_run, "same_weights": same_weights}


def _claim_version(store: Any, name: str, run_id: str, now: float | None) -> tuple[str, str | None]:
    """The next version number, after reclaiming the debris of an interrupted registration in its place."""
    committed = list_versions(store, name)
    parent = committed[-1] if committed else None
    number = _version_number(parent) + 1 if parent else 1
    version = f"v{number}"
    current = now if now is not None else time.time()
    marker = _marker_key(name, version)
    if store.exists(marker):
        info = store.get_json(marker)
        age = current - float(info.get("started_at", 0))
        if info.get("run_id") != run_id and age < STALE_REGISTRATION_S:
            raise LivoError(f"another registration of {name}@{version} is in progress (pipeline run "
                            f"{info.get('run_id')}, started {age:.0f}s ago); retry when it has finished")
    leftovers = store.delete_prefix(version_prefix(name, version))
    if leftovers:
        log_event(logger, "reclaimed interrupted registration", model=name, version=version, objects=leftovers)
    store.put_json(marker, {"run_id": run_id, "started_at": current})
    return version, parent


def _release_marker(store: Any, name: str, version: str) -> None:
    try:
        store.delete(_marker_key(name, version))
    except StoreError as exc:  # the version is committed; a stale marker only delays nothing (same run reclaims)
        log_event(logger, "could not delete registration marker", model=name, version=version, error=str(exc))


def _abandon(store: Any, name: str, version: str) -> None:
    """Best effort: remove a failed registration's objects (when the store is down they stay, uncommitted)."""
    try:
        store.delete_prefix(version_prefix(name, version))
        store.delete(_marker_key(name, version))
    except (StoreError, OSError) as exc:
        log_event(logger, "partial registration left for the next registration to reclaim", model=name,
                  version=version, error=str(exc))


def _sync_model_registry(store: Any, result: RegistrationResult, model_registry: Any) -> RegistrationResult:
    from livo.registry.model_registry import KubeflowModelRegistry

    registry = model_registry if model_registry is not None else KubeflowModelRegistry.from_env()
    if registry is None:
        log_event(logger, "Kubeflow Model Registry not configured (LIVO_MODEL_REGISTRY_URL unset); skipped",
                  model=result.model_name, version=result.version)
        return result
    record = load_lineage(store, result.model_name, result.version)
    lineage_sha256 = store.sha256(version_prefix(result.model_name, result.version) + LINEAGE_FILE)  # as stored
    try:
        entry = registry.register(record, uri=result.uri, lineage_sha256=lineage_sha256)
    except LivoError as exc:
        raise LivoError(f"{result.ref} is registered in the object store ({result.uri}) but the Kubeflow Model "
                        f"Registry entry failed: {exc}; re-run the same registration to retry (it is idempotent)"
                        ) from exc
    return result.model_copy(update={"model_registry": entry})


def _dataset_manifest(store: Any, location: str) -> dict[str, Any] | None:
    """The dataset manifest as JSON (for its dataset id and pairs per principle in the report and card); None when it
    is not a JSON object (registration records its digest either way)."""
    try:
        manifest = json.loads(read_bytes_at(store, location))
    except (ValueError, UnicodeDecodeError, LivoError, OSError) as exc:
        log_event(logger, "dataset manifest not readable as JSON; report and card show no dataset id",
                  manifest=location, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    return manifest if isinstance(manifest, dict) else None


def _add_registration_to_report(path: Path, lineage: dict[str, Any]) -> None:
    """Put the registered version's block (name@version, code commit, image, KFP and MLflow run ids, dataset id and
    size per principle) into the staged report.html; metrics.json is not touched (it is hash-bound)."""
    from livo.evaluation.report import with_registration

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        log_event(logger, "report.html is not UTF-8; stored as given, without the registration block")
        return
    path.write_text(with_registration(text, lineage), encoding="utf-8")
