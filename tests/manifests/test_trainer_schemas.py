"""The Kubeflow Trainer objects livo creates, validated strictly against the Trainer v2.3 API models (unknown fields
rejected with their path): the TrainingRuntime as shipped and as each overlay renders it, the TrainJob bodies, the
pod a TrainJob node would run, and the optional workspace-PVC component."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from livo.errors import ConfigError
from livo.k8s_schema import validate_training_runtime, validate_trainjob
from livo.training import jobs

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")
IMAGE = "ghcr.io/livo-mlops/livo:0.1.0-cuda@sha256:" + "0" * 64
POD = ("spec", "template", "spec", "replicatedJobs", 0, "template", "spec", "template", "spec")


def runtime_doc() -> dict:
    return yaml.safe_load((MANIFESTS / "base" / "training-runtime.yaml").read_text())


def pod_spec(runtime: dict) -> dict:
    node = runtime
    for key in POD:
        node = node[key]
    return node


def render(directory: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def sample_body(**kwargs) -> dict:
    settings = dict(name="livo-train-run-7", namespace="kubeflow", image=IMAGE, num_nodes=4, procs_per_node=8,
                    launch_args=jobs.launch_arguments(dataset_uri="s3://mlpipeline/ds", output_uri="s3://mlpipeline/t",
                                                      preset="sd15"))
    settings.update(kwargs)
    return jobs.trainjob_body(**settings)


def test_shipped_runtime_validates_and_an_unknown_field_is_named():
    runtime = runtime_doc()
    validate_training_runtime(runtime)
    bad = copy.deepcopy(runtime)
    bad["spec"]["mlPolicy"]["torch"]["numProcsPerNode"] = 8  # misspelt (the field is numProcPerNode)
    pod_spec(bad)["containers"][0]["resources"]["limitz"] = {"memory": "1Gi"}
    with pytest.raises(ConfigError) as caught:
        validate_training_runtime(bad)
    message = str(caught.value)
    assert message.startswith("TrainingRuntime livo-torch-distributed: unknown field(s) ")
    assert "spec.mlPolicy.torch.numProcsPerNode" in message
    assert "spec.template.spec.replicatedJobs[0].template.spec.template.spec.containers[0].resources.limitz" in message


def test_runtime_declares_no_object_store_env_and_a_scratch_workspace():
    pod = pod_spec(runtime_doc())
    env = pod["containers"][0].get("env", [])
    assert not [e for e in env if "valueFrom" in e], "object-store env belongs to the TrainJob body, not the runtime"
    assert {e["name"]: e["value"] for e in env} == {"TMPDIR": "/workspace", "LIVO_CACHE_DIR": "/workspace/cache"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["workspace"] == {"name": "workspace", "emptyDir": {"sizeLimit": "50Gi"}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "workspace": "/workspace"}
    assert not (MANIFESTS / "base" / "workspace-pvc.yaml").exists()


@pytest.mark.parametrize("nodes,procs", [(1, 1), (2, 8), (16, 4)])
def test_trainjob_bodies_validate(nodes, procs):
    validate_trainjob(sample_body(num_nodes=nodes, procs_per_node=procs, env={"NCCL_DEBUG": "INFO"},
                                  store_secret_name="livo-object-store"))


def test_trainjob_body_unknown_fields_are_rejected_with_their_path():
    body = sample_body()
    for path, message in ((("spec", "trainer", "commands"), "spec.trainer.commands"),
                          (("spec", "trainer", "resourcesPerNode", "limitz"), "spec.trainer.resourcesPerNode.limitz"),
                          (("spec", "runtimeRefs"), "spec.runtimeRefs"),
                          (("metadata", "label"), "metadata.label")):
        bad = copy.deepcopy(body)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = {"x": "1"}
        with pytest.raises(ConfigError, match=rf"TrainJob livo-train-run-7: unknown field\(s\) {message} "):
            validate_trainjob(bad)


def test_the_pod_a_trainjob_node_runs_is_a_valid_pod():
    """Runtime pod template + the TrainJob's command, args, env and resources, as the Trainer merges them."""
    import kubernetes_validate

    body, pod = sample_body(), copy.deepcopy(pod_spec(runtime_doc()))
    trainer, container = body["spec"]["trainer"], pod["containers"][0]
    container.update(image=trainer["image"], command=trainer["command"], args=trainer["args"])
    container["env"] = container.get("env", []) + trainer["env"]
    for section in ("limits", "requests"):
        container["resources"].setdefault(section, {}).update(trainer["resourcesPerNode"][section])
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "livo-train-run-7-node-0-0"}, "spec": pod}
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert container["command"] == ["torchrun", "-m", "livo.training.launch"]


def test_trainjob_env_references_match_what_the_manifests_ship():
    """The ConfigMap keys and Secret keys the TrainJob references exist in what we deploy (or document)."""
    config_map = yaml.safe_load((MANIFESTS / "base" / "object-store-configmap.yaml").read_text())
    secret = yaml.safe_load((MANIFESTS / "templates" / "object-store-secret.yaml").read_text())
    assert config_map["metadata"]["name"] == jobs.DEFAULT_STORE_CONFIG_MAP
    for item in jobs.store_env():
        ref = item["valueFrom"].get("configMapKeyRef") or item["valueFrom"]["secretKeyRef"]
        if "configMapKeyRef" in item["valueFrom"]:
            assert ref.get("optional") or ref["key"] in config_map["data"], item
        else:
            assert ref["key"] in secret["stringData"], item


@needs_kubectl
@pytest.mark.parametrize("overlay", ["seaweedfs", "minio"])
def test_rendered_runtime_validates_and_no_claim_is_required(overlay):
    docs = render(MANIFESTS / "overlays" / overlay)
    runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
    validate_training_runtime(runtime)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "livo-workspace"]
    assert not [v for v in pod_spec(runtime)["volumes"] if "persistentVolumeClaim" in v]
    assert "emptyDir" in {v["name"]: v for v in pod_spec(runtime)["volumes"]}["workspace"]


@needs_kubectl
def test_workspace_pvc_component_swaps_the_scratch_for_a_claim(tmp_path):
    import kubernetes_validate

    overlay = tmp_path / "with-pvc"
    overlay.mkdir()
    relative = Path(os.path.relpath(MANIFESTS, overlay))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "team-a",
        "resources": [str(relative / "base")], "components": [str(relative / "components" / "workspace-pvc")]}))
    docs = render(overlay)
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    kubernetes_validate.validate(claim, kubernetes_validate.latest_version(), strict=True)
    assert claim["metadata"] == {"name": "livo-workspace", "namespace": "team-a",
                                 "labels": {"app.kubernetes.io/part-of": "livo"}}
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
    validate_training_runtime(runtime)
    volumes = {v["name"]: v for v in pod_spec(runtime)["volumes"]}
    assert volumes["workspace"] == {"name": "workspace", "persistentVolumeClaim": {"claimName": "livo-workspace"}}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"  # the rest of the runtime is untouched
    assert len(pod_spec(runtime)["containers"]) == 1
