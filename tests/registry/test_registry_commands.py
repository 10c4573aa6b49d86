"""`livo register` and `livo lineage show|verify|diff` end to end through the CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from livo.cli import main
from livo.registry.registration import RegistrationRequest
from livo.store import ObjectStore

Factory = Callable[..., RegistrationRequest]


def _register_args(request: RegistrationRequest, config: Path) -> list[str]:
    config.write_text(yaml.safe_dump({**request.training_config, "seed": request.seed}))
    return ["register", "--model-name", request.model_name, "--value-encoder", str(request.value_encoder_dir),
            "--metrics", str(request.metrics_path), "--report", str(request.report_path),
            "--principles", request.principles, "--dataset-manifest", request.dataset_manifest_uri,
            "--training-config", str(config), "--base-model", request.base_model_id,
            "--base-model-fingerprint", request.base_model_fingerprint, "--run-id", request.pipeline_run_id]


@pytest.mark.store
def test_register_show_verify_diff(store: ObjectStore, make_request: Factory, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)

    first = make_request()
    assert main(_register_args(first, tmp_path / "train.yaml")) == 0
    assert capsys.readouterr().out.strip() == f"registered livo-toy@v1 at {store.uri('models/livo-toy/v1/')}"
    assert main(_register_args(first, tmp_path / "train.yaml")) == 0
    assert "already registered: pipeline run run-1 is livo-toy@v1" in capsys.readouterr().out

    failed = make_request(passed=False, pipeline_run_id="run-2", weights_seed=4)
    assert main(_register_args(failed, tmp_path / "train2.yaml")) == 1
    assert "failed its evaluation gates" in capsys.readouterr().err
    assert main([*_register_args(failed, tmp_path / "train2.yaml"), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"

    assert main(["lineage", "show", "livo-toy@v1"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in table.splitlines()}
    assert rows["model"] == "livo-toy@v1" and rows["training seed"] == "7" and rows["parent version"] == "-"
    assert rows["training.loss.beta"] == "1000.0" and rows["metric gender-equality.aligned.D1"] == "12.5"
    assert main(["lineage", "show", "livo-toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["version"] == "v2"

    assert main(["lineage", "verify", "livo-toy@1"]) == 0
    assert "livo-toy@v1: OK" in capsys.readouterr().out
    key = "models/livo-toy/v1/value_encoder/model.safetensors"
    data = bytearray(store.get_bytes(key))
    data[-1] ^= 0xFF
    store.put_bytes(key, bytes(data))
    assert main(["lineage", "verify", "livo-toy@v1"]) == 1
    err = capsys.readouterr().err
    assert "livo-toy@v1: 1 mismatch(es)" in err and "value_encoder/model.safetensors: sha256 is" in err

    assert main(["lineage", "diff", "livo-toy@v1", "v2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("livo-toy@v1 -> livo-toy@v2") and "principles: unchanged" in out
    assert "evaluation passed: True -> False" in out and "weights: changed" in out

    assert main(["lineage", "show", "nope"]) == 2  # bad input: exit 2 (ConfigError), not 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["lineage", "verify", "livo-toy@v9"]) == 2
    assert "unknown version livo-toy@v9; registered versions: v1, v2" in capsys.readouterr().err


def test_register_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LIVO_S3_ENDPOINT", "LIVO_S3_ACCESS_KEY", "LIVO_S3_SECRET_KEY", "LIVO_S3_BUCKET"):
        monkeypatch.delenv(key, raising=False)
    assert main(["register", "--model-name", "Bad Name", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "model_name: Value error, use 1-63 lowercase" in err and "value_encoder_dir: Field required" in err
    assert main(["lineage", "show", "livo-toy"]) == 2
    assert "object store not configured: set LIVO_S3_ENDPOINT" in capsys.readouterr().err


@pytest.mark.store
def test_register_cli_refuses_metrics_of_another_encoder(store: ObjectStore, make_request: Factory, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The auditor's reproduction: encoder B (never evaluated) with A's passing metrics.json."""
    from registration_inputs import bound_metrics, write_value_encoder

    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)
    encoder_a = write_value_encoder(tmp_path / "encoder-a", seed=21)
    request_b = make_request(metrics=bound_metrics(encoder_a, make_request().principles), weights_seed=22)
    assert main(_register_args(request_b, tmp_path / "train.yaml")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "metrics.json evaluated value encoder sha256:" in err and "but the candidate is sha256:" in err
    assert "evaluate this model (livo evaluate" in err
    assert store.list("models") == []
    assert main(["lineage", "verify", "livo-toy"]) == 2
    assert "unknown model 'livo-toy'" in capsys.readouterr().err


@pytest.mark.store
def test_register_cli_bad_input_exits_2(store: ObjectStore, make_request: Factory, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)
    request = make_request()
    missing = make_request(dataset_manifest_uri=store.uri("datasets/none/manifest.json"))
    assert main(_register_args(missing, tmp_path / "train.yaml")) == 2
    assert "datasets/none/manifest.json: no such dataset manifest" in capsys.readouterr().err
    local_missing = make_request(dataset_manifest_uri=str(tmp_path / "none.json"))
    assert main(_register_args(local_missing, tmp_path / "train.yaml")) == 2
    assert "none.json: no such dataset manifest" in capsys.readouterr().err

    bad_yaml = tmp_path / "request.yaml"
    bad_yaml.write_text(f"model_name: livo-toy\nmetrics_path: {request.metrics_path}\n  seed: [1, 2\n")
    assert main(["register", "--request", str(bad_yaml)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{bad_yaml}: not valid YAML at line 3, column" in err

    assert main(["register", *(_register_args(request, tmp_path / "train.yaml")[1:])]) == 0
    capsys.readouterr()
    assert main(["lineage", "diff", "livo-toy@v1", "v5"]) == 2
    assert "unknown version livo-toy@v5; registered versions: v1" in capsys.readouterr().err
    assert main(["lineage", "diff", "livo-toy@v1", "nope@v1"]) == 2
    assert main(["lineage", "show", "livo-toy@v2"]) == 2
    capsys.readouterr()
    assert main(["lineage", "verify", "livo-toy"]) == 0
    assert "livo-toy@v1: OK (every hash matches, manifest.json included" in capsys.readouterr().out


@pytest.mark.store
def test_register_cli_refuses_an_ungated_evaluation_unless_allowed(
        store: ObjectStore, make_request: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIVO_MODEL_REGISTRY_URL", raising=False)
    request = make_request()
    metrics = json.loads(request.metrics_path.read_text())
    metrics["gates"] = []
    request.metrics_path.write_text(json.dumps(metrics))

    assert main(_register_args(request, tmp_path / "train.yaml")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("livo: error: livo-toy: ") and "--allow-ungated" in err[-1]
    assert store.list("models") == []
    assert main([*_register_args(request, tmp_path / "train.yaml"), "--allow-ungated"]) == 0
    assert "UNGATED" in capsys.readouterr().out
    assert main(["lineage", "show", "livo-toy@v1"]) == 0
    assert "UNGATED (no gate decided anything" in capsys.readouterr().out
