"""livo.artifacts: what the pipeline's KFP artifacts carry (pointers with the digests lineage.json records, or the
files themselves), and the checks their consumers make. Local directories stand in for the object store here;
tests/components/test_register.py and the local run in tests/pipelines/test_local_run.py use the real one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from livo.artifacts import (
    check_file_artifact,
    dataset_pointer,
    dataset_uri_of,
    file_artifact,
    local_model,
    model_pointer,
    read_pointer,
    registration_digests,
    write_pointer,
)
from livo.errors import ConfigError, LivoError
from livo.registry.lineage import digest_at, value_encoder_digest
from livo.store import sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))
from registration_inputs import write_value_encoder  # noqa: E402

DIGEST = "sha256:" + "1" * 64


def test_a_pointer_round_trips_and_an_altered_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model"
    metadata = write_pointer(path, {"uri": "s3://b/run/train/value_encoder", "sha256": DIGEST, "files": {"a": "b"}})
    assert read_pointer(path, metadata, "Model") == metadata == json.loads(path.read_text())
    assert read_pointer(path, {}, "Model")["uri"] == "s3://b/run/train/value_encoder"  # metadata is optional
    with pytest.raises(ConfigError, match=r"the Model artifact's metadata says sha256 sha256:2+ but its file .* "
                                          r"says sha256:1+; the artifact was altered"):
        read_pointer(path, {**metadata, "sha256": "sha256:" + "2" * 64}, "Model")
    path.write_bytes(b"\x00weights")
    with pytest.raises(ConfigError, match="the Model artifact at .* is not a livo pointer"):
        read_pointer(path, metadata, "Model")
    with pytest.raises(ConfigError, match="the Dataset artifact has no file at"):
        read_pointer(tmp_path / "missing", None, "Dataset")
    with pytest.raises(LivoError, match="needs 'uri' and a 'sha256' digest"):
        write_pointer(path, {"uri": "s3://b/x", "sha256": "md5:abc"})


def test_a_file_artifact_is_the_file_and_carries_its_digest(tmp_path: Path) -> None:
    source = tmp_path / "out" / "metrics.json"
    source.parent.mkdir()
    source.write_text('{"passed": true}\n')
    metadata = file_artifact(source, tmp_path / "kfp" / "metrics", "s3://b/run/evaluation/metrics.json")
    assert metadata == {"uri": "s3://b/run/evaluation/metrics.json", "sha256": sha256_file(source)}
    assert (tmp_path / "kfp" / "metrics").read_bytes() == source.read_bytes()
    assert check_file_artifact(tmp_path / "kfp" / "metrics", metadata, "Metrics") == sha256_file(source)
    (tmp_path / "kfp" / "metrics").write_text('{"passed": false}\n')
    with pytest.raises(ConfigError, match="the Metrics artifact's metadata says sha256 .* but its file"):
        check_file_artifact(tmp_path / "kfp" / "metrics", metadata, "Metrics")


def test_the_dataset_pointer_carries_the_manifest_digest_lineage_records(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"num_rows": 5, "principle_set_hash": DIGEST}))
    pointer = dataset_pointer(str(dataset), {"num_rows": 5, "principle_set_hash": DIGEST})
    assert pointer == {"uri": str(dataset), "manifest_uri": f"{dataset}/manifest.json",
                       "sha256": digest_at(None, f"{dataset}/manifest.json"), "num_rows": 5,
                       "principle_set_hash": DIGEST}
    write_pointer(tmp_path / "artifact", pointer)
    assert dataset_uri_of(tmp_path / "artifact", pointer) == str(dataset)
    (dataset / "manifest.json").write_text(json.dumps({"num_rows": 6}))
    with pytest.raises(ConfigError, match=r"manifest.json has sha256 sha256:[0-9a-f]{64} but the Dataset artifact "
                                          r"says sha256:[0-9a-f]{64}; the dataset changed after it was merged"):
        dataset_uri_of(tmp_path / "artifact", pointer)
    with pytest.raises(LivoError, match="has no manifest.json: the dataset is not merged"):
        dataset_pointer(str(tmp_path / "empty"))


def _finished_training(output: Path) -> Path:
    """A training output as rank 0 leaves it: the value encoder and result.json listing its files' digests."""
    encoder = write_value_encoder(output / "value_encoder")
    files = {p.name: sha256_file(p) for p in sorted(encoder.iterdir())}
    (output / "result.json").write_text(json.dumps({
        "value_encoder": {"uri": str(encoder), "files": files}, "dataset": {"principle_set_hash": DIGEST},
        "base_model": {"source": "tiny", "fingerprint": DIGEST}, "metrics": {"loss": 0.5}}))
    return encoder


def test_the_model_pointer_carries_the_weights_digest_registration_records(tmp_path: Path) -> None:
    encoder = _finished_training(tmp_path / "train")
    pointer, result = model_pointer(str(tmp_path / "train"))
    assert pointer["sha256"] == value_encoder_digest(encoder)  # = lineage's model.weights_sha256
    assert pointer["uri"] == str(encoder) and pointer["training_output_uri"] == str(tmp_path / "train")
    assert pointer["principle_set_hash"] == DIGEST and result["metrics"] == {"loss": 0.5}
    assert local_model(pointer, tmp_path / "work") == str(encoder)
    with pytest.raises(ConfigError, match="digests to sha256:.* but the Model artifact says sha256:1+; the weights "
                                          "changed after training"):
        local_model({**pointer, "sha256": DIGEST}, tmp_path / "work")
    with pytest.raises(LivoError, match="has no result.json: the training run did not finish"):
        model_pointer(str(tmp_path / "unfinished"))


def test_registration_digests_name_the_request_keys() -> None:
    assert registration_digests(model={"sha256": "m"}, dataset={"sha256": "d"}, metrics="x", report="r") == {
        "value_encoder": "m", "dataset_manifest": "d", "metrics": "x", "report": "r"}
    assert registration_digests(model={"sha256": "m"}) == {"value_encoder": "m"}
