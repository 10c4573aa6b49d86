"""Launchers: the TrainJob body (validated with the Trainer API models), waiting on it, and the KFP component."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from livo.errors import ConfigError, LivoError
from livo.training import jobs


def body(**kwargs):
    settings = dict(name="livo-train-abc", namespace="team-a", image="ghcr.io/livo-mlops/livo:1@sha256:" + "1" * 64,
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
    assert trainer.command == ["python", "-m", "livo.training.launch"]
    assert trainer.args[:4] == ["--dataset", "s3://b/ds", "--output", "s3://b/run/train"]
    assert "--resume" in trainer.args and trainer.args[-1] == "max_steps=100"
    assert trainer.resources_per_node.limits["nvidia.com/gpu"].actual_instance == "8"
    # The body round-trips through the API model unchanged (nothing we set is dropped as unknown).
    assert parsed.to_dict() == json.loads(json.dumps(manifest))


def test_trainjob_names_and_bad_shapes():
    assert jobs.trainjob_name("Run_ID.42") == "livo-train-run-id-42"
    assert len(jobs.trainjob_name("x" * 200)) == 63
    with pytest.raises(ConfigError, match="DNS-1123"):
        body(name="Bad_Name")
    with pytest.raises(ConfigError, match="must be >= 1"):
        body(num_nodes=0)


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


class FakeTrainerApi:
    """Stands in for the Kubernetes API server: a TrainJob that runs for `polls` polls, then ends as `outcome`."""

    def __init__(self, outcome: str = "Complete", polls: int = 2, exists: bool = False):
        self.outcome, self.polls, self.exists = outcome, polls, exists
        self.created: list[dict] = []
        self.gets = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, manifest):
        if self.exists:
            raise ApiError(409)
        self.created.append(manifest)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        if self.gets <= self.polls:
            return {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
        return {"status": {"conditions": [{"type": self.outcome, "status": "True", "reason": "r", "message": "m"}]}}

    # CoreV1Api part: the first node's pod and its growing log
    def list_namespaced_pod(self, namespace, label_selector):
        assert "jobset.sigs.k8s.io/jobset-name=" in label_selector
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="node-0"))])

    def read_namespaced_pod_log(self, name, namespace):
        return "\n".join(f"line {i}" for i in range(self.gets))


def test_run_trainjob_waits_streams_logs_and_reports_failure():
    api = FakeTrainerApi("Complete", polls=3)
    echoed: list[str] = []
    status = jobs.run_trainjob(body(), custom_api=api, core_api=api, echo=echoed.append, sleep=lambda s: None)
    assert api.created and api.created[0]["metadata"]["name"] == "livo-train-abc"
    assert status["conditions"][0]["type"] == "Complete"
    assert echoed == [f"line {i}" for i in range(4)]  # every line once, in order

    adopted = FakeTrainerApi("Complete", polls=0, exists=True)  # a retried task finds its TrainJob
    jobs.run_trainjob(body(), custom_api=adopted, sleep=lambda s: None)
    assert adopted.gets == 1

    with pytest.raises(LivoError, match="failed: r m"):
        jobs.run_trainjob(body(), custom_api=FakeTrainerApi("Failed", polls=1), sleep=lambda s: None)


def test_component_compiles_with_gpus_and_memory_backed_shm(tmp_path):
    from kfp import compiler, dsl

    from components.train_value_encoder import configure_training_task, train_value_encoder

    @dsl.pipeline(name="train-only")
    def train_only(dataset_uri: str, output_uri: str, gpus: int = 8):
        task = train_value_encoder(dataset_uri=dataset_uri, output_uri=output_uri, gpus_per_node=gpus)
        configure_training_task(task, gpus=gpus)

    package = tmp_path / "train.yaml"
    compiler.Compiler().compile(train_only, str(package))
    text = package.read_text()
    assert "livo.training.jobs" in text and "install_kfp_package" not in text
    assert "medium: Memory" in text and "mountPath: /dev/shm" in text
    assert "nvidia.com/gpu" in text


@pytest.mark.slow
def test_component_trains_and_outputs_the_model_locally(tmp_path, latent_dataset):
    from kfp import local

    from components.train_value_encoder import train_value_encoder

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    output = tmp_path / "train"
    task = train_value_encoder(dataset_uri=latent_dataset, output_uri=str(output), preset="tiny",
                               config_overrides=["max_steps=2", "per_device_batch_size=2", "checkpoint.every_steps=2"],
                               gpus_per_node=1, resume=False)
    assert task.outputs["value_encoder_uri"] == str(output / "value_encoder")
    model_dir = task.outputs["model"].path
    assert sorted(p.name for p in Path(model_dir).iterdir()) == ["config.json", "model.safetensors"]
    assert (Path(model_dir) / "model.safetensors").read_bytes() == (output / "value_encoder" / "model.safetensors").read_bytes()
