"""Train the value encoder (DeepSpeed) as a KFP component; thin wrapper over `livo.training.jobs` (docs/training.md).

launcher=pod (default): this pod holds `gpus_per_node` GPUs and torchrun starts one rank per GPU here; give the
task the GPUs and a memory-backed /dev/shm with `configure_training_task`. launcher=trainjob: this pod (no GPU)
creates a Kubeflow Trainer v2 TrainJob on the `livo-torch-distributed` runtime with our image, waits for it while
streaming the first node's log, then copies the model. Either way rank 0 writes the value encoder, metrics and
`result.json` (last) under `output_uri`; this task writes its `model` output (a pointer: the value encoder's URI and
its weights digest, the `weights_sha256` lineage records; the weights stay in the object store, livo.artifacts) and
logs the metrics. The input is the merge task's `Dataset` artifact. A retried task resumes from the latest complete checkpoint (`resume=True`). For launcher=trainjob pass
the pipeline's image (`image=PIPELINE_IMAGE`) and its store Secret/ConfigMap names: the TrainJob's nodes run the same
image with the same object store as the pipeline, and the launcher gives up after the timeouts, reporting the job's
conditions.

Usage in a pipeline:

    task = train_value_encoder(dataset=merged.outputs["dataset"], output_uri=f"{run_uri}/train", gpus_per_node=8,
                               run_id=...)
    configure_training_task(task, gpus=8)
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def train_value_encoder(
    dataset: Input[Dataset],
    output_uri: str,
    metrics: Output[Metrics],
    model: Output[Model],
    preset: str = "sd15",
    model_source: str = "",
    principle_set_hash: str = "",
    config_overrides: list = [],  # noqa: B006 - kfp parameters take literal defaults
    launcher: str = "pod",
    gpus_per_node: int = 1,
    num_nodes: int = 1,
    accelerator_type: str = "nvidia.com/gpu",
    run_id: str = "",
    trainjob_runtime: str = "livo-torch-distributed",
    trainjob_namespace: str = "",
    image: str = "",
    resume: bool = True,
    store_secret_name: str = "mlpipeline-minio-artifact",
    store_config_map_name: str = "livo-object-store",
    trainjob_timeout_hours: float = 48.0,
    trainjob_start_timeout_minutes: float = 20.0,
) -> NamedTuple("TrainOutputs", [("output_uri", str), ("value_encoder_uri", str)]):
    """Train on the `dataset` artifact's data, write the run under `output_uri` (s3://bucket/prefix), return where
    the model is."""
    import os
    import sys
    from collections import namedtuple

    from livo.artifacts import dataset_uri_of, model_pointer, write_pointer
    from livo.training.jobs import TrainingPreempted, launch_arguments, run_training

    dataset_uri = dataset_uri_of(dataset.path, dataset.metadata)
    args = launch_arguments(dataset_uri=dataset_uri, output_uri=output_uri, preset=preset, model_source=model_source,
                            principle_set_hash=principle_set_hash, overrides=[str(o) for o in config_overrides],
                            resume=resume)
    try:
        run_training(launcher=launcher, launch_args=args, procs_per_node=max(1, int(gpus_per_node)),
                     num_nodes=int(num_nodes), image=image or os.environ.get("LIVO_IMAGE", ""), run_id=run_id,
                     accelerator_type=accelerator_type, runtime=trainjob_runtime, namespace=trainjob_namespace,
                     store_secret_name=store_secret_name, store_config_map_name=store_config_map_name,
                     timeout_seconds=float(trainjob_timeout_hours) * 3600.0,
                     start_timeout_seconds=float(trainjob_start_timeout_minutes) * 60.0)
    except TrainingPreempted as exc:  # the pod exits 143 (preempted, checkpoint saved): the retry resumes
        print(f"livo: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    pointer, result = model_pointer(output_uri)
    model.metadata.update(write_pointer(model.path, {**pointer, "dataset_artifact_uri": dataset.uri}))
    for name, value in result["metrics"].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(name, float(value))
    outputs = namedtuple("TrainOutputs", ["output_uri", "value_encoder_uri"])
    return outputs(output_uri, pointer["uri"])


def configure_training_task(task: dsl.PipelineTask, gpus, accelerator_type="nvidia.com/gpu",
                            shm_size: str = "16Gi") -> dsl.PipelineTask:
    """The pod launcher's resources: `gpus` accelerators and a memory-backed /dev/shm (NCCL and DataLoader workers
    need more than the container default of 64 MiB)."""
    from kfp import kubernetes

    task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=shm_size)
    return task
