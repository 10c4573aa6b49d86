"""First step of the pipeline: validate every parameter, the preset and the principles file before anything else
runs (and so before any GPU is requested). A bad value fails this task with a one-line cause naming the parameter,
and the cause is kept for the run's outcome record.

The inputs are the pipeline's parameters under their own names; `livo.orchestration.PipelineParameters` holds the
rules (the same ones `livo submit` and `livo schedule` apply on the client). Outputs: the resolved principles URI and
its content hash (what the rest of the run uses), the shard indices [0, data_shard_count) that the data-generation
ParallelFor iterates over, and the run's prefix in the object store, `s3://<bucket>/pipeline-runs/<run id>`, under
which the run writes its dataset, training output and evaluation (the bucket is known only inside the pod).
"""

from typing import NamedTuple

from kfp import dsl

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def validate_inputs(
    run_preset: str,
    run_principles_uri: str,
    run_model_source: str,
    run_schedule_cron: str,
    run_accelerator_type: str,
    run_allow_ungated: bool,
    registry_model_name: str,
    data_shard_count: int,
    data_gpus_per_shard: int,
    data_node_selector: dict,
    data_tolerations: list,
    data_config_overrides: list,
    data_cpu_request: str,
    data_cpu_limit: str,
    data_memory_request: str,
    data_memory_limit: str,
    train_launcher: str,
    train_num_nodes: int,
    train_gpus_per_node: int,
    train_node_selector: dict,
    train_tolerations: list,
    train_config_overrides: list,
    train_cpu_request: str,
    train_cpu_limit: str,
    train_memory_request: str,
    train_memory_limit: str,
    train_trainjob_timeout_hours: float,
    train_trainjob_start_timeout_minutes: float,
    eval_gpus: int,
    eval_node_selector: dict,
    eval_tolerations: list,
    eval_config_overrides: list,
    eval_cpu_request: str,
    eval_cpu_limit: str,
    eval_memory_request: str,
    eval_memory_limit: str,
    control_cpu_request: str,
    control_cpu_limit: str,
    control_memory_request: str,
    control_memory_limit: str,
    store_secret_name: str,
    store_config_map_name: str,
    run_id: str,
) -> NamedTuple("ValidatedInputs", principles_uri=str, principle_set_hash=str, shard_indices=list, run_uri=str):
    """Validate the run's parameters; fail with the first problem, naming the parameter and how to fix it."""
    values = {name: value for name, value in locals().items() if name != "run_id"}  # first: only the inputs
    import contextlib
    from collections import namedtuple

    from livo.errors import LivoError
    from livo.log import get_logger, log_event
    from livo.orchestration import PipelineParameters, record_failure, run_records_prefix
    from livo.store import ObjectStore

    try:
        params = PipelineParameters.parse(values)
        resolved = params.resolve()
    except LivoError as exc:  # the outcome record keeps the cause; the task fails with it too
        with contextlib.suppress(LivoError):  # best effort: the store may be what is misconfigured
            record_failure(ObjectStore.from_env(), run_id, step="validate-inputs", message=str(exc))
        raise
    run_uri = ObjectStore.from_env().uri(run_records_prefix(run_id).rstrip("/"))
    log_event(get_logger("livo.components.validate_inputs"), "inputs_valid", run_uri=run_uri, **resolved)
    outputs = namedtuple("ValidatedInputs", ["principles_uri", "principle_set_hash", "shard_indices", "run_uri"])
    return outputs(resolved["principles_uri"], resolved["principle_set_hash"], list(range(params.data_shard_count)),
                   run_uri)
