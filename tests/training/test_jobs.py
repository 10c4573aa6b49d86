"""Launchers: the TrainJob body (validated with the Trainer API models), waiting on it, and the KFP component."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from livo.errors import ConfigError, LivoError
from livo.training import jobs

IMAGE = "ghcr.io/livo-mlops/livo:1@sha256:" + "1" * 64


def body(**kwargs):
    settings = dict(name="livo-train-abc", namespace="team-a", image=IMAGE,
                    launch_args=jobs.launch_arguments(dataset_uri="s3://b/ds", output_uri="s3://b/run/train",
                                                      preset="sd15", principle_set_hash="sha256:" + "a" * 64,
                                                      overrides=["max_steps=100"]),
                    num_nodes=2, procs_per_node=8)
    settings.update(kwargs)
    return jobs.trainjob_body(**settings)


def test_trainjob_body_validates_with_the_trainer_api_models():
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    manifest = body()
    parsed = TrainerV1alpha1TrainJob.from_dict(manifest)
    assert parsed.kind == "TrainJob" and parsed.api_version == "trainer.kubeflow.org/v1alpha1"
    assert parsed.spec.runtime_ref.name == "livo-torch-distributed"
    assert parsed.spec.runtime_ref.kind == "TrainingRuntime"
    trainer = parsed.spec.trainer
    assert (trainer.num_nodes, trainer.num_proc_per_node) == (2, 8)
    # torchrun on every node (the Trainer only sets PET_*; it does not wrap the command): world size 2 × 8.
    assert trainer.command == ["torchrun", "-m", "livo.training.launch"]
    assert trainer.args[:4] == ["--dataset", "s3://b/ds", "--output", "s3://b/run/train"]
    assert "--resume" in trainer.args and trainer.args[-1] == "max_steps=100"
    assert trainer.resources_per_node.limits["nvidia.com/gpu"].actual_instance == "8"
    # The body round-trips through the API model unchanged (nothing we set is dropped as unknown).
    assert parsed.to_dict() == json.loads(json.dumps(manifest))


def test_trainjob_pods_get_the_object_store_secret_and_config_map():
    env = {item["name"]: item for item in body()["spec"]["trainer"]["env"]}
    assert env["LIVO_S3_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "accesskey"}}
    assert env["LIVO_S3_SECRET_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "secretkey"}}
    assert env["LIVO_S3_ENDPOINT"]["valueFrom"] == {"configMapKeyRef": {"name": "livo-object-store", "key": "endpoint"}}
    assert env["LIVO_S3_BUCKET"]["valueFrom"] == {"configMapKeyRef": {"name": "livo-object-store", "key": "bucket"}}
    assert env["LIVO_MODEL_REGISTRY_URL"]["valueFrom"] == {
        "configMapKeyRef": {"name": "livo-object-store", "key": "model_registry_url", "optional": True}}
    assert not [item for item in env.values() if "value" in item]  # no secret in the body itself

    custom = body(store_secret_name="livo-object-store", store_config_map_name="team-store", env={"HF_HUB_OFFLINE": "1"})
    refs = {(e["name"], next(iter(e["valueFrom"].values()))["name"]) for e in custom["spec"]["trainer"]["env"]
            if "valueFrom" in e}
    assert refs == {("LIVO_S3_ACCESS_KEY", "livo-object-store"), ("LIVO_S3_SECRET_KEY", "livo-object-store"),
                    ("LIVO_S3_ENDPOINT", "team-store"), ("LIVO_S3_BUCKET", "team-store"),
                    ("LIVO_MODEL_REGISTRY_URL", "team-store"), ("MLFLOW_TRACKING_URI", "team-store")}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in custom["spec"]["trainer"]["env"]
    with pytest.raises(ConfigError, match="LIVO_S3_ENDPOINT, which come from the Secret/ConfigMap"):
        body(env={"LIVO_S3_ENDPOINT": "http://elsewhere"})
    with pytest.raises(ConfigError, match="store_secret_name='Bad_Secret' is not a Kubernetes object name"):
        body(store_secret_name="Bad_Secret")


def test_trainjob_names_and_bad_input_at_the_door():
    assert jobs.trainjob_name("Run_ID.42") == "livo-train-run-id-42"
    assert len(jobs.trainjob_name("x" * 200)) == 63
    with pytest.raises(ConfigError, match="DNS-1123"):
        body(name="Bad_Name")
    with pytest.raises(ConfigError, match=r"num_nodes \(0\) and procs_per_node \(8\) must be >= 1"):
        body(num_nodes=0)
    with pytest.raises(ConfigError, match=r"not pinned by digest.*@sha256:<64 hex digits>"):
        body(image="ghcr.io/livo-mlops/livo:1")
    with pytest.raises(ConfigError, match="not pinned by digest"):
        body(image="ghcr.io/livo-mlops/livo@sha256:1234")  # truncated digest
    for kwargs, message in ((dict(num_nodes=0), "num_nodes"), (dict(image="livo:latest", num_nodes=2), "digest")):
        with pytest.raises(ConfigError, match=message):
            jobs.run_training(launcher="trainjob", launch_args=["--dataset", "d", "--output", "o"], procs_per_node=1,
                              custom_api=object(), **{"image": IMAGE, **kwargs})


def test_trainjob_body_with_an_unknown_field_is_rejected_naming_its_path():
    from livo.k8s_schema import validate_trainjob

    manifest = body()
    validate_trainjob(manifest)
    misspelt = json.loads(json.dumps(manifest))
    misspelt["spec"]["trainer"]["commands"] = misspelt["spec"]["trainer"].pop("command")
    with pytest.raises(ConfigError, match=r"TrainJob livo-train-abc: unknown field\(s\) spec\.trainer\.commands "):
        validate_trainjob(misspelt)
    limitz = json.loads(json.dumps(manifest))
    limitz["spec"]["trainer"]["resourcesPerNode"]["limitz"] = {"cpu": "1"}
    limitz["spec"]["trainer"]["env"][0]["valueFrom"]["configMapKeyRef"]["keyy"] = "x"
    with pytest.raises(ConfigError) as caught:
        validate_trainjob(limitz)
    assert "spec.trainer.resourcesPerNode.limitz" in str(caught.value)
    assert "spec.trainer.env[0].valueFrom.configMapKeyRef.keyy" in str(caught.value)
    wrong_type = json.loads(json.dumps(manifest))
    wrong_type["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(ConfigError, match="does not validate against the Kubeflow Trainer v2.3 API"):
        validate_trainjob(wrong_type)


def test_launch_arguments_parse_back_into_the_config():
    from livo.training.launch import build_parser, config_from_args

    args = jobs.launch_arguments(dataset_uri="/data/ds", output_uri="/runs/r", model_source="tiny",
                                 principle_set_hash="sha256:" + "b" * 64, overrides=["optimizer.lr=1e-5"])
    config = config_from_args(build_parser().parse_args(args))
    assert (config.dataset, config.output, config.model) == ("/data/ds", "/runs/r", "tiny")
    assert config.expected_principle_set_hash == "sha256:" + "b" * 64
    assert config.resume is True and config.optimizer.lr == 1e-5


class ApiError(Exception):
    """Like kubernetes.client.ApiException: carries the HTTP `status`."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeClock:
    """time.monotonic / time.sleep pair: sleeping advances the clock, nothing waits."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def pod(name: str, phase: str = "Pending", waiting: str = "", message: str = "", unschedulable: str = ""):
    """A V1Pod-shaped object: phase, a waiting container, a PodScheduled=False condition."""
    statuses = [SimpleNamespace(state=SimpleNamespace(waiting=SimpleNamespace(reason=waiting, message=message)))
                ] if waiting else []
    conditions = [SimpleNamespace(type="PodScheduled", status="False", reason="Unschedulable",
                                  message=unschedulable)] if unschedulable else []
    return SimpleNamespace(metadata=SimpleNamespace(name=name),
                           status=SimpleNamespace(phase=phase, container_statuses=statuses, conditions=conditions))


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


class FakeCluster:
    """Stands in for the Kubernetes API server (CustomObjectsApi + CoreV1Api): the TrainJob's status at each poll
    (the last one repeats), its pods at each poll, their events, and the first node's growing log."""

    def __init__(self, statuses: list[dict], pods: list[list] | None = None, events: dict | None = None,
                 exists: bool = False):
        self.statuses, self.pod_polls, self.events, self.exists = statuses, pods or [[]], events or {}, exists
        self.created: list[dict] = []
        self.gets = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, manifest):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        if self.exists:
            raise ApiError(409)
        self.created.append(manifest)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        return {"metadata": {"name": name}, "status": self.statuses[min(self.gets, len(self.statuses)) - 1]}

    def list_namespaced_pod(self, namespace, label_selector):
        assert "jobset.sigs.k8s.io/jobset-name=livo-train-abc" in label_selector
        pods = self.pod_polls[min(self.gets, len(self.pod_polls)) - 1]
        if "job-completion-index=0" in label_selector:
            pods = pods[:1]
        return SimpleNamespace(items=pods)

    def read_namespaced_pod_log(self, name, namespace):
        return "\n".join(f"line {i}" for i in range(self.gets))

    def list_namespaced_event(self, namespace, field_selector):
        pod_name = field_selector.removeprefix("involvedObject.name=")
        return SimpleNamespace(items=[SimpleNamespace(type="Warning", reason=r, message=m)
                                      for r, m in self.events.get(pod_name, [])])


RUNNING = [pod("livo-train-abc-node-0-0-x", "Running"), pod("livo-train-abc-node-0-1-y", "Running")]
CREATED = {"conditions": [condition("Created", "JobSetCreated", "jobset created")]}


def wait(cluster: FakeCluster, clock: FakeClock, **kwargs):
    echoed: list[str] = []
    settings = dict(custom_api=cluster, core_api=cluster, echo=echoed.append, sleep=clock.sleep, clock=clock,
                    poll_seconds=10.0)
    settings.update(kwargs)
    return jobs.run_trainjob(body(), **settings), echoed


def test_run_trainjob_waits_for_complete_and_streams_the_first_nodes_log():
    cluster, clock = FakeCluster([CREATED, CREATED, CREATED, {"conditions": [condition("Complete")]}],
                                 pods=[[], RUNNING]), FakeClock()
    status, echoed = wait(cluster, clock)
    assert cluster.created and cluster.created[0]["metadata"]["name"] == "livo-train-abc"
    assert status["conditions"][0]["type"] == "Complete"
    assert echoed == [f"line {i}" for i in range(4)]  # every line once, in order
    assert clock.sleeps == [10.0, 10.0, 10.0]


def test_run_trainjob_adopts_the_trainjob_of_a_previous_attempt():
    adopted, clock = FakeCluster([{"conditions": [condition("Complete")]}], exists=True), FakeClock()
    wait(adopted, clock)
    assert adopted.created == [] and adopted.gets == 1 and clock.sleeps == []
    with pytest.raises(LivoError, match=r"cannot create TrainJob team-a/livo-train-abc: HTTP 403; check the Trainer"):
        class Forbidden(FakeCluster):
            def create_namespaced_custom_object(self, *args):
                raise ApiError(403)
        wait(Forbidden([CREATED]), FakeClock())


def test_run_trainjob_failure_reports_conditions_and_pods():
    failed = {"conditions": [condition("Created", "JobSetCreated", "jobset created"),
                             condition("Failed", "TrainJobFailed", "jobset node failed: BackoffLimitExceeded")]}
    crashed = [pod("livo-train-abc-node-0-0-x", "Failed"), pod("livo-train-abc-node-0-1-y", "Running")]
    cluster = FakeCluster([CREATED, failed], pods=[RUNNING, crashed])
    with pytest.raises(LivoError) as caught:
        wait(cluster, FakeClock())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("TrainJob team-a/livo-train-abc failed; conditions: "
                              "Created=True (JobSetCreated: jobset created), "
                              "Failed=True (TrainJobFailed: jobset node failed: BackoffLimitExceeded); "
                              "pods: pod livo-train-abc-node-0-0-x Failed, pod livo-train-abc-node-0-1-y Running; ")
    assert message.endswith("see `kubectl logs -n team-a -l jobset.sigs.k8s.io/jobset-name=livo-train-abc`")


def test_run_trainjob_that_never_starts_names_the_cause_and_the_fix():
    pulling = [pod("livo-train-abc-node-0-0-x", waiting="ImagePullBackOff",
                   message='Back-off pulling image "ghcr.io/livo-mlops/livo@sha256:11"'),
               pod("livo-train-abc-node-0-1-y", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu")]
    clock = FakeClock()
    with pytest.raises(LivoError) as caught:
        wait(FakeCluster([CREATED], pods=[pulling]), clock, start_timeout_seconds=1200, poll_seconds=60)
    message = str(caught.value)
    assert message.startswith("TrainJob team-a/livo-train-abc never started: no pod ran within 1200 s; conditions: "
                              "Created=True (JobSetCreated: jobset created); ")
    assert ("pod livo-train-abc-node-0-0-x Pending (ImagePullBackOff: Back-off pulling image "
            '"ghcr.io/livo-mlops/livo@sha256:11")') in message
    assert "pod livo-train-abc-node-0-1-y Pending (Unschedulable: 0/3 nodes are available: 3 Insufficient" in message
    assert "fix: the image cannot be pulled" in message and "no node fits a TrainJob pod" in message
    assert "kubectl delete trainjob -n team-a livo-train-abc" in message
    assert len(clock.sleeps) == 21  # polled every 60 s until just past 1200 s, then gave up

    no_pods = FakeClock()
    with pytest.raises(LivoError, match=r"never started: no pod ran within 300 s; conditions: none; no pods;"):
        wait(FakeCluster([{}]), no_pods, start_timeout_seconds=300, poll_seconds=100)
    assert no_pods.now - 1000.0 == 400.0


def test_run_trainjob_names_a_missing_secret():
    waiting = [pod("livo-train-abc-node-0-0-x", waiting="CreateContainerConfigError",
                   message='secret "livo-object-store" not found')]
    events = {"livo-train-abc-node-0-0-x": [("Failed", 'Error: secret "livo-object-store" not found')]}
    with pytest.raises(LivoError) as caught:
        wait(FakeCluster([CREATED], pods=[waiting], events=events), FakeClock(), start_timeout_seconds=60)
    message = str(caught.value)
    assert 'CreateContainerConfigError: secret "livo-object-store" not found' in message
    assert 'event Failed: Error: secret "livo-object-store" not found' in message
    assert ("fix: create Secret livo-object-store (keys accesskey, secretkey) in namespace team-a "
            "(manifests/templates/object-store-secret.yaml) or pass store_secret_name") in message
    assert message.count("create Secret livo-object-store") == 1


def test_run_trainjob_overall_timeout_once_it_runs():
    clock = FakeClock()
    with pytest.raises(LivoError) as caught:
        wait(FakeCluster([CREATED], pods=[RUNNING]), clock, timeout_seconds=3600, start_timeout_seconds=60,
             poll_seconds=600)
    message = str(caught.value)
    assert message.startswith("TrainJob team-a/livo-train-abc did not finish within 3600 s; conditions: Created=True")
    assert "pod livo-train-abc-node-0-0-x Running" in message and "raise timeout_seconds" in message
    assert clock.now - 1000.0 == 4200.0  # 7 polls of 600 s: the first check past 3600 s gives up
    # Running pods reset nothing: the start timeout (60 s) is not what fired.
    assert "never started" not in message


def test_run_training_passes_store_names_and_timeouts_to_the_trainjob(monkeypatch):
    seen = {}

    def fake_run_trainjob(manifest, **kwargs):
        seen.update(manifest=manifest, **kwargs)
        return {}

    monkeypatch.setattr(jobs, "run_trainjob", fake_run_trainjob)
    jobs.run_training(launcher="trainjob", launch_args=["--dataset", "s3://b/ds", "--output", "s3://b/out",
                                                        "global_batch_size=16"],
                      procs_per_node=4, num_nodes=2, image=IMAGE, run_id="run-1", namespace="team-a",
                      custom_api=object(), core_api=object(), store_secret_name="livo-object-store",
                      store_config_map_name="team-store", timeout_seconds=7200, start_timeout_seconds=300)
    assert (seen["timeout_seconds"], seen["start_timeout_seconds"]) == (7200, 300)
    trainer = seen["manifest"]["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (2, 4, IMAGE)
    refs = {next(iter(e["valueFrom"].values()))["name"] for e in trainer["env"] if "valueFrom" in e}
    assert refs == {"livo-object-store", "team-store"}
    assert {"name": "LIVO_KFP_RUN_ID", "value": "run-1"} in trainer["env"]  # rank 0 tracks under the pipeline run
    assert seen["manifest"]["metadata"]["name"] == "livo-train-run-1"


def test_a_trainjob_node_without_torchrun_is_refused(monkeypatch):
    from livo.training import distributed

    # ensure_launcher_env writes os.environ: give it a private copy without launcher variables.
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in launcher})
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("PET_NPROC_PER_NODE", "8")
    with pytest.raises(ConfigError, match=r"PET_NNODES=2 PET_NPROC_PER_NODE=8 ask for 16 processes but this one sees "
                                          r"world size 1 \(started without torchrun\); start each node with "
                                          r"`torchrun -m livo.training.launch ...`"):
        distributed.ensure_launcher_env()
    assert "WORLD_SIZE" not in os.environ
    monkeypatch.setenv("PET_NPROC_PER_NODE", "auto")  # torchrun's GPU count: the node count alone is known
    with pytest.raises(ConfigError, match="ask for 2 processes"):
        distributed.ensure_launcher_env()
    # Under torchrun (WORLD_SIZE set by it) the same variables are fine, and so is a one-node, one-process TrainJob.
    monkeypatch.setenv("PET_NPROC_PER_NODE", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.ensure_launcher_env().world_size == 2
    for name in launcher:
        os.environ.pop(name, None)
    monkeypatch.setenv("PET_NNODES", "1")
    assert distributed.ensure_launcher_env().world_size == 1


def test_component_compiles_with_gpus_and_memory_backed_shm(tmp_path):
    from kfp import compiler, dsl

    from components.train_value_encoder import configure_training_task, train_value_encoder

    @dsl.pipeline(name="train-only")
    def train_only(dataset_uri: str, output_uri: str, gpus: int = 8):
        dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        task = train_value_encoder(dataset=dataset.output, output_uri=output_uri, gpus_per_node=gpus)
        configure_training_task(task, gpus=gpus)

    package = tmp_path / "train.yaml"
    compiler.Compiler().compile(train_only, str(package))
    text = package.read_text()
    assert "livo.training.jobs" in text and "install_kfp_package" not in text
    assert "medium: Memory" in text and "mountPath: /dev/shm" in text
    assert "nvidia.com/gpu" in text


@pytest.mark.slow
def test_component_trains_and_outputs_the_model_locally(tmp_path, latent_dataset):
    """The component reads a Dataset artifact and writes its Model: a pointer to the value encoder in the training
    output, with the weights digest that registration records (livo.artifacts)."""
    from kfp import dsl, local

    from components.train_value_encoder import train_value_encoder
    from livo.artifacts import dataset_pointer, write_pointer
    from livo.registry.lineage import value_encoder_digest

    pointer_file = tmp_path / "dataset-artifact"
    pointer = write_pointer(pointer_file, dataset_pointer(latent_dataset))
    output = tmp_path / "train"

    @dsl.pipeline
    def train_only():
        dataset = dsl.importer(artifact_uri=str(pointer_file), artifact_class=dsl.Dataset, metadata=pointer)
        train_value_encoder(dataset=dataset.output, output_uri=str(output), preset="tiny",
                            config_overrides=["max_steps=2", "per_device_batch_size=2", "checkpoint.every_steps=2"],
                            gpus_per_node=1, resume=False)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    train_only()
    (executed,) = (tmp_path / "root").rglob("train-value-encoder/executor_output.json")
    outputs = json.loads(executed.read_text())
    assert outputs["parameterValues"]["value_encoder_uri"] == str(output / "value_encoder")
    model = outputs["artifacts"]["model"]["artifacts"][0]
    assert model["metadata"]["sha256"] == value_encoder_digest(output / "value_encoder")
    assert model["metadata"]["uri"] == str(output / "value_encoder")
    assert json.loads(Path(model["uri"]).read_text())["sha256"] == model["metadata"]["sha256"]  # a pointer, no weights
