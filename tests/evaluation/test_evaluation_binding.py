"""metrics.json is bound to what it evaluated, and an interrupted evaluation leaves no complete-looking output.

Real `livo evaluate` runs on the tiny preset (CPU, a few seconds): the digests it records are the ones registration
recomputes; a run killed with SIGKILL after generation leaves no metrics.json (the previous model's is gone too); the
registration of other weights with these metrics is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from livo.errors import ConfigError

KILL_AFTER_GENERATION = """
import os, signal, sys
import livo.evaluation.protocol as protocol

def die(*_args, **_kwargs):  # generation is done, judging/scoring is under way: the pod is OOM-killed here
    os.kill(os.getpid(), signal.SIGKILL)

protocol._score_quality = die
from livo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _encoder(directory: Path, seed: int = 0) -> Path:
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    return ValueEncoder.from_text_encoder(build_tiny_pipeline(seed).text_encoder).save_pretrained(directory)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from livo.evaluation.protocol import evaluate_candidate

    root = tmp_path_factory.mktemp("binding")
    encoder = _encoder(root / "ve")
    result = evaluate_candidate(str(encoder), preset="tiny", device="cpu", output_dir=str(root / "out"))
    return {"root": root, "encoder": encoder, "out": root / "out", "metrics": result.paths["metrics"]}


def test_metrics_json_records_the_digests_of_what_it_evaluated(evaluated: dict[str, Path]) -> None:
    from livo.presets import load_pipeline, load_preset_config, pipeline_fingerprint
    from livo.principles import load_principles
    from livo.registry.lineage import canonical_sha256, value_encoder_digest

    metrics = json.loads(evaluated["metrics"].read_text())
    assert metrics["evaluated"] == {
        "value_encoder_sha256": value_encoder_digest(evaluated["encoder"]),
        # the fingerprint training records for its base model (livo.training.trainer.load_models)
        "base_model_fingerprint": pipeline_fingerprint(load_pipeline("tiny", seed=0)),
        "principle_set_hash": load_principles(load_preset_config("tiny").principles_path()).hash,
        "config_sha256": canonical_sha256(metrics["config"]),
    }
    assert not list(evaluated["out"].glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_killed_evaluation_leaves_no_metrics_json(evaluated: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)  # the previous model's complete evaluation is in the output directory
    other = _encoder(tmp_path / "other-ve", seed=1)
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_GENERATION, "evaluate", "--value-encoder", str(other),
                           "--preset", "tiny", "--device", "cpu", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "metrics.json").exists()  # neither the killed run's nor the previous model's
    assert not (out / "report.html").exists() and not (out / "summary.md").exists()


def test_a_failure_after_generation_leaves_no_metrics_json(evaluated: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import livo.evaluation.protocol as protocol

    out = tmp_path / "out"
    shutil.copytree(evaluated["out"], out)

    def judge_crashes(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(protocol, "_score_principle", judge_crashes)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        protocol.evaluate_candidate(str(evaluated["encoder"]), preset="tiny", device="cpu", output_dir=str(out))
    assert not (out / "metrics.json").exists()


@pytest.mark.store
def test_registration_accepts_its_evaluation_and_refuses_it_for_other_weights(evaluated: dict[str, Path], store,
                                                                               tmp_path: Path) -> None:
    from livo.presets import load_preset_config
    from livo.registry.registration import RegistrationRequest, list_versions, register_model

    metrics = json.loads(evaluated["metrics"].read_text())
    store.put_json("datasets/tiny/manifest.json", {"pairs": 4})
    common = {"model_name": "livo-tiny", "metrics_path": evaluated["metrics"],
              "report_path": evaluated["out"] / "report.html",
              "principles": load_preset_config("tiny").principles_path(),
              "dataset_manifest_uri": store.uri("datasets/tiny/manifest.json"), "seed": 0, "base_model_id": "tiny",
              "base_model_fingerprint": metrics["evaluated"]["base_model_fingerprint"],
              "allow_ungated": True}  # the tiny preset's noise images have no gates
    other = _encoder(tmp_path / "other-ve", seed=1)
    with pytest.raises(ConfigError, match=r"evaluated value encoder sha256:\w+ but the candidate is sha256:\w+"):
        register_model(store, RegistrationRequest(value_encoder_dir=other, pipeline_run_id="run-b", **common))
    assert store.list("models") == []
    result = register_model(store, RegistrationRequest(value_encoder_dir=evaluated["encoder"],
                                                       pipeline_run_id="run-a", **common))
    assert result.weights_sha256 == metrics["evaluated"]["value_encoder_sha256"]
    assert list_versions(store, "livo-tiny") == ["v1"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
