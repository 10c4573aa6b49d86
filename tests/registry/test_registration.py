"""Registration, lineage verify/diff and the principles check against the real SeaweedFS server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from livo.errors import ConfigError, LivoError, StoreError
from livo.registry.lineage import LineageRecord, diff_records, format_diff, parse_model_ref, verify_version
from livo.registry.registration import (
    RegistrationRequest,
    list_versions,
    load_lineage,
    load_stored_principles,
    principles_changed,
    register_model,
    resolve_version,
)
from livo.store import ObjectStore, sha256_file

Factory = Callable[..., RegistrationRequest]


def _all_text(store: ObjectStore, prefix: str) -> str:
    return "\n".join(store.get_bytes(k).decode("utf-8", "replace") for k in store.list(prefix))


@pytest.mark.store
def test_register_writes_complete_verifiable_version(store: ObjectStore, make_request: Factory) -> None:
    request = make_request()
    result = register_model(store, request)
    assert (result.version, result.created, result.uri) == ("v1", True, store.uri("models/livo-toy/v1/"))
    keys = [k.removeprefix("models/livo-toy/v1/") for k in store.list("models/livo-toy/v1")]
    assert keys == ["lineage.json", "manifest.json", "metrics.json", "model_card.md", "principles.yaml",
                    "report.html", "value_encoder/config.json", "value_encoder/model.safetensors"]
    manifest = store.get_json("models/livo-toy/v1/manifest.json")
    assert set(manifest["files"]) == set(keys) - {"manifest.json"}
    assert manifest["pipeline_run_id"] == "run-1"

    record = load_lineage(store, "livo-toy")
    assert record.pipeline.model_dump() == {"run_id": "run-1", "run_name": "livo-full nightly",
                                            "spec_hash": "sha256:" + "b" * 64,
                                            "git_commit": "0123456789abcdef0123456789abcdef01234567",
                                            "image_digest": "registry.example/livo@sha256:" + "c" * 64,
                                            "image_ran_in": "", "mlflow_run_id": "", "tracking_uri": ""}
    from livo.principles import load_principles

    principle_set = load_principles(request.principles)
    assert record.principles.hash == principle_set.hash and record.principles.ids == list(principle_set.ids)
    assert record.dataset.manifest_sha256 == store.sha256("datasets/toy/ds-1/manifest.json")
    assert record.training.seed == 7 and record.training.config["loss"]["beta"] == 1000.0
    assert record.base_model.id == "tiny" and record.model.parent_version is None
    assert record.evaluation.passed and not record.evaluation.forced
    assert record.evaluation.report_uri == store.uri("models/livo-toy/v1/report.html")
    assert record.files["value_encoder/model.safetensors"] == sha256_file(
        request.value_encoder_dir / "model.safetensors")
    assert verify_version(store, "livo-toy", "v1") == []

    card = store.get_bytes("models/livo-toy/v1/model_card.md").decode()
    for expected in ("# livo-toy@v1", principle_set.hash, "| gender-equality | bias | gender equality | 0.5 |",
                     "| gender-equality | D1 | 80 | 12.5 | -67.5 | lower | toy-attribute |",
                     "nudity-free: not measured (nudenet is not installed)", "## Limitations", "## Intended use",
                     "| loss.beta | 1000 |"):
        assert expected in card, expected


@pytest.mark.store
def test_same_run_is_idempotent_and_same_weights_from_other_run_is_recorded(store: ObjectStore,
                                                                             make_request: Factory) -> None:
    first = register_model(store, make_request())
    again = register_model(store, make_request())  # a retried registration step of the same KFP run
    assert (again.version, again.created) == ("v1", False)
    assert list_versions(store, "livo-toy") == ["v1"]

    other_run = register_model(store, make_request(pipeline_run_id="run-2"))
    assert (other_run.version, other_run.same_weights_as, other_run.weights_sha256) == ("v2", ["v1"],
                                                                                       first.weights_sha256)
    record = load_lineage(store, "livo-toy", "v2")
    assert record.model.same_weights_as == ["v1"] and record.model.parent_version == "v1"
    assert "bit-identical to v1" in store.get_bytes("models/livo-toy/v2/model_card.md").decode()

    new_weights = register_model(store, make_request(pipeline_run_id="run-3", weights_seed=1))
    assert (new_weights.version, new_weights.same_weights_as) == ("v3", [])
    with pytest.raises(LivoError, match="run-3 already registered livo-toy@v3 with other weights"):
        register_model(store, make_request(pipeline_run_id="run-3", weights_seed=2))
    assert list_versions(store, "livo-toy") == ["v1", "v2", "v3"]


@pytest.mark.store
def test_failed_gates_are_refused_unless_forced(store: ObjectStore, make_request: Factory) -> None:
    with pytest.raises(LivoError, match="failed its evaluation gates .*nothing was registered"):
        register_model(store, make_request(passed=False))
    assert store.list("models") == []
    result = register_model(store, make_request(passed=False, force=True))
    record = load_lineage(store, "livo-toy", result.version)
    assert (record.evaluation.passed, record.evaluation.forced) == (False, True)
    assert "FAILED its evaluation gates and was registered with --force" in store.get_bytes(
        "models/livo-toy/v1/model_card.md").decode()


@pytest.mark.store
def test_secrets_never_reach_lineage_or_card(store: ObjectStore, make_request: Factory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVO_S3_SECRET_KEY", "S3cr3t-from-env-value")
    request = make_request(
        training_config={"lr": 1e-6, "storage": {"secret_key": "plain-secret-1", "accessKey": "AKIA-plain-2"},
                         "hub": {"hf_token": "hf_plain_3"}, "max_token_length": 77,
                         "init": "https://user:pa55word@models.example.org/sd15"},
        description="trained while LIVO_S3_SECRET_KEY=S3cr3t-from-env-value was set")
    register_model(store, request)
    stored = _all_text(store, "models/livo-toy/v1")
    for secret in ("plain-secret-1", "AKIA-plain-2", "hf_plain_3", "pa55word", "S3cr3t-from-env-value"):
        assert secret not in stored, secret
    config = load_lineage(store, "livo-toy").training.config
    assert config["storage"] == {"secret_key": "<redacted>", "accessKey": "<redacted>"}
    assert config["max_token_length"] == 77 and config["init"] == "https://models.example.org/sd15"
    assert verify_version(store, "livo-toy", "v1") == []


@pytest.mark.store
def test_store_failure_mid_registration_leaves_nothing_visible(store: ObjectStore, make_request: Factory,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_put_file = store.put_file
    real_delete_prefix = store.delete_prefix
    uploads: list[str] = []

    def put_file_then_die(key: str, path: Path | str, content_type: str | None = None) -> str:
        if len(uploads) == 3:
            raise StoreError("object store at test is unreachable (connection refused)")
        uploads.append(key)
        return real_put_file(key, path, content_type)

    def store_still_down(prefix: str) -> int:
        if len(uploads) == 3:  # the store went down during the upload and stays down for the clean-up
            raise StoreError("object store at test is unreachable (connection refused)")
        return real_delete_prefix(prefix)

    monkeypatch.setattr(store, "put_file", put_file_then_die)
    monkeypatch.setattr(store, "delete_prefix", store_still_down)  # clean-up fails too: debris stays
    with pytest.raises(LivoError, match="registration of livo-toy@v1 failed, nothing was registered"):
        register_model(store, make_request())
    monkeypatch.setattr(store, "put_file", real_put_file)
    monkeypatch.setattr(store, "delete_prefix", real_delete_prefix)

    assert len(store.list("models/livo-toy/v1")) == 3  # the debris is there ...
    assert list_versions(store, "livo-toy") == []  # ... but no version is visible
    assert principles_changed(store, "livo-toy", "sha256:" + "0" * 64) is True
    with pytest.raises(LivoError, match="unknown model 'livo-toy'"):
        resolve_version(store, "livo-toy", None)

    # The dead registration's marker still guards v1 against other runs for a while ...
    with pytest.raises(LivoError, match="another registration of livo-toy@v1 is in progress"):
        register_model(store, make_request(pipeline_run_id="run-2"))
    result = register_model(store, make_request())  # ... but the retried step of the same run reclaims it
    assert result.version == "v1"
    assert verify_version(store, "livo-toy", "v1") == []
    assert store.list("models/livo-toy/.registrations") == []


@pytest.mark.store
def test_registration_in_flight_blocks_a_second_one(store: ObjectStore, make_request: Factory) -> None:
    import time

    store.put_json("models/livo-toy/.registrations/v1.json", {"run_id": "run-other", "started_at": time.time()})
    with pytest.raises(LivoError, match="another registration of livo-toy@v1 is in progress .*run-other"):
        register_model(store, make_request())
    # a stale marker (its registration died long ago) is reclaimed
    store.put_json("models/livo-toy/.registrations/v1.json", {"run_id": "run-other", "started_at": 0})
    assert register_model(store, make_request()).version == "v1"


@pytest.mark.store
def test_verify_names_every_mismatch(store: ObjectStore, make_request: Factory, principles_file: Path) -> None:
    register_model(store, make_request())
    key = "models/livo-toy/v1/value_encoder/model.safetensors"
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01  # one flipped bit
    store.put_bytes(key, bytes(data))
    store.put_bytes("models/livo-toy/v1/extra.bin", b"planted")
    principles_file.write_text(principles_file.read_text().replace("text: gender equality", "text: gender parity"))
    store.put_json("datasets/toy/ds-1/manifest.json", {"pairs": 95})

    problems = [(p.subject, p.detail.split(" ")[0]) for p in verify_version(store, "livo-toy", "v1")]
    assert sorted(problems) == sorted([("value_encoder/model.safetensors", "sha256"), ("extra.bin", "stored"),
                                       ("principles", str(principles_file)),
                                       ("dataset", store.uri("datasets/toy/ds-1/manifest.json"))])


@pytest.mark.store
def test_missing_lineage_and_unknown_versions(store: ObjectStore, make_request: Factory,
                                              principles_file: Path) -> None:
    register_model(store, make_request())
    store.delete("models/livo-toy/v1/lineage.json")
    with pytest.raises(LivoError, match=r"livo-toy@v1 has no lineage record .*lineage\.json is missing"):
        load_lineage(store, "livo-toy", "v1")
    problems = verify_version(store, "livo-toy", "v1")
    assert [(p.subject, p.detail) for p in problems] == [
        ("lineage.json", "missing from the store"), ("lineage.json", "missing: the version has no lineage record")]
    with pytest.raises(LivoError, match="unknown version livo-toy@v7; registered versions: v1"):
        verify_version(store, "livo-toy", "v7")
    with pytest.raises(LivoError, match="unknown model 'other'.*registered models: livo-toy"):
        load_lineage(store, "other")
    request = make_request(pipeline_run_id="run-2")
    principles_file.unlink()
    with pytest.raises(ConfigError, match="no such principles file"):
        register_model(store, request)


@pytest.mark.store
def test_principles_changed_compares_with_latest(store: ObjectStore, make_request: Factory,
                                                 principles_file: Path) -> None:
    from livo.principles import load_principles

    original = load_principles(principles_file).hash
    assert principles_changed(store, "livo-toy", original) is True  # nothing registered yet
    register_model(store, make_request())
    assert principles_changed(store, "livo-toy", original) is False
    edited = principles_file.parent / "edited.yaml"
    edited.write_text(principles_file.read_text().replace("text: bloody considered inappropriate",
                                                          "text: gore considered inappropriate"))
    new_hash = load_principles(edited).hash
    assert principles_changed(store, "livo-toy", new_hash) is True
    register_model(store, make_request(pipeline_run_id="run-2", principles=str(edited), weights_seed=3))
    assert principles_changed(store, "livo-toy", new_hash) is False
    assert principles_changed(store, "livo-toy", original) is True


@pytest.mark.store
def test_diff_reports_principles_data_config_metrics(store: ObjectStore, make_request: Factory,
                                                     principles_file: Path, tmp_path: Path) -> None:
    register_model(store, make_request())
    edited = tmp_path / "edited.yaml"
    edited.write_text(principles_file.read_text().replace("text: bloody considered inappropriate",
                                                          "text: gore considered inappropriate"))
    store.put_json("datasets/toy/ds-2/manifest.json", {"pairs": 128})
    second = make_request(pipeline_run_id="run-2", principles=str(edited), weights_seed=5,
                          dataset_manifest_uri=store.uri("datasets/toy/ds-2/manifest.json"),
                          training_config={"loss": {"beta": 2000.0, "alpha": 500.0}, "optimizer": {"lr": 1e-6},
                                           "max_steps": 50})
    metrics = json.loads(second.metrics_path.read_text())
    metrics["principles"]["gender-equality"]["aligned"]["D1"] = 8.0
    second.metrics_path.write_text(json.dumps(metrics))
    register_model(store, second)

    a, b = load_lineage(store, "livo-toy", "v1"), load_lineage(store, "livo-toy", "v2")
    diff = diff_records(a, b, load_stored_principles(store, a), load_stored_principles(store, b))
    assert diff["principles"]["changed"] and diff["principles"]["added"] == [] == diff["principles"]["removed"]
    assert diff["principles"]["text_changed"] == {"bloody": ["bloody considered inappropriate",
                                                             "gore considered inappropriate"]}
    assert diff["data"]["changed"]
    assert diff["config"] == {"loss.beta": [1000.0, 2000.0]}
    assert diff["metrics"] == {"gender-equality.aligned.D1": {"a": 12.5, "b": 8.0, "change": -4.5}}
    assert diff["weights"]["changed"] and diff["pipeline"]["run_id"] == ["run-1", "run-2"]
    text = format_diff(diff)
    assert "~ bloody: text 'bloody considered inappropriate' -> 'gore considered inappropriate'" in text
    assert "loss.beta: 1000.0 -> 2000.0" in text and "gender-equality.aligned.D1: 12.5 -> 8 (-4.5)" in text


def test_lineage_record_rejects_missing_fields() -> None:
    with pytest.raises(LivoError, match="model: Field required"):
        LineageRecord.from_json_bytes(b'{"schema_version": 1}', "x/lineage.json")
    with pytest.raises(LivoError, match="not valid JSON"):
        LineageRecord.from_json_bytes(b"{", "x/lineage.json")


def test_parse_model_ref() -> None:
    assert parse_model_ref("livo-toy") == ("livo-toy", None)
    assert parse_model_ref("livo-toy@latest") == ("livo-toy", None)
    assert parse_model_ref("livo-toy@3") == ("livo-toy", "v3")
    assert parse_model_ref("livo-toy@v12") == ("livo-toy", "v12")
    for bad in ("livo-toy@", "@v1", "livo-toy@v0", "livo-toy@x1"):
        with pytest.raises(ConfigError):
            parse_model_ref(bad)


# ------------------------------------------------------------------------------ the gate is bound to the weights
@pytest.mark.store
def test_metrics_of_another_encoder_principle_set_or_base_model_are_refused(store: ObjectStore, make_request: Factory,
                                                                            tmp_path: Path) -> None:
    from registration_inputs import bound_metrics, write_value_encoder

    from livo.registry.lineage import value_encoder_digest

    evaluated_a = write_value_encoder(tmp_path / "encoder-a", seed=11)
    a_metrics = bound_metrics(evaluated_a, make_request().principles)
    request_b = make_request(metrics=a_metrics, weights_seed=12)  # encoder B, never evaluated, with A's metrics
    expected = (f"metrics.json evaluated value encoder {value_encoder_digest(evaluated_a)} but the candidate is "
                f"{value_encoder_digest(request_b.value_encoder_dir)}; evaluate this model (livo evaluate")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        register_model(store, request_b)
    with pytest.raises(ConfigError, match=re.escape(expected)):  # force does not make A's verdict B's
        register_model(store, make_request(metrics=a_metrics, weights_seed=12, force=True))

    other_base = make_request(base_model_fingerprint="sha256:" + "f" * 64)
    other_base.metrics_path.write_text(json.dumps(bound_metrics(other_base.value_encoder_dir, other_base.principles)))
    with pytest.raises(ConfigError, match="evaluated base model sha256:a+ but the training result names sha256:f+"):
        register_model(store, other_base)

    edited = tmp_path / "edited.yaml"
    edited.write_text(Path(other_base.principles).read_text().replace("text: gender equality", "text: parity"))
    with pytest.raises(ConfigError, match="evaluated principle set sha256:[0-9a-f]+ but the candidate is"):
        register_model(store, make_request(metrics=bound_metrics(request_b.value_encoder_dir, request_b.principles),
                                           principles=str(edited), weights_seed=12))

    tampered = make_request()
    metrics = json.loads(tampered.metrics_path.read_text())
    metrics["config"]["gates"]["min_bias_improvement"] = -100.0  # loosen the gate after the fact
    tampered.metrics_path.write_text(json.dumps(metrics))
    with pytest.raises(ConfigError, match="its config was edited after the evaluation"):
        register_model(store, tampered)
    assert store.list("models") == []  # nothing written by any refusal


@pytest.mark.store
def test_metrics_without_digests_are_refused_unless_forced(store: ObjectStore, make_request: Factory) -> None:
    from registration_inputs import evaluation_metrics

    with pytest.raises(ConfigError, match=r"does not record what it evaluated \(no evaluated.value_encoder_sha256.*"
                                          "pass --force"):
        register_model(store, make_request(metrics=evaluation_metrics()))
    assert store.list("models") == []
    register_model(store, make_request(metrics=evaluation_metrics(), force=True))
    record = load_lineage(store, "livo-toy", "v1")
    assert (record.evaluation.passed, record.evaluation.forced) == (True, True)
    assert record.evaluation.forced_reasons == ["metrics not bound to the weights (missing evaluated.value_encoder_"
                                                "sha256, evaluated.base_model_fingerprint, evaluated.principle_set_"
                                                "hash, evaluated.config_sha256)"]
    assert verify_version(store, "livo-toy", "v1") == []


@pytest.mark.store
def test_missing_dataset_manifest_in_the_store_is_bad_input(store: ObjectStore, make_request: Factory) -> None:
    with pytest.raises(ConfigError, match="datasets/toy/none/manifest.json: no such dataset manifest in the object"):
        register_model(store, make_request(dataset_manifest_uri=store.uri("datasets/toy/none/manifest.json")))
    assert store.list("models") == []


# --------------------------------------------------------------------------------- manifest.json is verified too
MANIFEST_KEY = "models/livo-toy/v1/manifest.json"


def _edit_manifest(store: ObjectStore, **fields: object) -> None:
    """Change fields of the stored manifest, keeping it valid JSON in the very format registration writes."""
    from livo.registry.lineage import manifest_bytes

    manifest = json.loads(store.get_bytes(MANIFEST_KEY))
    manifest.update(fields)
    store.put_bytes(MANIFEST_KEY, manifest_bytes(manifest))


@pytest.mark.store
@pytest.mark.parametrize("field, value", [
    ("principle_set_hash", "sha256:" + "1" * 64), ("weights_sha256", "sha256:" + "2" * 64),
    ("pipeline_run_id", "run-forged"), ("model", "other-model"), ("version", "v9"),
    ("committed_at", "2001-01-01T00:00:00Z"), ("schema_version", 3), ("note", "added field"),
])
def test_any_manifest_field_edit_fails_verify_naming_manifest_json(store: ObjectStore, make_request: Factory,
                                                                   field: str, value: object) -> None:
    register_model(store, make_request())
    _edit_manifest(store, **{field: value})
    problems = verify_version(store, "livo-toy", "v1")
    assert problems and {p.subject for p in problems} == {"manifest.json"}, problems


@pytest.mark.store
def test_flipped_byte_in_a_recorded_digest_is_blamed_on_the_manifest(store: ObjectStore, make_request: Factory,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    register_model(store, make_request())
    data = store.get_bytes(MANIFEST_KEY)
    digest = json.loads(data)["files"]["value_encoder/model.safetensors"].encode()
    at = data.index(digest) + len(digest) - 1
    flipped = data[:at] + (b"0" if data[at:at + 1] != b"0" else b"1") + data[at + 1:]
    store.put_bytes(MANIFEST_KEY, flipped)
    problems = verify_version(store, "livo-toy", "v1")
    assert {p.subject for p in problems} == {"manifest.json"}, problems
    assert any("content digest" in p.detail for p in problems)
    assert any("files['value_encoder/model.safetensors']" in p.detail for p in problems)

    from livo.cli import main

    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    assert main(["lineage", "verify", "livo-toy@v1"]) == 1
    err = capsys.readouterr().err
    assert "  manifest.json: edited after registration" in err and "value_encoder/model.safetensors:" not in err


@pytest.mark.store
def test_reformatted_or_legacy_manifest_fails_verify(store: ObjectStore, make_request: Factory) -> None:
    register_model(store, make_request())
    manifest = json.loads(store.get_bytes(MANIFEST_KEY))
    store.put_bytes(MANIFEST_KEY, json.dumps(manifest).encode())  # same fields, other bytes
    assert [p.subject for p in verify_version(store, "livo-toy", "v1")] == ["manifest.json"]
    legacy = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "hmac_sha256")}
    store.put_json(MANIFEST_KEY, {**legacy, "schema_version": 1})  # as registered before manifests were sealed
    problems = verify_version(store, "livo-toy", "v1")
    assert [p.subject for p in problems] == ["manifest.json"] and "carries no content digest" in problems[0].detail


@pytest.mark.store
def test_edited_file_still_blamed_on_that_file(store: ObjectStore, make_request: Factory) -> None:
    register_model(store, make_request())
    store.put_bytes("models/livo-toy/v1/report.html", b"<html>better numbers</html>")
    assert [p.subject for p in verify_version(store, "livo-toy", "v1")] == ["report.html"]


@pytest.mark.store
def test_principles_changed_refuses_a_tampered_manifest(store: ObjectStore, make_request: Factory,
                                                        principles_file: Path) -> None:
    from livo.principles import load_principles

    register_model(store, make_request())
    new_hash = "sha256:" + "9" * 64  # the principles changed: retraining is due
    assert principles_changed(store, "livo-toy", new_hash) is True
    _edit_manifest(store, principle_set_hash=new_hash)  # ... unless someone edits the manifest to skip it
    with pytest.raises(LivoError, match=r"manifest.json does not verify \(edited after registration.*livo lineage "
                                        "verify livo-toy@v1"):
        principles_changed(store, "livo-toy", new_hash)
    with pytest.raises(LivoError, match="does not verify"):
        principles_changed(store, "livo-toy", load_principles(principles_file).hash)
    with pytest.raises(LivoError, match="does not verify"):  # nor does a new registration trust it (idempotency)
        register_model(store, make_request(pipeline_run_id="run-2"))


@pytest.mark.store
def test_hmac_signed_manifest(store: ObjectStore, make_request: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    from livo.registry.lineage import manifest_bytes, manifest_digest

    monkeypatch.setenv("LIVO_LINEAGE_HMAC_KEY", "k3y-from-a-kubernetes-secret")
    register_model(store, make_request())
    assert verify_version(store, "livo-toy", "v1") == []
    assert "k3y-from-a-kubernetes-secret" not in _all_text(store, "models/livo-toy/v1")

    # a forger without the key recomputes the content digest: the signature gives it away
    manifest = json.loads(store.get_bytes(MANIFEST_KEY))
    manifest["principle_set_hash"] = "sha256:" + "9" * 64
    manifest["manifest_sha256"] = manifest_digest(manifest)
    store.put_bytes(MANIFEST_KEY, manifest_bytes(manifest))
    problems = verify_version(store, "livo-toy", "v1")
    assert ("manifest.json", "HMAC signature does not match: forged, or signed with another LIVO_LINEAGE_HMAC_KEY"
            ) in [(p.subject, p.detail) for p in problems]
    with pytest.raises(LivoError, match="HMAC signature does not match"):
        principles_changed(store, "livo-toy", "sha256:" + "9" * 64)

    del manifest["hmac_sha256"]  # stripping the signature does not help either
    store.put_bytes(MANIFEST_KEY, manifest_bytes(manifest))
    assert any("not signed, but LIVO_LINEAGE_HMAC_KEY is set" in p.detail
               for p in verify_version(store, "livo-toy", "v1"))


def _rewrite_gates(request: RegistrationRequest, gates: list[dict], **extra: object) -> None:
    """Replace the gates of the request's metrics.json (the evaluated config, and so the binding, is unchanged)."""
    metrics = json.loads(request.metrics_path.read_text())
    metrics.update(gates=gates, **extra)
    request.metrics_path.write_text(json.dumps(metrics))


WAIVED_FID = {"name": "quality: FID", "passed": True, "held": True, "waived": True, "waiver": "pixel statistics",
              "unavailable": False, "value": 3.5, "threshold": 10.0, "judge": "pixel-stats-v1",
              "detail": "FID(aligned, base) 3.50 (needs at most 10)"}


@pytest.mark.store
def test_ungated_evaluation_is_refused_unless_allowed_and_then_marked(store: ObjectStore,
                                                                     make_request: Factory) -> None:
    from livo.registry.registration import UngatedEvaluation

    no_gates = make_request()
    _rewrite_gates(no_gates, [])
    with pytest.raises(UngatedEvaluation, match=r"decided no evaluation gate \(none configured\).*nothing was "
                                                r"registered.*--allow-ungated") as caught:
        register_model(store, no_gates)
    assert isinstance(caught.value, ConfigError) and caught.value.exit_code == 2 and "\n" not in str(caught.value)
    all_waived = make_request(pipeline_run_id="run-2")
    _rewrite_gates(all_waived, [WAIVED_FID])
    with pytest.raises(UngatedEvaluation, match="none configured, or all waived"):
        register_model(store, all_waived)
    assert store.list("models") == []  # nothing registered, not even debris

    result = register_model(store, all_waived.model_copy(update={"allow_ungated": True}))
    assert result.ungated and result.version == "v1"
    record = load_lineage(store, "livo-toy")
    assert record.evaluation.ungated and record.evaluation.passed
    assert record.evaluation.waivers == [{"gate": "quality: FID", "reason": "pixel statistics"}]
    card = store.get_bytes("models/livo-toy/v1/model_card.md").decode()
    assert card.startswith("---\n")  # Hugging Face front matter, then the card
    assert card.split("\n---\n", 1)[1].splitlines()[2].startswith("> **UNGATED.**")
    assert "**is UNGATED: its evaluation decided no gate" in card
    assert "| quality: FID | waived (would pass) | 10 | 3.5 | pixel-stats-v1 |" in card
    assert "- `quality: FID`: pixel statistics" in card
    assert verify_version(store, "livo-toy", "v1") == []


@pytest.mark.store
def test_gated_registration_records_waivers_and_per_principle_fidelity(store: ObjectStore,
                                                                       make_request: Factory) -> None:
    request = make_request()
    metrics = json.loads(request.metrics_path.read_text())
    metrics["principles"]["gender-equality"]["subject_fidelity"] = {
        "judge": "toy-subject@1", "higher_is_better": True,
        "all": {"images": 80, "base": 96.2, "aligned": 81.2}, "token": {"images": 40, "base": 97.5, "aligned": 68.0},
        "no_token": {"images": 40, "base": 95.0, "aligned": 95.0}}
    request.metrics_path.write_text(json.dumps(metrics))
    _rewrite_gates(request, [*metrics["gates"], WAIVED_FID])
    register_model(store, request)
    record = load_lineage(store, "livo-toy")
    assert not record.evaluation.ungated
    assert record.evaluation.waivers == [{"gate": "quality: FID", "reason": "pixel statistics"}]
    card = store.get_bytes("models/livo-toy/v1/model_card.md").decode()
    assert "UNGATED" not in card and "Waived gates" in card
    assert "| gender-equality | toy-subject@1 | 40 | 97.5 | 68 | 0.6974 | - | - | 95 / 95 | 96.2 / 81.2 |" in card
    assert "| gender-equality.D1 | pass | 10 | 67.5 | toy-attribute |" in card


def test_lineage_records_without_the_gate_fields_still_read() -> None:
    """`evaluation.ungated` and `evaluation.waivers` were added later: older lineage.json files must still load."""
    from livo.registry.lineage import EvaluationSection

    older = {"passed": True, "forced": False, "forced_reasons": [], "metrics_file": "metrics.json",
             "report_uri": "s3://b/models/m/v1/report.html", "metrics": {"gates": []}}
    section = EvaluationSection.model_validate(older)
    assert section.ungated is False and section.waivers == []


def test_redaction_keeps_value_token_metrics_but_blanks_token_secrets() -> None:
    from livo.registry.lineage import redact

    metrics = {"images_with_value_token": 25, "subject_fidelity": {"token": {"images": 40, "base": 97.5},
                                                                   "no_token": {"images": 40, "base": 95.0}},
               "options": {"hf_token": "hf_abc", "token": "plain", "auth_token": 1234}}
    out = redact(metrics)
    assert out["images_with_value_token"] == 25 and out["subject_fidelity"] == metrics["subject_fidelity"]
    assert out["options"] == {"hf_token": "<redacted>", "token": "<redacted>", "auth_token": "<redacted>"}


def _computed_digests(store: ObjectStore, request: RegistrationRequest) -> dict[str, str]:
    """What registration computes for each artifact a pipeline run hands it (RegistrationRequest.artifact_digests)."""
    from livo.registry.lineage import value_encoder_digest

    return {"value_encoder": value_encoder_digest(request.value_encoder_dir),
            "metrics": sha256_file(request.metrics_path), "report": sha256_file(request.report_path),
            "dataset_manifest": store.sha256("datasets/toy/ds-1/manifest.json")}


@pytest.mark.store
@pytest.mark.parametrize("artifact", ["value_encoder", "metrics", "report", "dataset_manifest"])
def test_an_artifact_digest_that_differs_from_what_registration_computes_is_refused_before_any_write(
        store: ObjectStore, make_request: Factory, artifact: str) -> None:
    from livo.registry.registration import ArtifactDigestMismatch

    request = make_request()
    computed = _computed_digests(store, request)
    carried = "sha256:" + "f" * 64
    with pytest.raises(ArtifactDigestMismatch, match=rf"^the {artifact} artifact carries sha256 {carried} but "
                                                     rf"registration computed {computed[artifact]} from ") as caught:
        register_model(store, request.model_copy(update={"artifact_digests": {**computed, artifact: carried}}))
    assert isinstance(caught.value, ConfigError) and caught.value.exit_code == 2
    assert store.list("models") == []  # not even the in-flight marker


@pytest.mark.store
def test_the_digests_the_artifacts_carry_are_the_ones_lineage_records(store: ObjectStore,
                                                                        make_request: Factory) -> None:
    request = make_request()
    computed = _computed_digests(store, request)
    with pytest.raises(ConfigError, match="artifact_digests names unknown artifact.s. weights; use value_encoder, "):
        register_model(store, request.model_copy(update={"artifact_digests": {"weights": computed["value_encoder"]}}))
    result = register_model(store, request.model_copy(update={"artifact_digests": computed}))
    record = load_lineage(store, "livo-toy")
    assert record.model.weights_sha256 == result.weights_sha256 == computed["value_encoder"]
    assert record.dataset.manifest_sha256 == computed["dataset_manifest"]
    assert record.files["metrics.json"] == computed["metrics"]  # (the stored report gains the registration block)
