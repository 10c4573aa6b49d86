"""components/register.py end to end against the real store: what a finished training run and an evaluation left
becomes a registered version with its lineage; the run's registration record makes the outcome `registered`; the
next principles check with the same hash says unchanged (the scheduled no-op); a retried task registers nothing new;
the run's artifacts (Dataset, Model, Metrics, HTML) must carry the digests of what is registered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.principles_changed import principles_changed
from components.register import register
from livo.orchestration import build_outcome
from livo.paths import config_dir
from livo.principles import load_principles

pytestmark = pytest.mark.store

IMAGE = "registry.example.org/team/livo:1.0@sha256:" + "a" * 64


@pytest.fixture
def finished_run(store, monkeypatch, tmp_path: Path) -> dict[str, str]:
    """The objects a pipeline run has written by the time registration starts, under pipeline-runs/run-7/."""
    from safetensors.numpy import save_file

    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LIVO_GIT_COMMIT", "0123abcd")
    monkeypatch.setenv("LIVO_IMAGE_VARIANT", "cuda")  # as inside the image (images/Dockerfile.*)
    run = "pipeline-runs/run-7"
    principles = config_dir() / "principles" / "default.yaml"
    store.put_file(f"{run}/principles.yaml", principles)
    store.put_json(f"{run}/dataset/manifest.json", {"principle_set_hash": load_principles(principles).hash})
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    save_file({"text_model.final_layer_norm.weight": np.arange(8, dtype=np.float32)},
              str(encoder / "model.safetensors"))
    (encoder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "hidden_size": 8}))
    for path in encoder.iterdir():
        store.put_file(f"{run}/train/value_encoder/{path.name}", path)
    from livo.store import sha256_file

    store.put_json(f"{run}/train/result.json", {
        "value_encoder": {"uri": store.uri(f"{run}/train/value_encoder"),
                          "files": {p.name: sha256_file(p) for p in sorted(encoder.iterdir())}},
        "dataset": {"uri": store.uri(f"{run}/dataset")},
        "config": {"seed": 1234, "model": "tiny", "loss": {"kind": "livo"}},
        "base_model": {"source": "tiny", "fingerprint": "sha256:" + "b" * 64},
    })
    store.put_json(f"{run}/evaluation/metrics.json", evaluation_of(encoder, load_principles(principles).hash,
                                                                   "sha256:" + "b" * 64))
    store.put_bytes(f"{run}/evaluation/report.html", b"<html>report</html>")
    return {"run": run, "principles_uri": store.uri(f"{run}/principles.yaml"),
            "hash": load_principles(principles).hash, "encoder": str(encoder), "artifacts": str(tmp_path / "kfp")}


PASSING_GATE = {"name": "gender-equality: D1 ceiling", "passed": True, "held": True, "waived": False, "waiver": None,
                "unavailable": False, "value": 12.0, "threshold": 20.0, "judge": "toy-attribute@1", "detail": "ok"}


def evaluation_of(encoder: Path, principle_set_hash: str, base_model_fingerprint: str,
                  gates: list | None = None) -> dict:
    """A metrics.json bound to what it evaluated, as `livo evaluate` writes it (the parts registration reads)."""
    from livo.registry.lineage import canonical_sha256, value_encoder_digest

    config = {"images_per_prompt": 2, "seed": 0}
    return {"principles": {}, "passed": True, "config": config,
            "gates": [PASSING_GATE] if gates is None else gates,
            "evaluated": {"value_encoder_sha256": value_encoder_digest(encoder),
                          "base_model_fingerprint": base_model_fingerprint, "principle_set_hash": principle_set_hash,
                          "config_sha256": canonical_sha256(config)}}


def run_artifacts(store, finished_run) -> dict:
    """The run's KFP artifacts as the merge, training and evaluation tasks write them (livo.artifacts)."""
    from kfp import dsl

    from livo.artifacts import dataset_pointer, file_artifact, model_pointer, write_pointer

    root, run = Path(finished_run["artifacts"]), finished_run["run"]
    root.mkdir(exist_ok=True)
    dataset = dsl.Dataset(uri=str(root / "dataset"))
    dataset.metadata.update(write_pointer(dataset.path, dataset_pointer(store.uri(f"{run}/dataset"), store=store)))
    model = dsl.Model(uri=str(root / "model"))
    model.metadata.update(write_pointer(model.path, model_pointer(store.uri(f"{run}/train"))[0]))
    files = {}
    for name, cls in (("metrics.json", dsl.Metrics), ("report.html", dsl.HTML)):
        local = root / f"evaluated-{name}"
        local.write_bytes(store.get_bytes(f"{run}/evaluation/{name}"))
        files[name] = cls(uri=str(root / name.split(".")[0]))
        files[name].metadata.update(file_artifact(local, files[name].path, store.uri(f"{run}/evaluation/{name}")))
    return {"dataset": dataset, "model": model, "metrics": files["metrics.json"], "report": files["report.html"]}


def _register(store, finished_run, **extra):
    artifacts = extra.pop("artifacts", {})
    if set(artifacts) != {"dataset", "model", "metrics", "report"}:
        artifacts = {**run_artifacts(store, finished_run), **artifacts}
    return register.python_func(
        **artifacts,
        model_name="livo-tiny", training_output_uri=store.uri(f"{finished_run['run']}/train"),
        evaluation_uri=store.uri(f"{finished_run['run']}/evaluation"), principles_uri=finished_run["principles_uri"],
        run_id="run-7", run_name="livo-full-7", pipeline_spec_sha256="sha256:" + "c" * 64, image=IMAGE, **extra,
    )


def test_register_records_lineage_outcome_and_makes_the_next_check_a_no_op(store, finished_run):
    uri = _register(store, finished_run)
    assert uri == store.uri("models/livo-tiny/v1/")
    lineage = store.get_json("models/livo-tiny/v1/lineage.json")
    expected = {"run_id": "run-7", "run_name": "livo-full-7", "spec_hash": "sha256:" + "c" * 64,
                "git_commit": "0123abcd", "image_digest": IMAGE, "image_ran_in": "container"}
    assert {k: lineage["pipeline"][k] for k in expected} == expected
    assert lineage["principles"]["hash"] == finished_run["hash"]
    assert lineage["training"]["seed"] == 1234
    assert lineage["base_model"]["fingerprint"] == "sha256:" + "b" * 64
    assert lineage["dataset"]["manifest_uri"] == store.uri(f"{finished_run['run']}/dataset/manifest.json")
    # the artifacts the task consumed carry what lineage records; the run's registration record names them
    consumed = store.get_json("pipeline-runs/run-7/registration.json")["artifacts"]
    assert consumed["model"] == {"uri": str(Path(finished_run["artifacts"]) / "model"),
                                 "sha256": lineage["model"]["weights_sha256"]}
    assert consumed["dataset"]["sha256"] == lineage["dataset"]["manifest_sha256"]
    assert consumed["metrics"]["sha256"] == lineage["files"]["metrics.json"]
    assert set(consumed) == {"dataset", "model", "metrics", "report"}

    outcome = build_outcome(store, run_id="run-7", run_name="n", final_state="SUCCEEDED")
    assert outcome["status"] == "registered" and outcome["summary"] == "registered livo-tiny@v1"

    assert principles_changed.python_func(model_name="livo-tiny", principle_set_hash=finished_run["hash"],
                                          force_retrain=False, run_id="run-8") is False
    assert build_outcome(store, run_id="run-8", run_name="n", final_state="SUCCEEDED")["status"] == "skipped"
    assert principles_changed.python_func(model_name="livo-tiny", principle_set_hash="sha256:" + "d" * 64,
                                          force_retrain=False, run_id="run-9") is True


def test_retried_registration_creates_no_second_version(store, finished_run):
    first = _register(store, finished_run)
    assert _register(store, finished_run) == first
    assert store.get_json("pipeline-runs/run-7/registration.json")["created"] is False
    assert not store.exists("models/livo-tiny/v2/manifest.json")


def test_training_result_without_its_fields_is_a_clear_error(store, finished_run):
    from livo.errors import LivoError

    artifacts = run_artifacts(store, finished_run)  # written while the training result was whole
    store.put_json(f"{finished_run['run']}/train/result.json", {"metrics": {}})
    with pytest.raises(LivoError, match="lacks 'value_encoder'"):
        _register(store, finished_run, artifacts=artifacts)


def test_a_task_outside_any_image_records_that_instead_of_the_declared_digest(store, finished_run, monkeypatch):
    """kfp.local runs tasks as local processes: lineage must not claim the image the package declares."""
    monkeypatch.delenv("LIVO_IMAGE_VARIANT")
    _register(store, finished_run)
    pipeline = store.get_json("models/livo-tiny/v1/lineage.json")["pipeline"]
    assert (pipeline["image_digest"], pipeline["image_ran_in"]) == ("", "local process (no container image)")


def test_metrics_of_another_model_are_refused_and_nothing_is_written(store, finished_run, tmp_path):
    """The pipeline path: an evaluation of other weights (or of another base model) does not register this one."""
    from livo.errors import ConfigError

    other = tmp_path / "other-encoder"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "model.safetensors").write_bytes(b"other weights")
    store.put_json(f"{finished_run['run']}/evaluation/metrics.json",
                   evaluation_of(other, finished_run["hash"], "sha256:" + "b" * 64))
    with pytest.raises(ConfigError, match=r"evaluated value encoder sha256:[0-9a-f]{64} but the candidate is "
                                          r"sha256:[0-9a-f]{64}; evaluate this model"):
        _register(store, finished_run)
    store.put_json(f"{finished_run['run']}/evaluation/metrics.json",
                   evaluation_of(Path(finished_run["encoder"]), finished_run["hash"], "sha256:" + "e" * 64))
    with pytest.raises(ConfigError, match="evaluated base model sha256:e+ but the training result names sha256:b+"):
        _register(store, finished_run)
    assert store.list("models") == []


def test_an_ungated_evaluation_is_rejected_unless_the_run_allows_it(store, finished_run):
    """tiny's evaluation sets no gate: without run_allow_ungated nothing is registered and the run is `rejected` with
    the cause (the task itself succeeds, so no retry repeats it); with it the version is registered, marked ungated."""
    store.put_json(f"{finished_run['run']}/evaluation/metrics.json",
                   evaluation_of(Path(finished_run["encoder"]), finished_run["hash"], "sha256:" + "b" * 64, gates=[]))
    assert _register(store, finished_run) == ""
    assert store.list("models") == []
    outcome = build_outcome(store, run_id="run-7", run_name="n", final_state="SUCCEEDED")
    assert outcome["status"] == "rejected"
    assert outcome["summary"].startswith("registration refused: livo-tiny: ") and "--allow-ungated" in outcome["summary"]

    store.delete(f"{finished_run['run']}/failure.json")
    assert _register(store, finished_run, allow_ungated=True) == store.uri("models/livo-tiny/v1/")
    lineage = store.get_json("models/livo-tiny/v1/lineage.json")
    assert lineage["evaluation"]["ungated"] is True and lineage["evaluation"]["waivers"] == []
    assert "UNGATED" in store.get_bytes("models/livo-tiny/v1/model_card.md").decode()
    outcome = build_outcome(store, run_id="run-7", run_name="n", final_state="SUCCEEDED")
    assert outcome["status"] == "registered" and "UNGATED" in outcome["summary"]


def test_artifacts_that_disagree_with_the_store_fail_the_run_naming_both_hashes(store, finished_run, tmp_path):
    """A Model artifact of other weights than the training result names (or an evaluation file the artifact does not
    match): nothing is registered, the task fails with an exit-2 class error, and the run's outcome says why."""
    from kfp import dsl

    from livo.artifacts import write_pointer
    from livo.errors import ConfigError
    from livo.registry.registration import ArtifactDigestMismatch

    artifacts = run_artifacts(store, finished_run)
    other = dsl.Model(uri=str(tmp_path / "other-model"))
    carried = "sha256:" + "f" * 64
    other.metadata.update(write_pointer(other.path, {**artifacts["model"].metadata, "sha256": carried}))
    with pytest.raises(ArtifactDigestMismatch, match=rf"the value_encoder artifact carries sha256 {carried} but "
                                                     r"registration computed sha256:[0-9a-f]{64} from ") as caught:
        _register(store, finished_run, artifacts={"model": other})
    assert isinstance(caught.value, ConfigError)
    assert store.list("models") == []
    outcome = build_outcome(store, run_id="run-7", run_name="n", final_state="FAILED")
    assert outcome["status"] == "failed" and "register: the value_encoder artifact carries" in outcome["summary"]

    report = dsl.HTML(uri=str(tmp_path / "other-report"))
    Path(report.path).write_text("<html>another evaluation</html>")
    with pytest.raises(ConfigError, match="the HTML report artifact's metadata says sha256 .* but its file"):
        _register(store, finished_run, artifacts={"report": dsl.HTML(uri=report.uri,
                                                                     metadata=artifacts["report"].metadata)})
    assert store.list("models") == []
