"""manifests/: every overlay renders with `kubectl kustomize`, validates strictly against the Kubernetes schemas (the
Trainer's TrainingRuntime against the kubeflow_trainer_api models, KServe's InferenceService against the vendored CRD
schema in schemas/), and meets our policies: resources set, images pinned by digest (never `:latest`), non-root, no
plaintext secrets. The serving overlays' own checks are in test_serving.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from livo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
SECRET_NAME_RE = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_?KEY|API_?KEY|CREDENTIAL)", re.I)
CRD_KINDS = {"TrainingRuntime", "ClusterTrainingRuntime"}
SERVING_OVERLAYS = {"serving", "serving-cpu"}  # the InferenceService alone, deployed beside a pipeline overlay
KSERVE_SCHEMA = Path(__file__).parent / "schemas" / "kserve_inferenceservice_v1beta1.yaml"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")


def render(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a workload or a Trainer runtime."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec["template"]["spec"]]
    if kind == "Pod":
        return [spec]
    if kind in CRD_KINDS:
        return [job["template"]["spec"]["template"]["spec"] for job in spec["template"]["spec"]["replicatedJobs"]]
    if kind == "InferenceService":  # each component holds its pod spec's fields inline
        return [component for component in (spec.get(name) for name in ("predictor", "transformer", "explainer"))
                if component and "containers" in component]
    return []


def policy_violations(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret" and any((doc.get("data") or {}).values()) | any(
                (doc.get("stringData") or {}).values()):
            problems.append(f"{where}: a Secret with values (create secrets in the cluster, never in manifests)")
        for pod in pod_specs(doc):
            pod_ctx = pod.get("securityContext", {})
            for container in pod.get("initContainers", []) + pod["containers"]:
                cwhere = f"{where} container {container['name']}"
                image = container.get("image", "")
                if image.endswith(":latest") or ":latest@" in image:
                    problems.append(f"{cwhere}: image uses :latest")
                if not DIGEST_RE.search(image):
                    problems.append(f"{cwhere}: image {image!r} is not pinned by digest")
                resources = container.get("resources", {})
                for section, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                    if key not in resources.get(section, {}):
                        problems.append(f"{cwhere}: resources.{section}.{key} not set")
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser", 0) == 0:
                    problems.append(f"{cwhere}: not forced non-root (runAsNonRoot true and a non-zero runAsUser)")
                if container.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
                for env in container.get("env", []):
                    if SECRET_NAME_RE.search(env["name"]) and "value" in env:
                        problems.append(f"{cwhere}: env {env['name']} holds a plaintext value; use secretKeyRef")
    return problems


def validate_training_runtime(doc: dict[str, Any]) -> None:
    """Strict check of a Trainer runtime: livo.k8s_schema rejects any field the Trainer API models do not declare;
    its pod templates are validated as Pods by kubernetes-validate."""
    import kubernetes_validate

    from livo.k8s_schema import validate_training_runtime as validate_against_trainer_api

    validate_against_trainer_api(doc)
    for pod in pod_specs(doc):
        pod_doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime-template"}, "spec": pod}
        kubernetes_validate.validate(pod_doc, kubernetes_validate.latest_version(), strict=True)


def test_every_overlay_is_found():
    assert {p.name for p in OVERLAYS} >= {"seaweedfs", "minio"} | SERVING_OVERLAYS


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_validates_and_meets_policy(overlay):
    import kubernetes_validate

    from livo.k8s_schema import validate_custom_resource

    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    if overlay.name in SERVING_OVERLAYS:
        assert kinds == {"InferenceService"}
    else:
        assert {"ConfigMap", "Role", "RoleBinding", "TrainingRuntime"} <= kinds
    assert "livo-workspace" not in {d["metadata"]["name"] for d in docs}  # no RWX claim unless the component asks
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            validate_training_runtime(doc)
        elif doc["kind"] == "InferenceService":
            validate_custom_resource(doc, yaml.safe_load(KSERVE_SCHEMA.read_text()), "KServe v0.15")
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert policy_violations(docs) == []
    namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"resources spread over namespaces {namespaces}"


@needs_kubectl
def test_seaweedfs_overlay_points_at_kfps_store_with_kfps_secret():
    docs = render(MANIFESTS / "overlays" / "seaweedfs")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "livo-object-store")
    assert config["metadata"]["namespace"] == "kubeflow"
    assert config["data"] == {"endpoint": "http://seaweedfs.kubeflow.svc.cluster.local:9000", "bucket": "mlpipeline"}
    assert not [d for d in docs if d["kind"] in ("Secret", "Deployment")], "KFP owns the store and its secret"
    runtime = next(d for d in docs if d["kind"] == "TrainingRuntime")
    # the TrainJob body carries the run's Secret/ConfigMap (tests/training/test_jobs.py); the runtime names none
    assert [e for e in pod_specs(runtime)[0]["containers"][0]["env"] if "valueFrom" in e] == []


@needs_kubectl
def test_minio_overlay_deploys_pinned_minio_and_uses_its_own_secret():
    docs = render(MANIFESTS / "overlays" / "minio")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    image = pod_specs(deployment)[0]["containers"][0]["image"]
    assert image.startswith("docker.io/minio/minio:RELEASE.2025-04-22T22-12-26Z@sha256:")
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["endpoint"] == "http://livo-minio.livo.svc.cluster.local:9000"
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for d in docs for pod in pod_specs(d)
                   for c in pod["containers"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_refs == {"livo-object-store"}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": "livo"}]


@needs_kubectl
def test_rbac_allows_trainjobs_pods_and_logs():
    docs = render(MANIFESTS / "overlays" / "seaweedfs")
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    for needed in [("trainer.kubeflow.org", "trainjobs", "create"), ("trainer.kubeflow.org", "trainjobs", "watch"),
                   ("trainer.kubeflow.org", "trainjobs", "delete"), ("", "pods", "list"), ("", "pods/log", "get")]:
        assert needed in granted
    assert not any(v in ("*", "escalate", "bind") for _, _, v in granted)


def test_training_runtime_uses_the_components_image():
    from components._image import PUBLISHED_IMAGE

    runtime = yaml.safe_load((MANIFESTS / "base" / "training-runtime.yaml").read_text())
    assert pod_specs(runtime)[0]["containers"][0]["image"] == PUBLISHED_IMAGE


def test_secret_template_holds_no_values_and_is_not_deployed():
    import kubernetes_validate

    template = yaml.safe_load((MANIFESTS / "templates" / "object-store-secret.yaml").read_text())
    kubernetes_validate.validate(template, kubernetes_validate.latest_version(), strict=True)
    assert set(template["stringData"]) == {"accesskey", "secretkey"}
    assert all(value == "" for value in template["stringData"].values())
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not [r for r in resources if "templates" in r], f"{kustomization} deploys the secret template"


def test_policy_check_catches_each_violation():
    bad = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
        "spec": {"template": {"spec": {"containers": [{
            "name": "c", "image": "example.org/app:latest",
            "env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "plain"}],
        }]}}},
    }
    leaked = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"secretkey": "x"}}
    problems = "\n".join(policy_violations([bad, leaked]))
    for expected in (":latest", "not pinned by digest", "resources.requests.cpu", "resources.limits.memory",
                     "not forced non-root", "allowPrivilegeEscalation", "AWS_SECRET_ACCESS_KEY holds a plaintext",
                     "Secret/s: a Secret with values"):
        assert expected in problems


def test_training_runtime_unknown_field_is_rejected():
    runtime = yaml.safe_load((MANIFESTS / "base" / "training-runtime.yaml").read_text())
    validate_training_runtime(runtime)
    runtime["spec"]["mlPolicy"]["torch"]["numProcsPerNode"] = 8  # misspelt field
    with pytest.raises(ConfigError, match=r"spec\.mlPolicy\.torch\.numProcsPerNode"):
        validate_training_runtime(runtime)
