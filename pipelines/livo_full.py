"""The livo Kubeflow pipeline: principles -> preference data -> value encoder -> evaluation -> registered model.

    validate_inputs                     every parameter, the preset and the principles file; before any GPU
      -> principles_changed             False: the run is a cheap no-op, reported `skipped` (scheduled retraining)
        -> generate_data x N (ParallelFor) -> merge_dataset    preference dataset + manifest in the object store
                                        -> Dataset
        -> train_value_encoder          GPUs, node selector and tolerations from parameters; pod or TrainJob
                                        Dataset -> Model
        -> evaluate                     Model -> Metrics + HTML; single `passed: bool` output
        -> dsl.If(passed) -> register   Dataset + Model + Metrics + HTML -> models/<name>/<version>/ + model card +
                                        lineage.json (an evaluation that decided no gate only with run_allow_ungated)
    ExitHandler: record_outcome         registered | skipped | rejected | failed | canceled, whatever happened

Training runs in one of two branches chosen by `train_launcher`: `pod` gives the training task the GPUs, the node
selector and the tolerations; `trainjob` runs the task as a GPU-less launcher that creates a Kubeflow Trainer
TrainJob (whose nodes request the GPUs), so no GPU sits idle under a pod that only waits. `dsl.OneOf` joins them
(their `Model` artifact and their output URI; kfp.local needs `kfp_local_compat` for the artifact).
Everything a run writes lies under its prefix `s3://<bucket>/pipeline-runs/<run id>/`: dataset/, train/,
evaluation/ and the run records (decision, registration, outcome).

The stages are chained through typed KFP artifacts, so KFP's lineage graph shows data -> model -> evaluation ->
registration: the Dataset and Model artifacts are small pointers (object-store URI + the sha256 lineage.json records),
Metrics and HTML are the evaluation's files themselves (livo.artifacts; docs/operations.md, "Artifacts").

Entry points (the same as `livo compile|run|submit|schedule`):

    python pipelines/livo_full.py compile [--check]
    python pipelines/livo_full.py run --local [ARGS of `livo run`]
    python pipelines/livo_full.py submit --host URL [-p NAME=VALUE ...]
    python pipelines/livo_full.py schedule [ARGS of `livo schedule`]

Object-store credentials reach the pods only through kfp-kubernetes mappings: the Secret `store_secret_name`
(keys accesskey, secretkey) and the ConfigMap `store_config_map_name` (keys endpoint, bucket, the optional
mlflow_tracking_uri every task logs to, and the optional model_registry_url that the register task reads); none is a parameter and none appears in the compiled YAML.
kfp.local ignores those mappings, so local runs put `LIVO_S3_*` in the environment (`livo run` does).

Every task runs in one image, `PIPELINE_IMAGE` (`livo compile|submit|schedule|run --image REF` sets it for one
compile), requests CPU and memory from its stage's `*_cpu_*` / `*_memory_*` parameters, and is retried where a retry
is safe (`RETRY_POLICY`). Caching is off for every task: each reads or writes the object store's state (principles
by URI, the registry, the run's prefix), so equal inputs do not imply an equal output (docs/operations.md, Tasks).
"""


import sys
from pathlib import Path

from kfp import dsl, kubernetes

if __package__ in (None, ""):  # run as a script: make `components` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components._image import LIVO_IMAGE  # noqa: E402 - the image every component is declared with
from components.evaluate import evaluate  # noqa: E402
from components.generate_data import generate_data_shard, merge_data_shards  # noqa: E402
from components.principles_changed import principles_changed  # noqa: E402
from components.record_outcome import record_outcome  # noqa: E402
from components.register import register  # noqa: E402
from components.train_value_encoder import configure_training_task, train_value_encoder  # noqa: E402
from components.validate_inputs import validate_inputs  # noqa: E402
from livo.orchestration import (  # noqa: E402
    RESOURCE_DEFAULTS,
    RUN_DATASET_DIR,
    RUN_EVALUATION_DIR,
    RUN_TRAINING_DIR,
)
from pipelines.kfp_local_compat import allow_artifact_oneof  # noqa: E402

PIPELINE_NAME = "livo-full"
allow_artifact_oneof()  # `livo run`: kfp.local resolves the training branches' Model as the cluster does
COMPILED_PACKAGE = Path(__file__).with_suffix(".yaml")

# Where the default of every GPU toleration comes from: NVIDIA's GPU operator and the managed Kubernetes services
# taint GPU nodes with `nvidia.com/gpu` (effect NoSchedule).
GPU_NODE_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# The image of every task and of the TrainJob; `livo.commands.pipeline_cmd.pipeline_image` swaps it for one compile.
PIPELINE_IMAGE = LIVO_IMAGE

# Retries where a retry is safe: every task is idempotent on its run prefix (data shards commit per shard and resume,
# training resumes from its latest checkpoint or adopts its TrainJob, registration is idempotent per run id, records
# are overwritten whole). Preemption (exit 143) and transient store errors are what a retry is for; exponential
# backoff from 60 s, at most 2 h of retrying.
RETRY_POLICY = {"num_retries": 3, "backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "7200s"}

# Where pods keep downloaded base and judge models (livo.models reads LIVO_MODEL_CACHE): an emptyDir on the node's
# disk, sized for SD v1.5 (~5 GB) plus LLaVA-1.5-7B (~14 GB) with room to spare.
MODEL_CACHE_DIR = "/var/cache/livo/models"
MODEL_CACHE_SIZE = "64Gi"


def with_object_store(task: dsl.PipelineTask, secret_name, config_map_name) -> dsl.PipelineTask:
    """Map the store's credentials and location into the task's environment (LIVO_S3_*), by reference only."""
    kubernetes.use_secret_as_env(task, secret_name=secret_name,
                                 secret_key_to_env={"accesskey": "LIVO_S3_ACCESS_KEY",
                                                    "secretkey": "LIVO_S3_SECRET_KEY"})
    kubernetes.use_config_map_as_env(task, config_map_name=config_map_name,
                                     config_map_key_to_env={"endpoint": "LIVO_S3_ENDPOINT", "bucket": "LIVO_S3_BUCKET"})
    # MLflow, where the ConfigMap names a tracking server (docs/tracking.md); absent = each pod's local store.
    kubernetes.use_config_map_as_env(task, config_map_name=config_map_name,
                                     config_map_key_to_env={"mlflow_tracking_uri": "MLFLOW_TRACKING_URI"}, optional=True)
    return task


def cluster_task(task: dsl.PipelineTask, secret_name, config_map_name, cpu_request, cpu_limit, memory_request,
                 memory_limit, retry: bool = True) -> dsl.PipelineTask:
    """What every task gets: the pipeline's image, the object store, CPU and memory requests and limits (from the
    stage's parameters, so no pod runs BestEffort), no caching (see the module docstring) and, unless `retry` is
    False, the retry policy."""
    task.set_container_image(PIPELINE_IMAGE)
    with_object_store(task, secret_name, config_map_name)
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    task.set_caching_options(enable_caching=False)
    if retry:
        task.set_retry(**RETRY_POLICY)
    return task


def with_lineage_key(task: dsl.PipelineTask, secret_name) -> dsl.PipelineTask:
    """The optional HMAC key that signs (register) and checks (principles check) lineage manifests: key
    `lineage_hmac_key` of the store Secret, as LIVO_LINEAGE_HMAC_KEY (docs/registry.md); absent = unsigned."""
    kubernetes.use_secret_as_env(task, secret_name=secret_name,
                                 secret_key_to_env={"lineage_hmac_key": "LIVO_LINEAGE_HMAC_KEY"}, optional=True)
    return task


def with_model_cache(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Tasks that load models keep them on a pod-local volume (downloaded and verified once per pod)."""
    kubernetes.empty_dir_mount(task, volume_name="model-cache", mount_path=MODEL_CACHE_DIR, size_limit=MODEL_CACHE_SIZE)
    return task.set_env_variable("LIVO_MODEL_CACHE", MODEL_CACHE_DIR)


def placed(task: dsl.PipelineTask, node_selector, tolerations) -> dsl.PipelineTask:
    """Place the pod with the node selector and tolerations (pipeline parameters: one package serves every
    cluster)."""
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def on_gpus(task: dsl.PipelineTask, count, accelerator_type, node_selector, tolerations) -> dsl.PipelineTask:
    """Request `count` GPUs of `accelerator_type` and place the pod with the node selector and tolerations."""
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(count)
    return placed(task, node_selector, tolerations)


@dsl.pipeline(name=PIPELINE_NAME, description="LiVO value alignment: principles -> preference data -> value encoder "
              "-> evaluation -> registered model, skipped when the principle set is unchanged.")
def livo_full(
    run_preset: str = "sd15",
    run_principles_uri: str = "",
    run_model_source: str = "",
    run_force_retrain: bool = False,
    run_allow_ungated: bool = False,
    run_schedule_cron: str = "",
    run_pipeline_spec_sha256: str = "",
    run_accelerator_type: str = "nvidia.com/gpu",
    registry_model_name: str = "livo-sd15",
    data_shard_count: int = 8,
    data_gpus_per_shard: int = 1,
    data_node_selector: dict = {},  # noqa: B006 - kfp pipeline parameters take literal defaults
    data_tolerations: list = GPU_NODE_TOLERATIONS,  # noqa: B006
    data_config_overrides: list = [],  # noqa: B006
    data_cpu_request: str = RESOURCE_DEFAULTS["data_cpu_request"],
    data_cpu_limit: str = RESOURCE_DEFAULTS["data_cpu_limit"],
    data_memory_request: str = RESOURCE_DEFAULTS["data_memory_request"],
    data_memory_limit: str = RESOURCE_DEFAULTS["data_memory_limit"],
    train_launcher: str = "pod",
    train_num_nodes: int = 1,
    train_gpus_per_node: int = 8,
    train_node_selector: dict = {},  # noqa: B006
    train_tolerations: list = GPU_NODE_TOLERATIONS,  # noqa: B006
    train_config_overrides: list = [],  # noqa: B006
    train_cpu_request: str = RESOURCE_DEFAULTS["train_cpu_request"],
    train_cpu_limit: str = RESOURCE_DEFAULTS["train_cpu_limit"],
    train_memory_request: str = RESOURCE_DEFAULTS["train_memory_request"],
    train_memory_limit: str = RESOURCE_DEFAULTS["train_memory_limit"],
    train_trainjob_timeout_hours: float = 48.0,
    train_trainjob_start_timeout_minutes: float = 20.0,
    eval_gpus: int = 1,
    eval_node_selector: dict = {},  # noqa: B006
    eval_tolerations: list = GPU_NODE_TOLERATIONS,  # noqa: B006
    eval_config_overrides: list = [],  # noqa: B006
    eval_cpu_request: str = RESOURCE_DEFAULTS["eval_cpu_request"],
    eval_cpu_limit: str = RESOURCE_DEFAULTS["eval_cpu_limit"],
    eval_memory_request: str = RESOURCE_DEFAULTS["eval_memory_request"],
    eval_memory_limit: str = RESOURCE_DEFAULTS["eval_memory_limit"],
    control_cpu_request: str = RESOURCE_DEFAULTS["control_cpu_request"],
    control_cpu_limit: str = RESOURCE_DEFAULTS["control_cpu_limit"],
    control_memory_request: str = RESOURCE_DEFAULTS["control_memory_request"],
    control_memory_limit: str = RESOURCE_DEFAULTS["control_memory_limit"],
    store_secret_name: str = "mlpipeline-minio-artifact",
    store_config_map_name: str = "livo-object-store",
):
    """LiVO value alignment, end to end, skipped when the principle set is unchanged.

    Resource defaults are sized so that one GPU's share of the common 8-GPU nodes fits: AWS p4d.24xlarge and p5.48xlarge,
    GCP a2-highgpu-8g and a3-highgpu-8g and Azure ND96asr_v4 offer 12-24 vCPUs and 85-250 GiB of memory per GPU
    (docs/operations.md, Resources). Memory limits are twice the requests: model loading peaks before weights move to
    the GPU.

    Args:
        run_preset: Preset name (toy | tiny | toy-sdxl | sd15 | sd21 | sdxl) or a preset YAML path in the image.
            Default sd15: the paper's model and protocol (configs/presets/sd15.yaml, LIVO_METHOD §4 and §6).
        run_principles_uri: Principles YAML, a path in the image or s3://bucket/key. Default empty: the preset's
            own file, configs/principles/default.yaml, the paper's five principles.
        run_model_source: Base model of every stage: an s3:// URI of a mirrored model (`livo models mirror`), a
            path in the image or a hub id. Default empty: the preset's model (sd15 / sd21 / sdxl: LIVO_SD15_PATH /
            LIVO_SD21_PATH / LIVO_SDXL_PATH, else the hub). Air-gapped clusters set it to their mirror
            (docs/operations.md).
        run_force_retrain: Retrain even when the latest registered model has the same principle-set hash.
            Default false: scheduled runs are no-ops until the principles change (DESIGN.md, the flow).
        run_allow_ungated: Register the candidate even when its evaluation decided no gate (the preset sets no
            threshold, or every gate is waived); the version is marked UNGATED in its lineage and model card.
            Default false: validate-inputs fails such a run before any stage starts (docs/evaluation.md, Gates).
        run_schedule_cron: Cron of the recurring run that started this run (set by `livo schedule`, recorded in
            the outcome); KFP's 6-field dialect. Default empty: a one-off run.
        run_pipeline_spec_sha256: sha256 of the compiled package this run came from, for the lineage record; set
            by `livo submit`. Default empty: unknown.
        run_accelerator_type: Kubernetes resource name of the GPUs every GPU step requests. Default nvidia.com/gpu,
            the NVIDIA device plugin's resource.
        registry_model_name: Name under models/<name>/<version>/ in the object store. Default livo-sd15, after
            the default preset.
        data_shard_count: Data-generation shards run in parallel (one pod each). Default 8: one shard per GPU of
            an 8-GPU node, the unit the scale plan in docs/data.md counts in.
        data_gpus_per_shard: GPUs per data-generation pod. Default 1: generation is batched per GPU, shards scale
            out (docs/data.md).
        data_node_selector: Node labels the data-generation pods must match. Default empty: any node with GPUs.
        data_tolerations: Tolerations of the data-generation pods. Default: the nvidia.com/gpu NoSchedule taint
            that NVIDIA's GPU operator and managed Kubernetes put on GPU nodes.
        data_config_overrides: Data-generation config overrides, key=value items (livo generate). Default empty:
            the preset's settings (paper: DPM-Solver++ 25 steps, CFG 7.5, 512², LIVO_METHOD §5-6).
        data_cpu_request: CPU request of each data-generation pod. Default 4: the sampler's host side, PNG encoding
            and judging threads of one GPU.
        data_cpu_limit: CPU limit of each data-generation pod. Default 8.
        data_memory_request: Memory request of each data-generation pod. Default 32Gi: SD v1.5 and the judges are
            loaded on the host before they move to the GPU.
        data_memory_limit: Memory limit of each data-generation pod. Default 64Gi.
        train_launcher: pod (one pod with train_gpus_per_node GPUs; the launcher spawns a rank per GPU) or
            trainjob (a Kubeflow Trainer TrainJob on the livo-torch-distributed runtime, for multi-node). Default
            pod: one 8-GPU node fits the paper's run (batch 8 per device, 15k steps; LIVO_METHOD §4).
        train_num_nodes: Nodes of the TrainJob (trainjob only). Default 1.
        train_gpus_per_node: GPUs requested by the training pod (or per TrainJob node; the TrainJob's launcher
            pod requests none), one rank each. Default 8: one full node, as in the paper's multi-GPU DeepSpeed run.
        train_node_selector: Node labels the training pod must match (train_launcher=pod; a TrainJob's pods are
            placed by its runtime), e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}. Default empty: any
            node with the GPUs.
        train_tolerations: Tolerations of the training pod (train_launcher=pod). Default: the nvidia.com/gpu
            NoSchedule taint that NVIDIA's GPU operator and managed Kubernetes put on GPU nodes.
        train_config_overrides: Training config overrides, key=value items (livo train). Default empty: the
            authors' released run (LIVO_METHOD §4) as adapted by the preset.
        train_cpu_request: CPU request of the training pod (train_launcher=pod; 8 ranks and their data loaders).
            Default 32.
        train_cpu_limit: CPU limit of the training pod. Default 64.
        train_memory_request: Memory request of the training pod: 8 ranks each hold a host copy of SD v1.5 while
            loading, and ZeRO checkpoints are staged on the host. Default 256Gi.
        train_memory_limit: Memory limit of the training pod. Default 512Gi.
        train_trainjob_timeout_hours: How long the launcher waits for the TrainJob to finish before failing with its
            conditions (trainjob only). Default 48: the paper's 15k steps take well under a day on 8 GPUs.
        train_trainjob_start_timeout_minutes: How long the TrainJob may take to get its pods running (image pull,
            scheduling) before the launcher fails with the pods' waiting reasons. Default 20.
        eval_gpus: GPUs of the evaluation pod. Default 1: the protocol generates 50 images per prompt on one GPU
            (LIVO_METHOD §6).
        eval_node_selector: Node labels the evaluation pod must match. Default empty: any node with GPUs.
        eval_tolerations: Tolerations of the evaluation pod. Default: the nvidia.com/gpu NoSchedule taint.
        eval_config_overrides: Evaluation config overrides, key=value items (livo evaluate), e.g. gates. Default
            empty: the preset's protocol and gates (docs/evaluation.md).
        eval_cpu_request: CPU request of the evaluation pod. Default 8: judging and FID features beside the sampler.
        eval_cpu_limit: CPU limit of the evaluation pod. Default 16.
        eval_memory_request: Memory request of the evaluation pod: SD v1.5, CLIP ViT-L/14 and LLaVA-1.5-7B (~14 GB
            in fp16) pass through host memory. Default 64Gi.
        eval_memory_limit: Memory limit of the evaluation pod. Default 128Gi.
        control_cpu_request: CPU request of the control tasks (validate, principles check, merge, TrainJob launcher,
            register, outcome). Default 500m.
        control_cpu_limit: CPU limit of the control tasks. Default 2.
        control_memory_request: Memory request of the control tasks. Default 2Gi.
        control_memory_limit: Memory limit of the control tasks. Default 8Gi: merging shards streams parquet files.
        store_secret_name: Secret holding the object-store credentials (keys accesskey, secretkey). Default
            mlpipeline-minio-artifact, the secret KFP itself uses for its store.
        store_config_map_name: ConfigMap with the object-store endpoint and bucket (keys endpoint, bucket) and the
            optional model_registry_url of a Kubeflow Model Registry. Default livo-object-store, from manifests/base.
    """
    def control(task: dsl.PipelineTask, retry: bool = True) -> dsl.PipelineTask:
        return cluster_task(task, store_secret_name, store_config_map_name, control_cpu_request, control_cpu_limit,
                            control_memory_request, control_memory_limit, retry=retry)

    outcome = control(record_outcome(
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        schedule_cron=run_schedule_cron,
    ))

    with dsl.ExitHandler(outcome, name="livo"):
        # No retry: it only checks its inputs, so a failure is bad input, and a retry would fail the same way.
        validated = control(validate_inputs(
            run_preset=run_preset, run_principles_uri=run_principles_uri, run_model_source=run_model_source,
            run_schedule_cron=run_schedule_cron,
            run_accelerator_type=run_accelerator_type, run_allow_ungated=run_allow_ungated,
            registry_model_name=registry_model_name,
            data_shard_count=data_shard_count, data_gpus_per_shard=data_gpus_per_shard,
            data_node_selector=data_node_selector, data_tolerations=data_tolerations,
            data_config_overrides=data_config_overrides, data_cpu_request=data_cpu_request,
            data_cpu_limit=data_cpu_limit, data_memory_request=data_memory_request,
            data_memory_limit=data_memory_limit, train_launcher=train_launcher,
            train_num_nodes=train_num_nodes, train_gpus_per_node=train_gpus_per_node,
            train_node_selector=train_node_selector, train_tolerations=train_tolerations,
            train_config_overrides=train_config_overrides, train_cpu_request=train_cpu_request,
            train_cpu_limit=train_cpu_limit, train_memory_request=train_memory_request,
            train_memory_limit=train_memory_limit, train_trainjob_timeout_hours=train_trainjob_timeout_hours,
            train_trainjob_start_timeout_minutes=train_trainjob_start_timeout_minutes,
            eval_gpus=eval_gpus, eval_node_selector=eval_node_selector,
            eval_tolerations=eval_tolerations, eval_config_overrides=eval_config_overrides,
            eval_cpu_request=eval_cpu_request, eval_cpu_limit=eval_cpu_limit,
            eval_memory_request=eval_memory_request, eval_memory_limit=eval_memory_limit,
            control_cpu_request=control_cpu_request, control_cpu_limit=control_cpu_limit,
            control_memory_request=control_memory_request, control_memory_limit=control_memory_limit,
            store_secret_name=store_secret_name, store_config_map_name=store_config_map_name,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ), retry=False)
        principles_uri = validated.outputs["principles_uri"]
        run_uri = validated.outputs["run_uri"]

        changed = with_lineage_key(control(principles_changed(
            model_name=registry_model_name, principle_set_hash=validated.outputs["principle_set_hash"],
            force_retrain=run_force_retrain, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )), store_secret_name)

        with dsl.If(changed.output == True, name="principles-changed"):  # noqa: E712 - a kfp condition, not a bool
            dataset_uri = f"{run_uri}/{RUN_DATASET_DIR}"
            with dsl.ParallelFor(validated.outputs["shard_indices"], name="data-shards") as shard_index:
                shard = with_model_cache(cluster_task(on_gpus(generate_data_shard(
                    dataset_uri=dataset_uri, shard_index=shard_index, shard_count=data_shard_count,
                    preset=run_preset, principles_uri=principles_uri, model_source=run_model_source,
                    config_overrides=data_config_overrides,
                ), data_gpus_per_shard, run_accelerator_type, data_node_selector, data_tolerations),
                    store_secret_name, store_config_map_name, data_cpu_request, data_cpu_limit, data_memory_request,
                    data_memory_limit))
            merged = control(merge_data_shards(
                dataset_uri=dataset_uri, shard_count=data_shard_count, shard_uris=dsl.Collected(shard.output),
            ))

            training_inputs = dict(
                dataset=merged.outputs["dataset"], output_uri=f"{run_uri}/{RUN_TRAINING_DIR}", preset=run_preset,
                model_source=run_model_source, principle_set_hash=validated.outputs["principle_set_hash"],
                config_overrides=train_config_overrides, gpus_per_node=train_gpus_per_node,
                num_nodes=train_num_nodes, accelerator_type=run_accelerator_type,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, image=PIPELINE_IMAGE,
                store_secret_name=store_secret_name, store_config_map_name=store_config_map_name,
                trainjob_timeout_hours=train_trainjob_timeout_hours,
                trainjob_start_timeout_minutes=train_trainjob_start_timeout_minutes,
            )
            with dsl.If(train_launcher == "pod", name="train-in-pod"):
                pod_training = with_model_cache(cluster_task(placed(configure_training_task(
                    train_value_encoder(launcher="pod", **training_inputs).set_display_name("train-in-pod"),
                    gpus=train_gpus_per_node, accelerator_type=run_accelerator_type,
                ), train_node_selector, train_tolerations), store_secret_name, store_config_map_name,
                    train_cpu_request, train_cpu_limit, train_memory_request, train_memory_limit))
            with dsl.Else(name="train-as-trainjob"):
                # The launcher pod only creates the TrainJob and waits: no GPU, no GPU-node placement, control size.
                trainjob_training = control(
                    train_value_encoder(launcher="trainjob", **training_inputs).set_display_name("train-as-trainjob"))
            model = dsl.OneOf(pod_training.outputs["model"], trainjob_training.outputs["model"])
            training_output_uri = dsl.OneOf(pod_training.outputs["output_uri"],
                                            trainjob_training.outputs["output_uri"])

            evaluation_uri = f"{run_uri}/{RUN_EVALUATION_DIR}"
            evaluation = with_model_cache(cluster_task(on_gpus(evaluate(
                model=model, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, preset=run_preset, principles_uri=principles_uri,
                model_source=run_model_source, config_overrides=eval_config_overrides, report_uri=evaluation_uri,
            ), eval_gpus, run_accelerator_type, eval_node_selector, eval_tolerations),
                store_secret_name, store_config_map_name, eval_cpu_request, eval_cpu_limit, eval_memory_request,
                eval_memory_limit))

            with dsl.If(evaluation.outputs["Output"] == True, name="evaluation-passed"):  # noqa: E712 - kfp condition
                registration = with_lineage_key(control(register(
                    dataset=merged.outputs["dataset"], model=model, metrics=evaluation.outputs["metrics"],
                    report=evaluation.outputs["report"], model_name=registry_model_name, training_output_uri=training_output_uri,
                    evaluation_uri=evaluation_uri, principles_uri=principles_uri,
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    pipeline_spec_sha256=run_pipeline_spec_sha256, image=PIPELINE_IMAGE,
                    allow_ungated=run_allow_ungated,
                )), store_secret_name)
                # The Kubeflow Model Registry, where one is deployed (manifests/overlays/model-registry).
                kubernetes.use_config_map_as_env(registration, config_map_name=store_config_map_name,
                                                 config_map_key_to_env={"model_registry_url": "LIVO_MODEL_REGISTRY_URL"},
                                                 optional=True)


def main(argv: list[str] | None = None) -> int:
    """`python pipelines/livo_full.py compile|run --local|submit|schedule ...` == `livo compile|run|submit|schedule`."""
    from livo.cli import main as livo_main

    args = list(sys.argv[1:] if argv is None else argv)
    commands = ("compile", "run", "submit", "schedule")
    if not args or args[0] not in commands:
        print(f"usage: python pipelines/livo_full.py {{{'|'.join(commands)}}} [ARGS]  (run needs --local; "
              "see `livo COMMAND --help`)", file=sys.stderr)
        return 2
    if args[0] == "run":
        if "--local" not in args[1:]:
            print("python pipelines/livo_full.py run: pass --local (kfp.local); for a cluster use `submit`",
                  file=sys.stderr)
            return 2
        args.remove("--local")
    return livo_main(args)


if __name__ == "__main__":
    sys.exit(main())
