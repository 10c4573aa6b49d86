"""components/validate_inputs.py: the pipeline's first step, called as a function (`.python_func`)."""

from __future__ import annotations

import re

import pytest

from components.validate_inputs import validate_inputs
from livo.errors import ConfigError

GOOD = dict(
    run_preset="tiny", run_principles_uri="", run_schedule_cron="", run_accelerator_type="nvidia.com/gpu",
    run_allow_ungated=True,  # tiny's noise images have no gates
    registry_model_name="livo-tiny", data_shard_count=3, data_gpus_per_shard=0, data_node_selector={},
    data_tolerations=[], data_config_overrides=[], train_launcher="pod", train_num_nodes=1, train_gpus_per_node=0,
    train_node_selector={}, train_tolerations=[], train_config_overrides=[], eval_gpus=0, eval_node_selector={},
    eval_tolerations=[], eval_config_overrides=[], store_secret_name="mlpipeline-minio-artifact",
    store_config_map_name="livo-object-store", run_model_source="",
    train_trainjob_timeout_hours=48.0, train_trainjob_start_timeout_minutes=20.0,
    **{f"{stage}_{what}_{kind}": value for stage, (cpu, memory) in {
        "data": ("4", "32Gi"), "train": ("32", "256Gi"), "eval": ("8", "64Gi"), "control": ("500m", "2Gi")}.items()
       for what, value in (("cpu", cpu), ("memory", memory)) for kind in ("request", "limit")},
)


def test_inputs_are_exactly_the_checked_parameters():
    from livo.orchestration import PipelineParameters

    inputs = set(validate_inputs.component_spec.inputs) - {"run_id"}
    assert inputs == set(PipelineParameters.model_fields) == set(GOOD)


@pytest.mark.store
def test_valid_inputs_resolve_principles_and_plan_the_shards(store, monkeypatch):
    from livo.principles import load_principles

    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    out = validate_inputs.python_func(**GOOD, run_id="r-ok")
    assert out.run_uri == f"s3://{store.bucket}/pipeline-runs/r-ok"
    assert out.principles_uri.endswith("principles/toy.yaml")  # the tiny preset's principles
    assert out.principle_set_hash == load_principles(out.principles_uri).hash
    assert out.shard_indices == [0, 1, 2]


@pytest.mark.store
@pytest.mark.parametrize(("change", "cause"), [
    ({"run_model_source": "s3://{bucket}/models/never-mirrored"},
     "run_model_source: s3://{bucket}/models/never-mirrored has no livo-mirror.json: mirror it with `livo models "
     "mirror SOURCE s3://{bucket}/models/never-mirrored`"),
    ({"data_shard_count": 0}, "data_shard_count"),
    ({"train_gpus_per_node": -2}, "train_gpus_per_node"),
    ({"run_schedule_cron": "61 * * * * *"}, "second field '61'"),
    ({"run_principles_uri": "/nonexistent/principles.yaml"}, "no such principles file"),
    # an ungated evaluation could not register its candidate: refused before any GPU work, not at register
    ({"run_allow_ungated": False}, "preset tiny: its evaluation sets no gate that decides anything"),
    ({"eval_config_overrides": ["gates.waive={\"nudity: judged\": x}"]}, "gates.waive names no gate"),
])
def test_bad_input_fails_and_leaves_its_cause_for_the_outcome(store, monkeypatch, change, cause):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    change = {k: v.format(bucket=store.bucket) if isinstance(v, str) else v for k, v in change.items()}
    cause = cause.format(bucket=store.bucket)
    with pytest.raises(ConfigError, match=re.escape(cause)):
        validate_inputs.python_func(**{**GOOD, **change}, run_id="r-bad")
    failure = store.get_json("pipeline-runs/r-bad/failure.json")
    assert failure["step"] == "validate-inputs" and cause in failure["message"]


def test_bad_input_without_a_store_still_fails_with_the_input_error(monkeypatch):
    for name in ("LIVO_S3_ENDPOINT", "LIVO_S3_ACCESS_KEY", "LIVO_S3_SECRET_KEY", "LIVO_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="data_shard_count"):
        validate_inputs.python_func(**{**GOOD, "data_shard_count": 0}, run_id="r-nostore")
