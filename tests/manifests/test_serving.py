"""manifests/overlays/serving and serving-cpu: the KServe InferenceService that runs `livo serve`, validated strictly
against the vendored KServe v1beta1 CRD schema (schemas/kserve_inferenceservice_v1beta1.yaml: unknown fields,
missing required fields and wrong types fail with their path), and checked against what the rest of livo ships: the
pipeline's image, the object-store ConfigMap and Secret, the server's routes, port and queue bound."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from livo.errors import ConfigError
from livo.images import IMAGE_REPOSITORY, PUBLISHED_IMAGE, is_digest_pinned
from livo.k8s_schema import custom_resource_problems, validate_custom_resource

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SERVING = MANIFESTS / "overlays" / "serving"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "kserve_inferenceservice_v1beta1.yaml"
KSERVE_API = "KServe v0.15 serving.kserve.io/v1beta1"
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")
ISVC_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's webhook (IsvcNameFmt)


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def render(directory: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def shipped_isvc() -> dict:
    """The InferenceService as committed (no kustomize needed)."""
    return yaml.safe_load((SERVING / "inferenceservice.yaml").read_text())


def container(isvc: dict) -> dict:
    (only,) = isvc["spec"]["predictor"]["containers"]
    return only


def test_vendored_schema_names_its_source_and_commit():
    header = [line for line in SCHEMA_FILE.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert re.search(r"source: https://github\.com/kserve/kserve/blob/[0-9a-f]{40}/config/crd/full/"
                     r"serving\.kserve\.io_inferenceservices\.yaml", text), text
    assert "release: v0.15.0" in text and "Trimmed" in text


def test_shipped_inferenceservice_validates_and_every_problem_is_named(schema):
    validate_custom_resource(shipped_isvc(), schema, KSERVE_API)
    bad = shipped_isvc()
    predictor = bad["spec"]["predictor"]
    predictor["minReplica"] = 1  # misspelt (minReplicas)
    predictor["timeout"] = "300"  # a string where the CRD wants an integer
    container(bad)["resources"]["limitz"] = {"memory": "1Gi"}  # misspelt (limits)
    container(bad)["readinessProbe"]["httpGet"]["port"] = [8080]  # int-or-string, not a list
    del container(bad)["env"][0]["name"]  # required
    bad["metadata"]["label"] = {"a": "b"}  # ObjectMeta is checked too
    with pytest.raises(ConfigError) as caught:
        validate_custom_resource(bad, schema, KSERVE_API)
    message = str(caught.value)
    assert message.startswith(f"InferenceService livo does not validate against the {KSERVE_API} API: ")
    for expected in ("unknown field spec.predictor.minReplica",
                     "spec.predictor.timeout: '300' is not of type 'integer'",
                     "unknown field spec.predictor.containers[0].resources.limitz",
                     "spec.predictor.containers[0].readinessProbe.httpGet.port: [8080]",
                     "missing required field spec.predictor.containers[0].env[0].name",
                     "unknown field metadata.label"):
        assert expected in message, (expected, message)


def test_trimmed_parts_of_the_schema_are_refused_by_name(schema):
    bad = shipped_isvc()
    bad["spec"]["transformer"] = {"containers": [{"name": "t", "image": "x"}]}
    problems = custom_resource_problems(bad, schema)
    assert len(problems) == 1 and problems[0].startswith("spec.transformer: not in the vendored schema"), problems


def test_the_validator_accepts_only_what_the_crd_declares(schema):
    """Every object of the CRD is closed unless it opts into unknown fields; maps (labels, resources) stay open."""
    ok = shipped_isvc()
    ok["metadata"]["labels"] = {"team": "ml"}
    container(ok)["resources"]["limits"]["example.com/fpga"] = "1"  # resource maps take any name
    assert custom_resource_problems(ok, schema) == []
    empty = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"},
             "spec": {}}
    assert custom_resource_problems(empty, schema) == ["missing required field spec.predictor"]
    del empty["metadata"]["name"]
    assert "missing required field metadata.name" in custom_resource_problems(empty, schema)


def test_predictor_runs_livo_serve_on_one_gpu_in_the_pipelines_image():
    isvc = shipped_isvc()
    assert ISVC_NAME_RE.match(isvc["metadata"]["name"])
    main = container(isvc)
    assert main["name"] == "kserve-container"  # KServe's name for a custom predictor's container
    assert main["image"] == PUBLISHED_IMAGE  # one image reference everywhere (livo/images.py)
    assert main["command"] == ["livo"] and main["args"][:2] == ["serve", "livo-sd15@latest"]
    args = main["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    # a pod restarted after the principles file was edited (how retraining starts) must still load its version
    assert args[args.index("--verify") + 1] == "contents"
    port = int(args[args.index("--port") + 1])
    assert main["ports"] == [{"name": "http1", "containerPort": port, "protocol": "TCP"}]
    resources = main["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_probes_use_kserves_health_routes_on_the_serving_port():
    main = container(shipped_isvc())
    port = main["ports"][0]["containerPort"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    startup = main["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # loading SD v1.5 is not a dead server


def test_object_store_comes_by_reference_from_what_the_pipeline_uses():
    """Same env names as every pipeline task, from the ConfigMap manifests/base ships and the Secret the pipeline's
    store_secret_name defaults to; no literal credential."""
    config_map = yaml.safe_load((MANIFESTS / "base" / "object-store-configmap.yaml").read_text())
    secret = yaml.safe_load((MANIFESTS / "templates" / "object-store-secret.yaml").read_text())
    package = (REPO / "pipelines" / "livo_full.yaml").read_text()
    default_secret = re.search(r"store_secret_name: str \[Default: '([^']+)'\]", package).group(1)
    env = {e["name"]: e for e in container(shipped_isvc())["env"]}
    refs = {name: e["valueFrom"] for name, e in env.items() if "valueFrom" in e}
    assert {n: (r["configMapKeyRef"]["name"], r["configMapKeyRef"]["key"]) for n, r in refs.items()
            if "configMapKeyRef" in r} == {"LIVO_S3_ENDPOINT": (config_map["metadata"]["name"], "endpoint"),
                                           "LIVO_S3_BUCKET": (config_map["metadata"]["name"], "bucket")}
    assert {"endpoint", "bucket"} <= set(config_map["data"])
    secret_refs = {n: r["secretKeyRef"] for n, r in refs.items() if "secretKeyRef" in r}
    assert {n: (r["name"], r["key"]) for n, r in secret_refs.items() if not r.get("optional")} == {
        "LIVO_S3_ACCESS_KEY": (default_secret, "accesskey"), "LIVO_S3_SECRET_KEY": (default_secret, "secretkey")}
    assert set(secret["stringData"]) == {"accesskey", "secretkey"}
    assert secret_refs["LIVO_LINEAGE_HMAC_KEY"] == {"name": default_secret, "key": "lineage_hmac_key",
                                                    "optional": True}
    assert not [n for n, e in env.items() if re.search(r"KEY|SECRET|TOKEN|PASSWORD", n) and "value" in e]


def test_model_cache_is_a_pod_local_empty_dir():
    isvc = shipped_isvc()
    main = container(isvc)
    env = {e["name"]: e.get("value") for e in main["env"]}
    (volume,) = isvc["spec"]["predictor"]["volumes"]
    (mount,) = main["volumeMounts"]
    assert mount["name"] == volume["name"] and "emptyDir" in volume and volume["emptyDir"]["sizeLimit"]
    assert env["LIVO_MODEL_CACHE"].startswith(mount["mountPath"] + "/")
    assert env["LIVO_CACHE_DIR"] == mount["mountPath"]


def test_replicas_concurrency_and_timeout_bound_the_queue():
    predictor = shipped_isvc()["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]  # a GPU pod never cold-starts a request
    assert predictor["scaleMetric"] == "concurrency" and 0 < predictor["scaleTarget"] <= predictor[
        "containerConcurrency"]
    assert predictor["containerConcurrency"] > 0 and predictor["timeout"] >= 60


def test_container_concurrency_fits_the_servers_own_queue():
    """Knative never hands a pod more requests than `livo serve` queues (beyond its queue it answers 503)."""
    serving_config = pytest.importorskip("livo.serving.config")
    fields = serving_config.ServeConfig.model_fields
    predictor = shipped_isvc()["spec"]["predictor"]
    assert predictor["containerConcurrency"] <= fields["queue_size"].default
    args = container(shipped_isvc())["args"]
    assert int(args[args.index("--port") + 1]) == fields["port"].default


def test_predictor_arguments_parse_against_livo_serve():
    from livo.cli import build_parser

    parser = build_parser()
    commands = next((a.choices for a in parser._actions if getattr(a, "choices", None)), {})  # noqa: SLF001
    if "serve" not in commands:
        pytest.skip("`livo serve` is not in the CLI yet")
    for args in (container(shipped_isvc())["args"], ["serve", "livo-toy@latest", "--host", "0.0.0.0"]):
        parsed = parser.parse_args(args)  # SystemExit (status 2) on an unknown flag
        assert callable(parsed.func)


@needs_kubectl
@pytest.mark.parametrize("overlay", ["serving", "serving-cpu"])
def test_overlay_renders_one_valid_inferenceservice(overlay, schema):
    (isvc,) = render(MANIFESTS / "overlays" / overlay)
    validate_custom_resource(isvc, schema, KSERVE_API)
    assert isvc["metadata"]["namespace"] == "kubeflow"  # beside livo-object-store and mlpipeline-minio-artifact
    assert isvc["metadata"]["labels"] == {"app.kubernetes.io/part-of": "livo"}
    assert ISVC_NAME_RE.match(isvc["metadata"]["name"])


@needs_kubectl
def test_cpu_overlay_serves_the_toy_model_without_a_gpu():
    (isvc,) = render(MANIFESTS / "overlays" / "serving-cpu")
    (gpu,) = render(SERVING)
    main = container(isvc)
    assert isvc["metadata"]["name"] == "livo-toy"  # can run beside the GPU service
    assert main["args"][:2] == ["serve", "livo-toy@latest"]
    cuda_tag = PUBLISHED_IMAGE.split("@")[0]  # <repository>:<version>-cuda
    assert main["image"].startswith(cuda_tag.replace("-cuda", "-cpu") + "@")  # images/Dockerfile.cpu, same release
    assert main["image"].startswith(IMAGE_REPOSITORY + ":") and is_digest_pinned(main["image"])
    assert not [k for section in main["resources"].values() for k in section if k.startswith("nvidia.com/")]
    assert isvc["spec"]["predictor"]["maxReplicas"] == 1
    # everything else is the GPU service's: probes, env, security, port
    for key in ("env", "readinessProbe", "livenessProbe", "startupProbe", "securityContext", "ports"):
        assert main[key] == container(gpu)[key], key


@needs_kubectl
def test_a_rollout_overlay_pins_a_version_with_a_canary(tmp_path, schema):
    """What docs/operations.md shows for a gradual roll: an overlay of one's own on manifests/overlays/serving."""
    overlay = tmp_path / "livo-sd15-v3"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(SERVING, overlay)],
        "patches": [{"target": {"kind": "InferenceService", "name": "livo"}, "patch": yaml.safe_dump([
            {"op": "replace", "path": "/spec/predictor/containers/0/args/1", "value": "livo-sd15@v3"},
            {"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": 10}])}]}))
    (isvc,) = render(overlay)
    validate_custom_resource(isvc, schema, KSERVE_API)
    assert container(isvc)["args"][:2] == ["serve", "livo-sd15@v3"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["canaryTrafficPercent"] = "10%"
    with pytest.raises(ConfigError, match=r"spec\.predictor\.canaryTrafficPercent: '10%' is not of type"):
        validate_custom_resource(broken, schema, KSERVE_API)
