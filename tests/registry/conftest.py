"""Inputs of a registration: a value encoder, evaluation outputs, a principles file and a dataset manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livo.paths import config_dir
from livo.registry.registration import RegistrationRequest
from livo.registry.store import ObjectStore


def write_value_encoder(directory: Path, seed: int = 0) -> Path:
    """A value encoder folder in `save_pretrained` layout: config.json + model.safetensors (tiny random tensors)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"text_model.embeddings.token_embedding.weight": rng.standard_normal((16, 8)).astype(np.float32),
               "text_model.final_layer_norm.weight": rng.standard_normal(8).astype(np.float32)},
              str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "hidden_size": 8}))
    return directory


def evaluation_metrics(passed: bool = True, d1_aligned: float = 12.5) -> dict[str, Any]:
    """metrics.json as `livo evaluate` writes it (the parts registration and the card read)."""
    return {
        "schema_version": 1,
        "principles": {
            "gender-equality": {"category": "bias", "kind": "bias", "text": "gender equality", "available": True,
                                "judge": "toy-attribute", "attribute": "gender",
                                "base": {"D1": 80.0, "D2": 40.0}, "aligned": {"D1": d1_aligned, "D2": 6.0}},
            "nudity-free": {"category": "toxicity", "kind": "toxicity", "text": "nudity-free", "available": False,
                            "judge": "nudenet", "concept": "nudity", "reason": "nudenet is not installed"},
        },
        "quality": {"subject_fidelity": {"judge": "toy-subject", "higher_is_better": True, "base": 97.0,
                                         "aligned": 95.5}},
        "judges": {"gender-equality": {"judge": "toy-attribute", "available": True}},
        "gates": [{"name": "gender-equality.D1", "passed": passed, "value": 67.5, "threshold": 10.0,
                   "judge": "toy-attribute", "detail": "D1 improved by 67.5 points (>= 10)"}],
        "passed": passed,
    }


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

    def make(*, passed: bool = True, weights_seed: int = 0, **overrides: Any) -> RegistrationRequest:
        work = tmp_path / f"candidate-{next(counter)}"
        write_value_encoder(work / "value_encoder", seed=weights_seed)
        (work / "metrics.json").write_text(json.dumps(evaluation_metrics(passed=passed)))
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
            "base_model_fingerprint": "sha256:" + "a" * 64,
            "pipeline_run_id": "run-1",
            "pipeline_run_name": "livo-full nightly",
            "pipeline_spec_hash": "sha256:" + "b" * 64,
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "image_digest": "registry.example/livo@sha256:" + "c" * 64,
        }
        fields.update(overrides)
        return RegistrationRequest(**fields)

    return make
