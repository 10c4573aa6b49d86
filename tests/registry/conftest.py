"""Inputs of a registration: a value encoder, evaluation outputs, a principles file and a dataset manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from registration_inputs import BASE_FINGERPRINT, bound_metrics, write_value_encoder

from livo.paths import config_dir
from livo.registry.registration import RegistrationRequest
from livo.store import ObjectStore


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """`livo.cli.main` binds the log handler to the sys.stderr of the moment (capsys's); rebind it afterwards so
    later log lines (e.g. the session server's stop) do not hit a closed stream."""
    yield
    from livo.log import configure_logging

    configure_logging()


@pytest.fixture
def principles_file(tmp_path: Path) -> Path:
    path = tmp_path / "principles.yaml"
    shutil.copyfile(config_dir() / "principles" / "default.yaml", path)
    return path


@pytest.fixture
def make_request(tmp_path: Path, store: ObjectStore, principles_file: Path) -> Callable[..., RegistrationRequest]:
    """A factory of complete registration requests; keyword arguments override fields."""
    store.put_json("datasets/toy/ds-1/manifest.json", {"principle_set_hash": "sha256:" + "0" * 64, "pairs": 96})
    counter = iter(range(1000))

    def make(*, passed: bool = True, weights_seed: int = 0, metrics: dict[str, Any] | None = None,
             **overrides: Any) -> RegistrationRequest:
        """`metrics`: metrics.json as given (default: bound to this candidate's encoder and principles)."""
        work = tmp_path / f"candidate-{next(counter)}"
        write_value_encoder(work / "value_encoder", seed=weights_seed)
        if metrics is None:
            metrics = bound_metrics(work / "value_encoder", overrides.get("principles", principles_file),
                                    base_model_fingerprint=overrides.get("base_model_fingerprint", BASE_FINGERPRINT),
                                    passed=passed)
        (work / "metrics.json").write_text(json.dumps(metrics))
        (work / "report.html").write_text("<html><body>LiVO evaluation</body></html>")
        fields: dict[str, Any] = {
            "model_name": "livo-toy",
            "value_encoder_dir": work / "value_encoder",
            "metrics_path": work / "metrics.json",
            "report_path": work / "report.html",
            "principles": str(principles_file),
            "dataset_manifest_uri": store.uri("datasets/toy/ds-1/manifest.json"),
            "training_config": {"loss": {"beta": 1000.0, "alpha": 500.0}, "optimizer": {"lr": 1e-6},
                                "max_steps": 50},
            "seed": 7,
            "base_model_id": "tiny",
            "base_model_fingerprint": BASE_FINGERPRINT,
            "pipeline_run_id": "run-1",
            "pipeline_run_name": "livo-full nightly",
            "pipeline_spec_hash": "sha256:" + "b" * 64,
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "image_digest": "registry.example/livo@sha256:" + "c" * 64,
        }
        fields.update(overrides)
        return RegistrationRequest(**fields)

    return make
