"""Kubeflow Model Registry entries through the real `model-registry` client against an in-process fake server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_model_registry import FakeModelRegistry

from livo.errors import ConfigError, LivoError
from livo.registry.model_registry import KubeflowModelRegistry
from livo.registry.registration import RegistrationRequest, list_versions, load_lineage, register_model
from livo.store import ObjectStore

Factory = Callable[..., RegistrationRequest]


def _props(version: dict) -> dict:
    return {k: v.get("string_value", v.get("bool_value")) for k, v in version["customProperties"].items()}


@pytest.mark.store
def test_registers_model_version_and_artifact_with_lineage_properties(store: ObjectStore, make_request: Factory,
                                                                      tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("sa-token-123\n")
    with FakeModelRegistry(required_token="sa-token-123") as fake:
        registry = KubeflowModelRegistry.from_env({"LIVO_MODEL_REGISTRY_URL": fake.url,
                                                   "LIVO_MODEL_REGISTRY_TOKEN_PATH": str(token_file)})
        result = register_model(store, make_request(), model_registry=registry)
        assert result.model_registry is not None and result.model_registry["created"] is True
        [model] = fake.registered_models.values()
        [version] = fake.model_versions.values()
        [artifact] = fake.artifacts.values()
        assert (model["name"], version["name"], version["registeredModelId"]) == ("livo-toy", "v1", model["id"])
        record = load_lineage(store, "livo-toy", "v1")
        props = _props(version)
        assert props["kfp_run_id"] == "run-1" and props["kfp_run_name"] == "livo-full nightly"
        assert props["principle_set_hash"] == record.principles.hash
        assert props["dataset_manifest_sha256"] == record.dataset.manifest_sha256
        assert props["weights_sha256"] == record.model.weights_sha256
        assert props["pipeline_spec_hash"] == "sha256:" + "b" * 64 and props["evaluation_passed"] is True
        assert (artifact["uri"], artifact["modelFormatName"], artifact["artifactType"]) == (
            store.uri("models/livo-toy/v1/"), "safetensors", "model-artifact")
        assert result.model_registry["model_version_id"] == version["id"]
        assert result.model_registry["model_artifact_id"] == artifact["id"]

        # A retried registration step re-syncs without creating anything new.
        posts = sum(1 for method, _, _ in fake.requests if method == "POST")
        again = register_model(store, make_request(), model_registry=registry)
        assert again.model_registry["created"] is False and not again.created
        assert sum(1 for method, _, _ in fake.requests if method == "POST") == posts
        assert len(fake.model_versions) == 1


@pytest.mark.store
def test_existing_version_of_another_run_is_a_conflict(store: ObjectStore, make_request: Factory) -> None:
    with FakeModelRegistry() as fake:
        registry = KubeflowModelRegistry(fake.url)
        register_model(store, make_request(), model_registry=registry)
        # Another object store (another bucket) whose v1 came from another run, same registry.
        other = store.for_bucket(store.bucket + "-b")
        other.ensure_bucket()
        other.put_json("datasets/toy/ds-1/manifest.json", {"pairs": 96})
        request = make_request(pipeline_run_id="run-9",
                               dataset_manifest_uri=other.uri("datasets/toy/ds-1/manifest.json"))
        with pytest.raises(LivoError, match=r"is registered in the object store .* KFP run 'run-1', not 'run-9'"):
            register_model(other, request, model_registry=registry)
        assert list_versions(other, "livo-toy") == ["v1"]  # the store registration stands; re-run retries the sync


@pytest.mark.store
def test_unreachable_or_unauthorised_registry_gives_clear_error(store: ObjectStore, make_request: Factory) -> None:
    with FakeModelRegistry(required_token="right") as fake:
        registry = KubeflowModelRegistry(fake.url, user_token="wrong")
        with pytest.raises(LivoError, match=r"failed to connect: HTTP 401.*check LIVO_MODEL_REGISTRY_TOKEN_PATH"):
            register_model(store, make_request(), model_registry=registry)
    closed = KubeflowModelRegistry(fake.url)  # the server is gone now
    with pytest.raises(LivoError, match="Kubeflow Model Registry at http://127.0.0.1:.* failed to connect"):
        register_model(store, make_request(), model_registry=closed)


def test_configuration_from_env() -> None:
    assert KubeflowModelRegistry.from_env({}) is None
    registry = KubeflowModelRegistry.from_env({"LIVO_MODEL_REGISTRY_URL": "https://mr.example.org",
                                               "LIVO_MODEL_REGISTRY_AUTHOR": "mlops"})
    assert (registry.server_address, registry.port, registry.secure, registry.author) == (
        "https://mr.example.org", 443, True, "mlops")
    with pytest.raises(ConfigError, match="expected http"):
        KubeflowModelRegistry("mr.example.org:8080")
    with pytest.raises(ConfigError, match="cannot read the token"):
        KubeflowModelRegistry.from_env({"LIVO_MODEL_REGISTRY_URL": "http://x:8080",
                                        "LIVO_MODEL_REGISTRY_TOKEN_PATH": "/nonexistent/token"})


@pytest.mark.store
def test_without_configuration_registration_skips_the_registry(store: ObjectStore, make_request: Factory,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)
    import logging

    logging.getLogger("livo").propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="livo"):
            result = register_model(store, make_request())
    finally:
        logging.getLogger("livo").propagate = False
    assert result.model_registry is None and result.version == "v1"
    assert any("Kubeflow Model Registry not configured" in r.getMessage() for r in caplog.records)


@pytest.mark.store
def test_version_carries_lineage_digest_runs_and_report_and_resync_fills_older_entries(
        store: ObjectStore, make_request: Factory) -> None:
    with FakeModelRegistry() as fake:
        registry = KubeflowModelRegistry(fake.url)
        request = make_request(mlflow_run_id="mlf-0042", tracking_uri="http://mlflow.kubeflow:5000")
        register_model(store, request, model_registry=registry)
        [version] = fake.model_versions.values()
        props = _props(version)
        lineage_sha256 = store.sha256("models/livo-toy/v1/lineage.json")
        assert lineage_sha256.startswith("sha256:") and props["lineage_sha256"] == lineage_sha256
        assert (props["livo_model"], props["livo_version"], props["kfp_run_id"]) == ("livo-toy", "v1", "run-1")
        assert props["mlflow_run_id"] == "mlf-0042" and props["mlflow_tracking_uri"] == "http://mlflow.kubeflow:5000"
        assert props["evaluation_report_uri"] == store.uri("models/livo-toy/v1/report.html")

        # An entry written before these properties existed: a re-run fills them in (PATCH), creating nothing.
        for key in ("lineage_sha256", "mlflow_run_id", "livo_model"):
            del version["customProperties"][key]
        posts = sum(1 for method, _, _ in fake.requests if method == "POST")
        register_model(store, request, model_registry=registry)
        assert sum(1 for method, _, _ in fake.requests if method == "POST") == posts
        assert any(method == "PATCH" for method, _, _ in fake.requests)
        assert _props(fake.model_versions[version["id"]]) == props

        # Another lineage digest for the same run: the registry and the store disagree, which is refused.
        version["customProperties"]["lineage_sha256"] = {"string_value": "sha256:" + "9" * 64,
                                                         "metadataType": "MetadataStringValue"}
        with pytest.raises(LivoError, match=r"records lineage digest sha256:9+, but the stored lineage.json is"):
            register_model(store, request, model_registry=registry)


@pytest.mark.store
def test_lineage_show_by_registry_version_id(store: ObjectStore, make_request: Factory,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from livo.cli import main

    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)
    assert main(["lineage", "show", "mr:1"]) == 2
    assert "needs LIVO_MODEL_REGISTRY_URL" in capsys.readouterr().err
    with FakeModelRegistry() as fake:
        monkeypatch.setenv("LIVO_MODEL_REGISTRY_URL", fake.url)
        register_model(store, make_request(mlflow_run_id="mlf-0042"), model_registry=KubeflowModelRegistry(fake.url))
        [version] = fake.model_versions.values()
        ref = f"mr:{version['id']}"

        assert main(["lineage", "show", ref]) == 0
        rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in capsys.readouterr().out.splitlines()}
        assert rows["model"] == "livo-toy@v1" and rows["pipeline run"].startswith("run-1")
        assert rows["MLflow run"] == "mlf-0042"
        assert rows["model registry"] == f"{fake.url} model version {version['id']} (livo-toy v1)"
        assert rows["registry artifact"] == store.uri("models/livo-toy/v1/")
        assert rows["registry lineage sha256"] == (f"{store.sha256('models/livo-toy/v1/lineage.json')} "
                                                   "(matches lineage.json)")
        assert main(["lineage", "show", ref, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["pipeline"]["mlflow_run_id"] == "mlf-0042"
        assert main(["lineage", "verify", ref]) == 0
        assert "livo-toy@v1: OK" in capsys.readouterr().out

        # Entries written before the livo_model / livo_version properties resolve through their names.
        for key in ("livo_model", "livo_version"):
            del version["customProperties"][key]
        assert main(["lineage", "show", ref]) == 0
        assert "livo-toy@v1" in capsys.readouterr().out

        assert main(["lineage", "show", "mr:999"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the Kubeflow Model Registry at {fake.url} has no model version with id 999" \
            in err
        assert main(["lineage", "show", "mr:abc"]) == 2
        assert "expected the numeric id" in capsys.readouterr().err

        version["customProperties"]["lineage_sha256"] = {"string_value": "sha256:" + "9" * 64,
                                                         "metadataType": "MetadataStringValue"}
        assert main(["lineage", "show", ref]) == 1
        captured = capsys.readouterr()
        assert "DIFFERS from lineage.json as stored" in captured.out and "livo lineage verify" in captured.err
    assert main(["lineage", "show", ref]) == 1  # the registry is gone
    assert "failed to connect" in capsys.readouterr().err
