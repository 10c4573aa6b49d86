"""What the pipeline's KFP artifacts carry, so that KFP's lineage graph shows data -> model -> metrics -> registry.

Every artifact's metadata holds `uri` (where the bytes are in OUR object store, or "" when nothing was uploaded) and
`sha256`, the digest `lineage.json` records for the same thing (docs/operations.md, "Artifacts"):

| artifact | written by | its file | `sha256` is lineage's |
|---|---|---|---|
| `Dataset` | merge-data-shards | pointer JSON | `dataset.manifest_sha256` (manifest.json) |
| `Model` | train-value-encoder | pointer JSON | `model.weights_sha256` (`lineage.weights_digest`) |
| `Metrics` | evaluate | metrics.json itself | the stored metrics.json's digest |
| `HTML` | evaluate | report.html itself | the stored report.html's digest |

Large bytes (parquet shards, weights) stay in our store; a pointer file is that JSON object (`uri`, `sha256` and a
few facts), the same as the metadata. Metrics and the report are small: KFP's store holds the files themselves.
The consumer of an artifact checks it (`read_pointer`, `check_file_artifact`) and, for registration, hands the
digests on (`registration_digests` -> `RegistrationRequest.artifact_digests`, compared with what registration
computes). No kfp import: components pass `artifact.path` and `artifact.metadata`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError

URI_KEY = "uri"
DIGEST_KEY = "sha256"
DATASET_MANIFEST_FILE = "manifest.json"


def write_pointer(path: str | Path, pointer: dict[str, Any]) -> dict[str, Any]:
    """Write a pointer artifact's file (the JSON `pointer`, which must hold `uri` and `sha256`); returns it, for the
    artifact's metadata."""
    if not pointer.get(URI_KEY) or not str(pointer.get(DIGEST_KEY, "")).startswith("sha256:"):
        raise LivoError(f"a pointer artifact needs '{URI_KEY}' and a '{DIGEST_KEY}' digest, got {pointer}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(pointer, indent=2, sort_keys=True), encoding="utf-8")
    return pointer


def read_pointer(path: str | Path, metadata: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """The pointer a `what` artifact's file holds, checked against the artifact's metadata (when it has any)."""
    try:
        pointer = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"the {what} artifact has no file at {path}; pass the artifact a livo task wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the {what} artifact at {path} is not a livo pointer (JSON with {URI_KEY} and "
                          f"{DIGEST_KEY}): {exc}") from None
    if not isinstance(pointer, dict) or not pointer.get(URI_KEY) or not pointer.get(DIGEST_KEY):
        raise ConfigError(f"the {what} artifact at {path} lacks '{URI_KEY}' or '{DIGEST_KEY}'; pass the artifact a "
                          "livo task wrote")
    for key in (URI_KEY, DIGEST_KEY):
        if metadata and metadata.get(key) and metadata[key] != pointer[key]:
            raise ConfigError(f"the {what} artifact's metadata says {key} {metadata[key]} but its file at {path} "
                              f"says {pointer[key]}; the artifact was altered — re-run the step that wrote it")
    return pointer


def file_artifact(source: str | Path, target: str | Path, uri: str = "") -> dict[str, Any]:
    """Copy `source` (metrics.json, report.html) to the artifact's `target` path; returns its metadata: `uri` (where
    the same bytes were uploaded, "" when they were not) and `sha256`."""
    from livo.store import sha256_file

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return {URI_KEY: uri, DIGEST_KEY: sha256_file(target)}


def check_file_artifact(path: str | Path, metadata: dict[str, Any] | None, what: str) -> str:
    """The digest of a file artifact (metrics, report), which must equal the `sha256` its metadata carries."""
    from livo.store import sha256_file

    if not Path(path).is_file():
        raise ConfigError(f"the {what} artifact has no file at {path}; pass the artifact a livo task wrote")
    digest = sha256_file(path)
    recorded = (metadata or {}).get(DIGEST_KEY)
    if recorded and recorded != digest:
        raise ConfigError(f"the {what} artifact's metadata says sha256 {recorded} but its file at {path} has "
                          f"{digest}; the artifact was altered — re-run the step that wrote it")
    return digest


# ------------------------------------------------------------------------------------------------- producers
def dataset_pointer(dataset_uri: str, manifest: dict[str, Any] | None = None, *, store: Any = None
                    ) -> dict[str, Any]:
    """The `Dataset` pointer of a merged dataset: its root (`uri`), its manifest's URI and sha256 (what lineage
    records as `dataset.manifest_uri` / `manifest_sha256`), and the row count when `manifest` is given."""
    from livo.data.dataset import open_location

    location = open_location(dataset_uri, store=store)
    digest = location.sha256(DATASET_MANIFEST_FILE)
    if digest is None:
        raise LivoError(f"{location.uri} has no {DATASET_MANIFEST_FILE}: the dataset is not merged")
    pointer = {URI_KEY: location.uri, "manifest_uri": f"{location.uri.rstrip('/')}/{DATASET_MANIFEST_FILE}",
               DIGEST_KEY: digest}
    if manifest is not None:
        pointer["num_rows"] = manifest.get("num_rows")
        pointer["principle_set_hash"] = manifest.get("principle_set_hash")
    return pointer


def model_pointer(output_uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `Model` pointer of a finished training run under `output_uri`, and the run's result record.

    `sha256` is `lineage.weights_digest` over the value encoder's files as `result.json` (written last by rank 0)
    lists them, the digest registration records as `model.weights_sha256`; nothing is downloaded.
    """
    from livo.registry.lineage import VALUE_ENCODER_PATH, weights_digest
    from livo.training.checkpoint import RESULT_FILE, open_run_output

    output = open_run_output(output_uri)
    result = output.get_json(RESULT_FILE)
    if not result:
        raise LivoError(f"{output.uri} has no {RESULT_FILE}: the training run did not finish")
    try:
        encoder = result["value_encoder"]
        files = encoder["files"]
    except (KeyError, TypeError):
        raise LivoError(f"{output.uri}/{RESULT_FILE} lacks value_encoder.files; it is not the result of a finished "
                        "livo training run") from None
    digest = weights_digest({f"{VALUE_ENCODER_PATH}/{name}": sha for name, sha in files.items()}, VALUE_ENCODER_PATH)
    dataset = result.get("dataset") or {}
    pointer = {URI_KEY: encoder["uri"], DIGEST_KEY: digest, "training_output_uri": output.uri, "files": files,
               "base_model": result.get("base_model"), "principle_set_hash": dataset.get("principle_set_hash")}
    return pointer, result


# ------------------------------------------------------------------------------------------------- consumers
def dataset_uri_of(path: str | Path, metadata: dict[str, Any] | None, *, store: Any = None) -> str:
    """The dataset a `Dataset` artifact points at, refused unless its manifest still has the pointer's sha256."""
    pointer = read_pointer(path, metadata, "Dataset")
    digest = dataset_pointer(pointer[URI_KEY], store=store)[DIGEST_KEY]
    if digest != pointer[DIGEST_KEY]:
        raise ConfigError(f"{pointer.get('manifest_uri') or pointer[URI_KEY]} has sha256 {digest} but the Dataset "
                          f"artifact says {pointer[DIGEST_KEY]}; the dataset changed after it was merged — re-run "
                          "data generation")
    return pointer[URI_KEY]


def local_model(pointer: dict[str, Any], workdir: str | Path) -> str:
    """A local directory holding the value encoder a `Model` pointer names (downloaded from the store when remote),
    refused unless its files digest to the pointer's `sha256`."""
    from livo.evaluation.protocol import local_value_encoder
    from livo.modeling import resolve_value_encoder_dir
    from livo.registry.lineage import value_encoder_digest

    directory = local_value_encoder(pointer[URI_KEY], str(workdir))
    digest = value_encoder_digest(resolve_value_encoder_dir(directory))
    if digest != pointer[DIGEST_KEY]:
        raise ConfigError(f"the value encoder at {pointer[URI_KEY]} digests to {digest} but the Model artifact says "
                          f"{pointer[DIGEST_KEY]}; the weights changed after training — re-run training")
    return directory


def registration_digests(*, model: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
                         metrics: str | None = None, report: str | None = None) -> dict[str, str]:
    """`RegistrationRequest.artifact_digests` from the Model and Dataset pointers and the metrics and report
    digests (`check_file_artifact`); what is not given is not checked."""
    digests = {"value_encoder": (model or {}).get(DIGEST_KEY), "dataset_manifest": (dataset or {}).get(DIGEST_KEY),
               "metrics": metrics, "report": report}
    return {key: value for key, value in digests.items() if value}
