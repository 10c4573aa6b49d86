"""`livo register` and `livo lineage show|verify|diff` end to end through the CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from livo.cli import main
from livo.registry.registration import RegistrationRequest
from livo.registry.store import ObjectStore

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

    assert main(["lineage", "show", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["lineage", "verify", "livo-toy@v9"]) == 1
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
