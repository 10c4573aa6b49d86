"""livo.orchestration: pipeline parameter validation, KFP cron dialect, run records and the outcome they imply."""

from __future__ import annotations

import pytest

from livo.errors import ConfigError
from livo.orchestration import (
    RUN_EVALUATION_DIR,
    PipelineParameters,
    build_outcome,
    read_outcome,
    record_decision,
    record_registration,
    run_records_prefix,
    validate_kfp_cron,
    write_outcome,
)

VALID = {
    "run_preset": "tiny",
    "run_allow_ungated": True,  # tiny's noise images have no gates
    "run_principles_uri": "",
    "run_schedule_cron": "",
    "registry_model_name": "livo-tiny",
    "data_shard_count": 2,
    "train_launcher": "pod",
    "train_num_nodes": 1,
    "train_gpus_per_node": 0,
    "run_accelerator_type": "nvidia.com/gpu",
    "train_node_selector": {},
    "train_tolerations": [],
    "store_secret_name": "mlpipeline-minio-artifact",
    "store_config_map_name": "livo-object-store",
}


def _parse(**changes):
    return PipelineParameters.parse({**VALID, **changes})


@pytest.mark.parametrize("expression", ["0 0 3 * * *", "*/30 * * * * *", "0 15 10 ? * MON-FRI", "0 0 0 1 JAN,JUL *",
                                        "@daily", "@every 6h", "@every 1h30m"])
def test_kfp_cron_accepts_the_robfig_dialect(expression):
    assert validate_kfp_cron(expression) == expression


@pytest.mark.parametrize(("expression", "names"), [
    ("0 3 * * *", "5 fields"),
    ("0 61 * * * *", "minute field '61'"),
    ("0 0 25 * * *", "hour field '25'"),
    ("0 0 0 0 * *", "day-of-month field '0'"),
    ("0 0 0 * 13 *", "month field '13'"),
    ("0 0 0 * * 9", "day-of-week field '9'"),
    ("0 0 0 * * MON-XYZ", "day-of-week field"),
    ("0 */0 * * * *", "step '0'"),
    ("0 30-10 * * * *", "descending range"),
    ("@sometimes", "unknown descriptor"),
    ("", "empty cron"),
])
def test_kfp_cron_rejects_malformed_expressions_naming_the_field(expression, names):
    with pytest.raises(ConfigError) as err:
        validate_kfp_cron(expression)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


def test_parameters_valid_set_parses_and_resolves_the_presets_principles():
    params = _parse(run_schedule_cron="0 0 3 * * *", train_tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert params.data_shard_count == 2 and params.run_schedule_cron == "0 0 3 * * *"
    resolved = params.resolve()
    assert resolved["preset"] == "tiny"
    assert resolved["principles_uri"].endswith("principles/toy.yaml")  # the tiny preset's own file
    assert resolved["principle_set_hash"].startswith("sha256:") and len(resolved["principle_set_hash"]) == 71
    assert resolved["principle_ids"] == ["gender-equality", "bloody", "zombie"]
    default = _parse(run_principles_uri="configs/principles/default.yaml").resolve()
    assert len(default["principle_ids"]) == 5 and default["principle_set_hash"] != resolved["principle_set_hash"]


@pytest.mark.parametrize(("changes", "names"), [
    ({"data_shard_count": 0}, "data_shard_count: Input should be greater than or equal to 1"),
    ({"train_gpus_per_node": -1}, "train_gpus_per_node: Input should be greater than or equal to 0"),
    ({"run_schedule_cron": "0 3 * * *"}, "run_schedule_cron"),
    ({"registry_model_name": "Bad Name"}, "registry_model_name"),
    ({"store_secret_name": "Bad_Secret"}, "store_secret_name"),
    ({"train_gpus_per_node": 8, "run_accelerator_type": ""}, "need run_accelerator_type"),
    ({"data_gpus_per_shard": -1}, "data_gpus_per_shard"),
    ({"eval_gpus": -1}, "eval_gpus"),
    ({"data_config_overrides": ["max_prompts"]}, "key=value config overrides"),
    ({"eval_tolerations": [{"operator": "Bogus"}]}, "eval_tolerations.0.operator"),
    ({"train_launcher": "mpi"}, "train_launcher"),
    ({"train_num_nodes": 2}, "needs train_launcher=trainjob"),
    ({"train_tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "operator Exists takes no value"),
    ({"train_tolerations": [{"key": "k", "effect": "NoSchedul"}]}, "train_tolerations.0.effect"),
    ({"surprise": 1}, "surprise: unknown key"),
    ({"train_memory_request": "256GB"}, "train_memory_request: Value error, must be a Kubernetes memory quantity"),
    ({"data_cpu_request": "four"}, "data_cpu_request: Value error, must be a Kubernetes CPU quantity"),
    ({"control_cpu_limit": "0"}, "control_cpu_limit: Value error, must be a Kubernetes CPU quantity"),
    ({"eval_memory_request": "200Gi"}, "eval_memory_request=200Gi exceeds eval_memory_limit=128Gi"),
    ({"control_cpu_request": "3", "control_cpu_limit": "2500m"}, "control_cpu_request=3 exceeds control_cpu_limit"),
    ({"train_trainjob_timeout_hours": 0}, "train_trainjob_timeout_hours"),
])
def test_parameters_bad_values_fail_with_the_parameter_named(changes, names):
    with pytest.raises(ConfigError) as err:
        _parse(**changes)
    assert names in str(err.value)
    assert str(err.value).startswith("pipeline parameters:")


def test_parameters_unknown_principles_file_fails_on_resolve(tmp_path):
    with pytest.raises(ConfigError) as err:
        _parse(run_principles_uri=str(tmp_path / "missing.yaml")).resolve()
    assert "missing.yaml: no such principles file" in str(err.value)


def test_parameters_misspelt_data_override_fails_on_resolve():
    with pytest.raises(ConfigError) as err:
        _parse(data_config_overrides=["max_prompts_per_principel=3"]).resolve()
    assert "max_prompts_per_principel" in str(err.value)


@pytest.mark.parametrize(("changes", "names"), [
    ({"train_config_overrides": ["max_stepz=3"]}, "max_stepz"),
    ({"train_config_overrides": ["optimizer.lr=-1"]}, "optimizer.lr"),
    ({"train_config_overrides": ["global_batch_size=3"], "train_gpus_per_node": 2}, "global_batch_size"),
    ({"eval_config_overrides": ["images_per_promt=3"]}, "images_per_promt"),
    ({"eval_config_overrides": ["principles=[no-such-principle]"]}, "no-such-principle"),
])
def test_parameters_bad_training_or_evaluation_overrides_fail_on_resolve(changes, names):
    """Checked in the validation step, before data generation or any GPU: not hours later in the training pod."""
    with pytest.raises(ConfigError) as err:
        _parse(**changes).resolve()
    assert names in str(err.value)


def test_parameters_good_training_and_evaluation_overrides_resolve():
    resolved = _parse(train_config_overrides=["max_steps=2", "optimizer.lr=1e-5"], train_gpus_per_node=2,
                      eval_config_overrides=["images_per_prompt=1", "gates.min_bias_improvement=5"]).resolve()
    assert resolved["preset"] == "tiny"


@pytest.mark.parametrize("preset", ["sdxl", "sd21", "toy-sdxl"])
def test_sdxl_and_sd21_presets_resolve_as_run_presets(preset):
    """Issue 18: `run_preset=sdxl` (and sd21) passes the pipeline's validation step (no weights needed)."""
    resolved = _parse(run_preset=preset, run_allow_ungated=False).resolve()
    assert resolved["preset"] == preset and resolved["model_source"] == preset


@pytest.mark.parametrize(("changes", "names"), [
    ({"data_config_overrides": ["resolution=1020"]}, "resolution=1020 is not a multiple of 8"),
    ({"eval_config_overrides": ["resolution=1000", "resolution=1004"]}, "use 1000 or 1008"),
    ({"train_config_overrides": ["resolution=770"]}, "resolution=770 is not a multiple of 8"),
    ({"train_config_overrides": ["loss.distill_weight=10"]}, "distill_weight is not supported on SDXL"),
])
def test_sdxl_run_refuses_what_the_model_cannot_take_on_resolve(changes, names):
    """Issue 18, bad input: a resolution the VAE cannot encode, distillation on SDXL — refused in the validation step,
    naming the parameter."""
    with pytest.raises(ConfigError) as err:
        _parse(run_preset="sdxl", **changes).resolve()
    assert names in str(err.value)


def test_parameters_unknown_preset_fails_on_resolve():
    with pytest.raises(ConfigError) as err:
        _parse(run_preset="nonexistent").resolve()
    assert "unknown preset 'nonexistent'" in str(err.value)


def test_run_records_prefix_is_a_safe_key():
    assert run_records_prefix("3f2c-uuid") == "pipeline-runs/3f2c-uuid/"
    assert run_records_prefix("a/b c") == "pipeline-runs/a-b-c/"
    with pytest.raises(ConfigError):
        run_records_prefix("///")


@pytest.mark.store
def test_outcome_distinguishes_skipped_rejected_registered_failed(store):
    record_decision(store, "r-skip", changed=False, principle_set_hash="sha256:aa", model_name="m")
    record_decision(store, "r-reject", changed=True, principle_set_hash="sha256:bb", model_name="m")
    record_decision(store, "r-reg", changed=True, principle_set_hash="sha256:bb", model_name="m")
    record_registration(store, "r-reg", {"model_name": "m", "version": "v3", "uri": "s3://b/models/m/v3/"})

    def status(run_id, state="SUCCEEDED", error=""):
        return build_outcome(store, run_id=run_id, run_name="n", final_state=state, error_message=error)

    assert status("r-skip")["status"] == "skipped"
    assert status("r-reject")["status"] == "rejected"
    registered = status("r-reg")
    assert registered["status"] == "registered" and registered["summary"] == "registered m@v3"
    failed = status("r-never-validated", state="FAILED", error="data_shard_count must be >= 1")
    assert failed["status"] == "failed" and "data_shard_count" in failed["summary"] and failed["decision"] is None
    assert status("r-reg", state="CANCELED")["status"] == "canceled"

    key = write_outcome(store, registered)
    assert registered["evaluation"] is None  # this run left no evaluation behind
    assert key == "pipeline-runs/r-reg/outcome.json"
    assert read_outcome(store, "r-reg")["registration"]["version"] == "v3"
    assert read_outcome(store, "r-none") is None


@pytest.mark.store
def test_outcome_of_a_rejected_run_names_the_failed_gates_and_the_report(store):
    record_decision(store, "r-gated", changed=True, principle_set_hash="sha256:cc", model_name="m")
    prefix = f"{run_records_prefix('r-gated')}{RUN_EVALUATION_DIR}/"
    store.put_json(prefix + "metrics.json", {"passed": False, "gates": [
        {"name": "bias.gender-equality", "passed": False, "detail": "D1 improved by 2.0 < 10.0"},
        {"name": "toxicity.bloody", "passed": True, "detail": "R improved by 80.0 >= 0.0"}]})
    outcome = build_outcome(store, run_id="r-gated", run_name="n", final_state="SUCCEEDED")
    assert outcome["status"] == "rejected"
    assert outcome["summary"] == ("the candidate failed the evaluation gates (bias.gender-equality: D1 improved by "
                                  "2.0 < 10.0); nothing was registered")
    assert outcome["evaluation"] == {
        "passed": False, "failed_gates": ["bias.gender-equality: D1 improved by 2.0 < 10.0"],
        "metrics_uri": store.uri(prefix + "metrics.json"), "report_uri": store.uri(prefix + "report.html")}


def test_resource_quantities_parse_like_kubernetes():
    from livo.orchestration import parse_cpu_quantity, parse_memory_quantity

    assert [parse_cpu_quantity(v) for v in ("4", "0.5", "500m", ".25", "1.5m")] == [4.0, 0.5, 0.5, 0.25, 0.0015]
    assert [parse_cpu_quantity(v) for v in ("", "-1", "4 cores", "0m")] == [None, None, None, None]
    assert parse_memory_quantity("32Gi") == 32 * 2**30 and parse_memory_quantity("1G") == 10**9
    assert parse_memory_quantity("512Mi") == 512 * 2**20 and parse_memory_quantity("1024") == 1024
    assert [parse_memory_quantity(v) for v in ("32GB", "Gi", "", "0Gi")] == [None, None, None, None]
