"""manifests/components/model-registry: the upstream Model Registry manifests pinned to one commit, and the patch
that gives the pipeline's register task LIVO_MODEL_REGISTRY_URL through livo's ConfigMap. The upstream manifests
cannot be fetched offline, so the patch is rendered for real with the remote resource set aside."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "manifests" / "components" / "model-registry"
KUBECTL = shutil.which("kubectl")
UPSTREAM_RE = re.compile(r"^https://github\.com/kubeflow/model-registry/manifests/kustomize/overlays/db\?ref=[0-9a-f]{40}$")


def test_upstream_manifests_are_pinned_to_a_commit():
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    remote = [r for r in component["resources"] if r.startswith("http")]
    assert len(remote) == 1 and UPSTREAM_RE.match(remote[0]), remote


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")
def test_component_sets_the_registry_url_that_register_reads(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", manifests)
    component_file = manifests / "components" / "model-registry" / "kustomization.yaml"
    component = yaml.safe_load(component_file.read_text())
    component["resources"] = [r for r in component["resources"] if not r.startswith("http")]
    component_file.write_text(yaml.safe_dump(component))
    overlay = manifests / "overlays" / "seaweedfs-with-registry"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../seaweedfs"], "components": ["../../components/model-registry"]}))
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    import kubernetes_validate

    kubernetes_validate.validate(next(d for d in docs if d["kind"] == "ConfigMap"),
                                 kubernetes_validate.latest_version(), strict=True)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "livo-object-store")
    assert config["data"]["model_registry_url"] == "http://model-registry-service:8080"
    assert config["metadata"]["namespace"] == "kubeflow"  # beside the upstream service the overlay deploys


def test_register_task_maps_the_key_to_the_variable_the_client_reads():
    from livo.registry.model_registry import ENV_URL

    package = list(yaml.safe_load_all((REPO / "pipelines" / "livo_full.yaml").read_text()))
    maps = package[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-register"]["configMapAsEnv"]
    assert {"configMapKey": "model_registry_url", "envVar": ENV_URL} in [m for c in maps for m in c["keyToEnv"]]
