"""What registration stores for an audit: the model card (Hugging Face front matter, intervals, gate configuration,
training curve, tracking, provenance) and the report with the registered version's block (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import yaml

from livo.registry.lineage import verify_version
from livo.registry.registration import RegistrationRequest, load_lineage, register_model
from livo.store import ObjectStore

Factory = Callable[..., RegistrationRequest]

DATASET_MANIFEST = {"format": "livo-preference", "name": "toy", "dataset_id": "ds-7f3a", "num_rows": 96,
                    "principle_set_hash": "sha256:" + "0" * 64,
                    "counts": {"by_principle": {"gender-equality": 60, "nudity": 36}, "by_scene": {}}}


def _audit_request(store: ObjectStore, make_request: Factory, **overrides) -> RegistrationRequest:
    store.put_json("datasets/toy/ds-7f3a/manifest.json", DATASET_MANIFEST)
    request = make_request(dataset_manifest_uri=store.uri("datasets/toy/ds-7f3a/manifest.json"),
                           mlflow_run_id="mlf-0042", tracking_uri="http://mlflow.kubeflow:5000", **overrides)
    metrics = json.loads(request.metrics_path.read_text())
    entry = metrics["principles"]["gender-equality"]
    entry.update(improvement={"D1": 67.5, "D2": 34.0},
                 ci={"base": {"D1": [70.0, 90.0], "D2": [35.0, 45.0]}, "aligned": {"D1": [5.0, 20.0], "D2": [2.0, 10.0]},
                     "improvement": {"D1": [55.0, 80.0], "D2": [28.0, 40.0]}},
                 ci_method={"method": "percentile bootstrap", "unit": "prompt", "resamples": 1000,
                            "confidence": 0.95, "seed": 0, "paired": True, "prompts": 4})
    metrics["context"] = {"value_encoder": "s3://livo/runs/run-1/value_encoder"}
    metrics["config"]["gates"] = {"bias_metric": "D1", "min_bias_improvement": 10.0, "max_bias": None}
    from livo.registry.lineage import canonical_sha256

    metrics["evaluated"]["config_sha256"] = canonical_sha256(metrics["config"])
    metrics["run"] = {"run_id": "run-1"}
    metrics["training_log"] = [{"step": s, "loss": 1.5 - s / 100, "hinge_w": 0.5, "hinge_l": 1.0 - s / 100,
                                "lr": 1e-6, "grad_norm": 0.3, "samples_per_s": 6.5} for s in range(10, 310, 10)]
    metrics["tracking"] = {"backend": "mlflow", "uri": "http://mlflow.kubeflow:5000", "experiment_id": None,
                           "run_id": None, "status": "unreachable", "error": "connection refused"}
    request.metrics_path.write_text(json.dumps(metrics, indent=1))
    return request


@pytest.mark.store
def test_card_front_matter_parses_and_card_shows_intervals_gates_training_provenance(
        store: ObjectStore, make_request: Factory) -> None:
    request = _audit_request(store, make_request)
    register_model(store, request)
    card = store.get_bytes("models/livo-toy/v1/model_card.md").decode()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert {"base_model", "license", "tags", "datasets", "metrics", "model-index", "pipeline_tag"} <= set(meta)
    assert meta["base_model"] == "tiny" and meta["license"] == "other" and meta["datasets"] == ["ds-7f3a"]
    assert {"livo", "value-alignment", "text-to-image"} <= set(meta["tags"]) and meta["metrics"] == ["D1", "D2"]
    [index] = meta["model-index"]
    assert index["name"] == "livo-toy@v1"
    [result] = index["results"]  # nudity-free was not measured: no result, no number invented
    assert result["task"]["type"] == "text-to-image" and result["dataset"]["config"] == "gender-equality"
    by_name = {m["name"]: m for m in result["metrics"]}
    assert by_name["D1 aligned (x100, lower is better)"] == {
        "type": "D1", "name": "D1 aligned (x100, lower is better)", "value": 12.5, "verified": False,
        "args": {"ci95": [5.0, 20.0]}}
    assert by_name["D1 improvement (x100, higher is better)"]["value"] == 67.5
    assert by_name["D2 base model (x100, lower is better)"]["args"] == {"ci95": [35.0, 45.0]}

    body = card.split("\n---\n", 1)[1]
    assert body.startswith("# livo-toy@v1\n")
    assert ("| gender-equality | D1 | 80 | [70, 90] | 12.5 | [5, 20] | -67.5 | [-80, -55] | lower | toy-attribute |"
            in body)
    assert "95 % percentile bootstrap interval, 1000 resamples" in body
    assert "| min_bias_improvement | 10.000 |" in body and "max_bias" not in body
    assert "Training curve (30 logged steps" in body and "| 300 | -1.5 | 0.5 | -2 | 1e-06 | 0.3 | 6.5 |" in body
    assert body.count("| 0.3 | 6.5 |") == 12  # at most 12 evenly spaced rows of the 30 records, the last included
    assert "Experiment tracking: UNREACHABLE: mlflow at http://mlflow.kubeflow:5000 could not be reached" in body
    assert "Dataset id `ds-7f3a` (name `toy`), 96 preference pairs." in body and "| nudity | 36 |" in body
    for row in ("| KFP run id | run-1 |", "| MLflow run id | mlf-0042 |",
                "| evaluated value encoder | s3://livo/runs/run-1/value_encoder |"):
        assert row in body, row


@pytest.mark.store
def test_stored_report_shows_the_registered_version_and_metrics_stay_byte_identical(
        store: ObjectStore, make_request: Factory) -> None:
    from livo.evaluation.report import REGISTRATION_MARKER

    request = _audit_request(store, make_request, git_commit="feedc0de" * 5)
    page = f"<!DOCTYPE html><html><body><h1>LiVO evaluation</h1><p>verdict</p>{REGISTRATION_MARKER}<p>rest</p>"
    request.report_path.write_text(page)  # as render_html leaves it: the marker where the block goes
    register_model(store, request)
    stored = store.get_bytes("models/livo-toy/v1/report.html").decode()
    assert REGISTRATION_MARKER not in stored and stored.index("<p>verdict</p>") < stored.index("id='registration'")
    block = stored[stored.index("<section id='registration'>"):]
    block = block[:block.index("</section>")]
    for cell in ("<th>model</th><td><code>livo-toy@v1</code>", f"<th>code commit</th><td><code>{'feedc0de' * 5}",
                 "<th>image</th><td><code>registry.example/livo@sha256:" + "c" * 64,
                 "<th>KFP run id</th><td><code>run-1</code>", "<th>MLflow run id</th><td><code>mlf-0042</code>",
                 "<th>dataset id</th><td><code>ds-7f3a</code>", "<th>dataset size (pairs)</th><td><code>96</code>",
                 "<th>dataset pairs: gender-equality</th><td><code>60</code>"):
        assert cell in block, cell
    # the evaluation's metrics.json is hash-bound: stored byte for byte; the version verifies
    assert store.get_bytes("models/livo-toy/v1/metrics.json") == request.metrics_path.read_bytes()
    record = load_lineage(store, "livo-toy", "v1")
    assert record.files["report.html"] == store.sha256("models/livo-toy/v1/report.html")
    assert verify_version(store, "livo-toy", "v1") == []


@pytest.mark.store
def test_a_manifest_without_counts_still_registers(store: ObjectStore, make_request: Factory) -> None:
    register_model(store, make_request())  # the fixture's manifest has no dataset_id / counts
    stored = store.get_bytes("models/livo-toy/v1/report.html").decode()
    assert "<th>dataset id</th><td><code>-</code>" in stored
    card = store.get_bytes("models/livo-toy/v1/model_card.md").decode()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["datasets"] == [store.uri("datasets/toy/ds-1/manifest.json")] and "Dataset id" not in card
