"""The lineage record (`lineage.json` beside every registered model) and its audit: show, verify, diff.

Schema (DESIGN.md "Lineage record"; documented in docs/registry.md): which pipeline run produced the model (run id and
name, pipeline spec hash, git commit, container image digest), from what (principle-set hash and file, dataset manifest
hash and URI, base model id and fingerprint), how (training config and seed), how good (evaluation metrics, report
URI, gate verdict), what it replaced (parent version) and what it is (the sha256 of every file of the model).

The chain of digests (docs/registry.md "Verification chain"), cycle-free: `manifest.json`, the commit object written
last, records the sha256 of every other file of the version (lineage.json included) and a content digest over all of
its own fields (`manifest_sha256`, optionally signed: `hmac_sha256`, an HMAC-SHA256 of that digest keyed by
`LIVO_LINEAGE_HMAC_KEY`). `verify_version` recomputes every hash — the manifest's own first, so that an edit of the
manifest (a field, or a byte inside a digest it records) is blamed on manifest.json and not on the file the digest
describes — and checks that the principle set and dataset manifest the record names still exist and match; it returns
every mismatch, so `livo lineage verify` can name them all at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from livo.config import LivoConfig, flatten  # noqa: F401  (flatten: also this module's API)
from livo.errors import ConfigError, LivoError, StoreError
from livo.registry.versions import MANIFEST_FILE, resolve_version, version_prefix

LINEAGE_SCHEMA_VERSION = 1
LINEAGE_FILE = "lineage.json"
MANIFEST_SCHEMA_VERSION = 2  # 2: the manifest carries `manifest_sha256` over its own fields (1: it did not)
MANIFEST_DIGEST_KEY = "manifest_sha256"
MANIFEST_SIGNATURE_KEY = "hmac_sha256"
HMAC_KEY_ENV = "LIVO_LINEAGE_HMAC_KEY"  # in a cluster: mapped from a Secret; never logged or recorded
DIGEST_RE = r"^sha256:[0-9a-f]{64}$"
VALUE_ENCODER_PATH = "value_encoder"
# the fields of metrics.json that bind an evaluation to what it evaluated (written by livo.evaluation.protocol)
EVALUATED_KEY = "evaluated"

# Keys whose values are never written to lineage records or model cards, wherever they appear in a config: a key is
# secret when one of its words (snake, kebab or camel case) is one of these, or two adjacent words form such a pair.
_SECRET_WORDS = {"secret", "password", "passwd", "credential", "credentials", "apikey", "secretkey", "accesskey",
                 "privatekey"}
# "token" is a secret as the last word (hf_token, auth_token) but not in "max_token_length" or "value_token_dropout"
_SECRET_PAIRS = {("access", "key"), ("api", "key"), ("private", "key"), ("secret", "key"), ("auth", "header")}
_URI_USERINFO_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
REDACTED = "<redacted>"


# ----------------------------------------------------------------------------------------------------- the record
class ModelSection(LivoConfig):
    name: str
    version: str
    registered_at: str
    description: str = ""
    parent_version: str | None = Field(None, description="the latest version before this one was registered")
    weights_sha256: str = Field(pattern=DIGEST_RE, description="digest over every value-encoder file (name + digest)")
    same_weights_as: list[str] = Field(default_factory=list,
                                       description="earlier versions with bit-identical weights (other runs)")
    value_encoder_path: str = "value_encoder"


class PipelineSection(LivoConfig):
    run_id: str
    run_name: str = ""
    spec_hash: str = ""
    git_commit: str = ""
    image_digest: str = Field("", description="the digest-pinned image the pipeline's tasks ran in; empty when none")
    image_ran_in: str = Field("", description="container (image_digest names it) or a local process (no image)")
    mlflow_run_id: str = Field("", description="the pipeline run's MLflow run (its stages are nested runs); empty when "
                                               "tracking was off")
    tracking_uri: str = Field("", description="the MLflow tracking URI the run logged to (credentials redacted)")


class PrinciplesSection(LivoConfig):
    hash: str = Field(pattern=DIGEST_RE)
    uri: str = Field(description="where the principles file was read from")
    stored_copy: str = "principles.yaml"
    ids: list[str]


class DatasetSection(LivoConfig):
    manifest_uri: str
    manifest_sha256: str = Field(pattern=DIGEST_RE)


class TrainingSection(LivoConfig):
    config: dict[str, Any]
    seed: int


class BaseModelSection(LivoConfig):
    id: str
    fingerprint: str


class EvaluationSection(LivoConfig):
    passed: bool
    forced: bool = Field(False, description="registered although `passed` was false or the metrics were not bound to "
                                            "the weights (explicit force)")
    forced_reasons: list[str] = Field(default_factory=list, description="what --force overrode")
    # Added after schema_version 1 was first written; the defaults keep older records readable.
    ungated: bool = Field(False, description="the evaluation decided no gate (none configured or all waived); "
                                             "registered only because the request said allow_ungated")
    waivers: list[dict[str, str]] = Field(default_factory=list,
                                          description="every waived gate: {gate, reason} (gates.waive)")
    metrics_file: str = "metrics.json"
    report_uri: str
    metrics: dict[str, Any]


class LineageRecord(LivoConfig):
    schema_version: Literal[1] = LINEAGE_SCHEMA_VERSION
    model: ModelSection
    pipeline: PipelineSection
    principles: PrinciplesSection
    dataset: DatasetSection
    training: TrainingSection
    base_model: BaseModelSection
    evaluation: EvaluationSection
    files: dict[str, str] = Field(description="relpath within the version -> sha256 of every file except "
                                              "lineage.json and manifest.json")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_bytes(cls, data: bytes, source: str) -> LineageRecord:
        from pydantic import ValidationError

        from livo.config import format_validation_error

        try:
            return cls.model_validate(json.loads(data))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LivoError(f"{source}: not valid JSON ({exc}); the lineage record is corrupted") from None
        except ValidationError as exc:
            raise LivoError(format_validation_error(exc, source)) from None


# ------------------------------------------------------------------------------------------------------ redaction
def is_secret_key(key: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w]
    # "token" last is a secret (hf_token), except LiVO's own value token (images_with_value_token, no_token)
    return (any(w in _SECRET_WORDS for w in words) or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))
            or (bool(words) and words[-1] == "token" and (len(words) < 2 or words[-2] not in ("value", "no"))))


def redact(value: Any, secrets_to_hide: tuple[str, ...] = ()) -> Any:
    """A copy of `value` with secret-looking keys blanked, credentials stripped from URIs and any of
    `secrets_to_hide` (e.g. the object-store secret) replaced wherever it appears in a string."""
    if isinstance(value, dict):  # a secret is a scalar: a mapping under a secret-looking key is searched, not blanked
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                    and not isinstance(v, dict | list | tuple) else redact(v, secrets_to_hide))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets_to_hide) for v in value]
    if isinstance(value, str):
        text = _URI_USERINFO_RE.sub(r"\g<scheme>", value)
        for secret in secrets_to_hide:
            if secret and len(secret) >= 4:
                text = text.replace(secret, REDACTED)
        return text
    return value


# ------------------------------------------------------------------------------------------------------- reading
def lineage_rows(record: LineageRecord) -> list[tuple[str, str]]:
    """(field, value) rows for `livo lineage show`."""
    r = record
    rows = [
        ("model", f"{r.model.name}@{r.model.version}"),
        ("registered at", r.model.registered_at),
        ("parent version", r.model.parent_version or "-"),
        ("weights sha256", r.model.weights_sha256),
        ("same weights as", ", ".join(r.model.same_weights_as) or "-"),
        ("pipeline run", f"{r.pipeline.run_id}" + (f" ({r.pipeline.run_name})" if r.pipeline.run_name else "")),
        ("pipeline spec hash", r.pipeline.spec_hash or "-"),
        ("git commit", r.pipeline.git_commit or "-"),
        ("image digest", r.pipeline.image_digest or r.pipeline.image_ran_in or "-"),
        ("MLflow run", (r.pipeline.mlflow_run_id + (f" ({r.pipeline.tracking_uri})" if r.pipeline.tracking_uri else ""))
         if r.pipeline.mlflow_run_id else "-"),
        ("principle set", f"{r.principles.hash} ({', '.join(r.principles.ids)})"),
        ("principles file", r.principles.uri),
        ("dataset manifest", f"{r.dataset.manifest_uri}"),
        ("dataset manifest sha256", r.dataset.manifest_sha256),
        ("base model", r.base_model.id),
        ("base model fingerprint", r.base_model.fingerprint),
        ("training seed", str(r.training.seed)),
    ]
    rows += [(f"training.{k}", json.dumps(v) if not isinstance(v, str) else v)
             for k, v in flatten(r.training.config).items()]
    verdict = "passed" if r.evaluation.passed else ("FAILED (forced)" if r.evaluation.forced else "FAILED")
    if r.evaluation.ungated:
        verdict = "UNGATED (no gate decided anything; registered with --allow-ungated)"
    rows += [("evaluation", verdict), ("evaluation report", r.evaluation.report_uri)]
    rows += [(f"waived gate {w.get('gate')}", w.get("reason", "")) for w in r.evaluation.waivers]
    rows += [(f"metric {k}", _fmt_number(v)) for k, v in headline_metrics(r.evaluation.metrics).items()]
    rows += [(f"file {k}", v) for k, v in sorted(r.files.items())]
    return rows


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """`<principle>.<side>.<metric>` and `quality.<name>.<side>` numbers of a metrics.json (numbers only)."""
    out: dict[str, Any] = {}
    for pid, entry in (metrics.get("principles") or {}).items():
        if not isinstance(entry, dict):
            continue
        for side in ("base", "aligned"):
            for key, value in (entry.get(side) or {}).items():
                if _is_number(value):
                    out[f"{pid}.{side}.{key}"] = value
            token = (entry.get("subject_fidelity") or {}).get("token") if isinstance(
                entry.get("subject_fidelity"), dict) else None
            if isinstance(token, dict) and _is_number(token.get(side)):
                out[f"{pid}.{side}.subject_fidelity_token"] = token[side]
    for name, block in (metrics.get("quality") or {}).items():
        if isinstance(block, dict):
            for side in ("base", "aligned"):
                if _is_number(block.get(side)):
                    out[f"quality.{name}.{side}"] = block[side]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# ------------------------------------------------------------------------------------------------------ verify
class Mismatch(LivoConfig):
    subject: str  # a file's relpath, "principles", "dataset", "lineage", "version"
    detail: str


def verify_version(store: Any, name: str, version: str) -> list[Mismatch]:
    """Every mismatch between `models/<name>/<version>/` and what its manifest and lineage record say.

    An empty list means: manifest.json is byte for byte what registration sealed (its content digest, and its HMAC
    signature when `LIVO_LINEAGE_HMAC_KEY` is set, verify), every file it lists exists with the recorded digest,
    nothing unlisted is stored, lineage.json agrees with the manifest, the stored files and metrics, and the principle
    set and dataset manifest it names still exist with the recorded hashes.

    When manifest.json itself does not verify, its recorded digests are not trusted: the damage is blamed on
    manifest.json, and the other files are checked against the digests lineage.json records instead.
    """
    resolve_version(store, name, version)  # raises for an unknown/uncommitted version
    prefix = version_prefix(name, version)
    manifest, manifest_issues = check_manifest(store.get_bytes(prefix + MANIFEST_FILE))
    problems = [Mismatch(subject=MANIFEST_FILE, detail=issue) for issue in manifest_issues]
    trusted = manifest is not None and not manifest_issues
    stored = {key[len(prefix):] for key in store.list(prefix)}

    record: LineageRecord | None = None
    lineage_problem: str | None = "missing: the version has no lineage record"
    if LINEAGE_FILE in stored:
        try:
            record = LineageRecord.from_json_bytes(store.get_bytes(prefix + LINEAGE_FILE),
                                                   store.uri(prefix + LINEAGE_FILE))
            lineage_problem = None
        except LivoError as exc:
            lineage_problem = str(exc)

    # The expected digests: the manifest's when it verifies, else lineage.json's (which cannot vouch for itself).
    if trusted:
        listed: dict[str, str] = dict(manifest.get("files") or {})
        source, unlisted_ok = "manifest", {MANIFEST_FILE}
        if not listed:
            problems.append(Mismatch(subject=MANIFEST_FILE, detail="lists no files"))
    else:
        listed = dict(record.files) if record is not None else {}
        source, unlisted_ok = "lineage.json", {MANIFEST_FILE, LINEAGE_FILE}
    actual: dict[str, str] = {}
    for relpath, digest in sorted(listed.items()):
        if relpath not in stored:
            problems.append(Mismatch(subject=relpath, detail="missing from the store"))
            continue
        actual[relpath] = store.sha256(prefix + relpath)
        if actual[relpath] != digest:
            problems.append(Mismatch(subject=relpath, detail=f"sha256 is {actual[relpath]}, {source} records {digest}"))
    for relpath in sorted(stored - set(listed) - unlisted_ok):
        problems.append(Mismatch(subject=relpath, detail=f"stored but not listed in the {source} (added later?)"))
    if record is None:
        return [*problems, Mismatch(subject=LINEAGE_FILE, detail=lineage_problem or "unreadable")]

    if (record.model.name, record.model.version) != (name, version):
        problems.append(Mismatch(subject=LINEAGE_FILE, detail=f"describes {record.model.name}@{record.model.version}"))
    if manifest is not None:
        subject = LINEAGE_FILE if trusted else MANIFEST_FILE
        problems += [Mismatch(subject=subject, detail=d) for d in _manifest_vs_lineage(manifest, record)]
    if trusted:
        for relpath, digest in sorted(record.files.items()):
            if listed.get(relpath) == digest:
                continue  # the manifest records the same digest: already checked (and reported) above
            if relpath not in stored:
                problems.append(Mismatch(subject=relpath, detail="named by lineage.json but missing from the store"))
                continue
            seen = actual.get(relpath) or store.sha256(prefix + relpath)
            if seen != digest:
                problems.append(Mismatch(subject=relpath, detail=f"sha256 is {seen}, lineage.json records {digest}"))
    problems += _verify_weights_digest(record)
    problems += _verify_metrics(store, prefix, record, stored)
    problems += _verify_principles(store, prefix, record, stored)
    problems += _verify_dataset(store, record)
    return problems


# --------------------------------------------------------------------------------------------- the commit object
def canonical_sha256(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value` (sorted keys, no whitespace): digests of configs, manifests."""
    from livo.data.dataset import canonical_json

    return "sha256:" + hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The content digest of a manifest: over every field except the digest itself and its signature."""
    return canonical_sha256({k: v for k, v in manifest.items() if k not in (MANIFEST_DIGEST_KEY,
                                                                            MANIFEST_SIGNATURE_KEY)})


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes registration stores (so that any byte edit, even one JSON does not see, is detected)."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def hmac_key() -> bytes | None:
    key = os.environ.get(HMAC_KEY_ENV, "")
    return key.encode("utf-8") if key else None


def sign_digest(digest: str, key: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, digest.encode("utf-8"), hashlib.sha256).hexdigest()


def seal_manifest(payload: dict[str, Any]) -> bytes:
    """The bytes of a commit object for `payload`: schema 2, its content digest, signed when a key is configured."""
    sealed = {**payload, "schema_version": MANIFEST_SCHEMA_VERSION}
    sealed[MANIFEST_DIGEST_KEY] = manifest_digest(sealed)
    key = hmac_key()
    if key is not None:
        sealed[MANIFEST_SIGNATURE_KEY] = sign_digest(sealed[MANIFEST_DIGEST_KEY], key)
    return manifest_bytes(sealed)


def check_manifest(data: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """(the parsed manifest or None, what is wrong with it): its content digest, exact bytes and signature."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [f"not valid JSON ({_first_line(exc)}): the commit object was edited or corrupted"]
    if not isinstance(manifest, dict):
        return None, ["not a JSON object: the commit object was edited or corrupted"]
    recorded = manifest.get(MANIFEST_DIGEST_KEY)
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION or not recorded:
        return manifest, [f"carries no content digest ({MANIFEST_DIGEST_KEY}; schema_version "
                          f"{manifest.get('schema_version')!r}, written before manifests were sealed), so its fields "
                          "cannot be verified; re-register the model to seal it"]
    recomputed = manifest_digest(manifest)
    if recomputed != recorded:
        return manifest, [f"edited after registration: its content digest is {recomputed}, it records {recorded}"]
    problems = []
    if data != manifest_bytes(manifest):
        problems.append("edited after registration: its bytes differ from the form registration wrote "
                        "(same fields, other formatting)")
    key = hmac_key()
    signature = manifest.get(MANIFEST_SIGNATURE_KEY)
    if key is not None:
        if not signature:
            problems.append(f"not signed, but {HMAC_KEY_ENV} is set: it was registered without the key or its "
                            "signature was removed")
        elif not hmac.compare_digest(str(signature), sign_digest(recorded, key)):
            problems.append(f"HMAC signature does not match: forged, or signed with another {HMAC_KEY_ENV}")
    return manifest, problems


def _manifest_vs_lineage(manifest: dict[str, Any], record: LineageRecord) -> list[str]:
    """Fields the manifest repeats from lineage.json that disagree with it."""
    pairs = {"model": record.model.name, "version": record.model.version, "pipeline_run_id": record.pipeline.run_id,
             "weights_sha256": record.model.weights_sha256, "principle_set_hash": record.principles.hash,
             "committed_at": record.model.registered_at}
    problems = [f"{key} {manifest.get(key)!r} differs from lineage.json's {expected!r}"
                for key, expected in pairs.items() if key in manifest and manifest[key] != expected]
    files = manifest.get("files")
    if isinstance(files, dict):
        without_lineage = {k: v for k, v in files.items() if k != LINEAGE_FILE}
        for relpath in sorted(set(without_lineage) | set(record.files)):
            if without_lineage.get(relpath) != record.files.get(relpath):
                problems.append(f"files[{relpath!r}] {without_lineage.get(relpath)} differs from lineage.json's "
                                f"{record.files.get(relpath)}")
    return problems


def weights_digest(files: dict[str, str], value_encoder_path: str = "value_encoder") -> str:
    """One digest over the value encoder's files (relative name + digest), so identical weights compare equal."""
    import hashlib

    prefix = value_encoder_path.rstrip("/") + "/"
    lines = [f"{rel[len(prefix):]} {digest}\n" for rel, digest in sorted(files.items()) if rel.startswith(prefix)]
    if not lines:
        raise LivoError(f"no value-encoder files under {prefix} to digest")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def value_encoder_digest(directory: str | Path) -> str:
    """`weights_digest` of a local value-encoder folder: the digest evaluation records and registration compares."""
    from livo.store import sha256_file

    directory = Path(directory)
    files = {f"{VALUE_ENCODER_PATH}/{p.relative_to(directory).as_posix()}": sha256_file(p)
             for p in sorted(directory.rglob("*")) if p.is_file()}
    return weights_digest(files, VALUE_ENCODER_PATH)


def _verify_weights_digest(record: LineageRecord) -> list[Mismatch]:
    try:
        recomputed = weights_digest(record.files, record.model.value_encoder_path)
    except LivoError as exc:
        return [Mismatch(subject=LINEAGE_FILE, detail=str(exc))]
    if recomputed != record.model.weights_sha256:
        return [Mismatch(subject=LINEAGE_FILE, detail=f"model.weights_sha256 {record.model.weights_sha256} does not "
                                                      f"match its file digests ({recomputed})")]
    return []


def _verify_metrics(store: Any, prefix: str, record: LineageRecord, stored: set[str]) -> list[Mismatch]:
    name = record.evaluation.metrics_file
    if name not in stored:
        return [Mismatch(subject=name, detail="missing from the store")]
    try:
        metrics = json.loads(store.get_bytes(prefix + name))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [Mismatch(subject=name, detail=f"not valid JSON ({exc})")]
    if json.dumps(metrics, sort_keys=True) != json.dumps(record.evaluation.metrics, sort_keys=True):
        return [Mismatch(subject=LINEAGE_FILE, detail=f"evaluation.metrics differ from the stored {name}")]
    return []


def _principle_hash_of_text(text: str, source: str) -> str:
    from livo.principles import load_principles_text

    return load_principles_text(text, source=source).hash


def _verify_principles(store: Any, prefix: str, record: LineageRecord, stored: set[str]) -> list[Mismatch]:
    problems: list[Mismatch] = []
    expected = record.principles.hash
    copy_name = record.principles.stored_copy
    if copy_name in stored:
        try:
            got = _principle_hash_of_text(store.get_bytes(prefix + copy_name).decode("utf-8"), store.uri(prefix + copy_name))
            if got != expected:
                problems.append(Mismatch(subject=copy_name, detail=f"principle-set hash is {got}, lineage records "
                                                                   f"{expected}"))
        except (LivoError, UnicodeDecodeError) as exc:
            problems.append(Mismatch(subject=copy_name, detail=f"does not load: {_first_line(exc)}"))
    uri = record.principles.uri
    try:
        text = read_text_at(store, uri)
    except (LivoError, OSError) as exc:
        problems.append(Mismatch(subject="principles", detail=f"the principles file {uri} cannot be read: "
                                                             f"{_first_line(exc)}"))
        return problems
    try:
        got = _principle_hash_of_text(text, uri)
    except LivoError as exc:
        problems.append(Mismatch(subject="principles", detail=f"{uri} no longer validates: {_first_line(exc)}"))
        return problems
    if got != expected:
        problems.append(Mismatch(subject="principles", detail=f"{uri} now has principle-set hash {got}, lineage records "
                                                             f"{expected} (the file was edited since registration)"))
    return problems


def _verify_dataset(store: Any, record: LineageRecord) -> list[Mismatch]:
    uri = record.dataset.manifest_uri
    try:
        got = digest_at(store, uri)
    except (LivoError, OSError) as exc:
        return [Mismatch(subject="dataset", detail=f"the dataset manifest {uri} cannot be read: {_first_line(exc)}")]
    if got != record.dataset.manifest_sha256:
        return [Mismatch(subject="dataset", detail=f"{uri} has sha256 {got}, lineage records "
                                                   f"{record.dataset.manifest_sha256}")]
    return []


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_bytes_at(store: Any, uri_or_path: str) -> bytes:
    """Bytes of an ``s3://`` object (through `store`'s endpoint and credentials) or of a local file."""
    if uri_or_path.startswith("s3://"):
        from livo.store import parse_s3_uri

        _, key = parse_s3_uri(uri_or_path)
        return store.for_uri(uri_or_path).get_bytes(key)
    path = Path(uri_or_path)
    if not path.is_file():
        raise StoreError(f"{uri_or_path}: no such file")
    return path.read_bytes()


def read_text_at(store: Any, uri_or_path: str) -> str:
    try:
        return read_bytes_at(store, uri_or_path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LivoError(f"{uri_or_path}: not UTF-8 text ({exc})") from None


def digest_at(store: Any, uri_or_path: str) -> str:
    if uri_or_path.startswith("s3://"):
        from livo.store import parse_s3_uri

        _, key = parse_s3_uri(uri_or_path)
        return store.for_uri(uri_or_path).sha256(key)
    from livo.store import sha256_file

    if not Path(uri_or_path).is_file():
        raise StoreError(f"{uri_or_path}: no such file")
    return sha256_file(uri_or_path)


# -------------------------------------------------------------------------------------------------------- diff
def diff_records(a: LineageRecord, b: LineageRecord, principles_a: Any = None, principles_b: Any = None
                 ) -> dict[str, Any]:
    """What changed from version A to version B: principles, data, training config, base model, pipeline, metrics.

    `principles_a/b` are the stored `PrincipleSet`s (optional): with them, added/removed ids and changed texts are
    reported, not only the hash.
    """
    out: dict[str, Any] = {"a": f"{a.model.name}@{a.model.version}", "b": f"{b.model.name}@{b.model.version}"}
    principles: dict[str, Any] = {"changed": a.principles.hash != b.principles.hash,
                                  "hash": [a.principles.hash, b.principles.hash],
                                  "added": sorted(set(b.principles.ids) - set(a.principles.ids)),
                                  "removed": sorted(set(a.principles.ids) - set(b.principles.ids))}
    if principles_a is not None and principles_b is not None:
        texts = {}
        details = {}
        for pid in sorted(set(principles_a.ids) & set(principles_b.ids)):
            pa, pb = principles_a.get(pid), principles_b.get(pid)
            if pa.text != pb.text:
                texts[pid] = [pa.text, pb.text]
            if pa.model_dump(mode="json") != pb.model_dump(mode="json"):
                changed_fields = _changed_keys(pa.model_dump(mode="json"), pb.model_dump(mode="json"))
                details[pid] = changed_fields
        principles["text_changed"] = texts
        principles["fields_changed"] = details
    out["principles"] = principles
    out["data"] = {"changed": (a.dataset.manifest_uri, a.dataset.manifest_sha256)
                   != (b.dataset.manifest_uri, b.dataset.manifest_sha256),
                   "manifest_uri": [a.dataset.manifest_uri, b.dataset.manifest_uri],
                   "manifest_sha256": [a.dataset.manifest_sha256, b.dataset.manifest_sha256]}
    config_a = flatten({"seed": a.training.seed, **a.training.config})
    config_b = flatten({"seed": b.training.seed, **b.training.config})
    out["config"] = {key: [config_a.get(key), config_b.get(key)] for key in sorted(set(config_a) | set(config_b))
                     if config_a.get(key) != config_b.get(key)}
    out["base_model"] = {key: [getattr(a.base_model, key), getattr(b.base_model, key)] for key in ("id", "fingerprint")
                         if getattr(a.base_model, key) != getattr(b.base_model, key)}
    out["pipeline"] = {key: [getattr(a.pipeline, key), getattr(b.pipeline, key)]
                       for key in ("run_id", "run_name", "spec_hash", "git_commit", "image_digest", "image_ran_in")
                       if getattr(a.pipeline, key) != getattr(b.pipeline, key)}
    out["weights"] = {"changed": a.model.weights_sha256 != b.model.weights_sha256,
                      "sha256": [a.model.weights_sha256, b.model.weights_sha256]}
    metrics_a, metrics_b = headline_metrics(a.evaluation.metrics), headline_metrics(b.evaluation.metrics)
    metrics: dict[str, Any] = {}
    for key in sorted(set(metrics_a) | set(metrics_b)):
        va, vb = metrics_a.get(key), metrics_b.get(key)
        if va != vb:
            metrics[key] = {"a": va, "b": vb, "change": (vb - va) if va is not None and vb is not None else None}
    out["metrics"] = metrics
    out["evaluation"] = {"passed": [a.evaluation.passed, b.evaluation.passed]}
    return out


def _changed_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def format_diff(diff: dict[str, Any]) -> str:
    lines = [f"{diff['a']} -> {diff['b']}"]
    p = diff["principles"]
    if not p["changed"]:
        lines.append("principles: unchanged")
    else:
        lines.append(f"principles: {p['hash'][0]} -> {p['hash'][1]}")
        lines += [f"  + {pid}" for pid in p["added"]] + [f"  - {pid}" for pid in p["removed"]]
        for pid, (ta, tb) in p.get("text_changed", {}).items():
            lines.append(f"  ~ {pid}: text {ta!r} -> {tb!r}")
        for pid, fields in p.get("fields_changed", {}).items():
            if pid not in p.get("text_changed", {}):
                lines.append(f"  ~ {pid}: {', '.join(fields)}")
    d = diff["data"]
    lines.append("data: unchanged" if not d["changed"] else
                 f"data: {d['manifest_uri'][0]} ({d['manifest_sha256'][0][:19]}…) -> {d['manifest_uri'][1]} "
                 f"({d['manifest_sha256'][1][:19]}…)")
    lines.append("config: unchanged" if not diff["config"] else "config:")
    lines += [f"  {k}: {json.dumps(va)} -> {json.dumps(vb)}" for k, (va, vb) in diff["config"].items()]
    for section in ("base_model", "pipeline"):
        if diff[section]:
            lines.append(f"{section.replace('_', ' ')}:")
            lines += [f"  {k}: {va or '-'} -> {vb or '-'}" for k, (va, vb) in diff[section].items()]
    lines.append("weights: " + ("changed" if diff["weights"]["changed"] else "identical"))
    lines.append("metrics: unchanged" if not diff["metrics"] else "metrics (a -> b, change):")
    for key, m in diff["metrics"].items():
        change = "" if m["change"] is None else f" ({m['change']:+.4g})"
        lines.append(f"  {key}: {_fmt_number(m['a']) if m['a'] is not None else '-'} -> "
                     f"{_fmt_number(m['b']) if m['b'] is not None else '-'}{change}")
    passed = diff["evaluation"]["passed"]
    if passed[0] != passed[1]:
        lines.append(f"evaluation passed: {passed[0]} -> {passed[1]}")
    return "\n".join(lines)


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``name`` -> (name, None: the latest); ``name@v3`` / ``name@3`` -> (name, "v3"); ``name@latest`` -> latest."""
    name, sep, version = ref.partition("@")
    if not name or (sep and not version):
        raise ConfigError(f"model reference {ref!r}: write NAME or NAME@VERSION (e.g. livo-toy@v3)")
    if not sep or version == "latest":
        return name, None
    if version.isdigit():
        version = f"v{int(version)}"
    if not re.fullmatch(r"v[1-9][0-9]*", version):
        raise ConfigError(f"model reference {ref!r}: versions are v1, v2, … (or 'latest')")
    return name, version
