"""pipelines/livo_full.py: the committed package is fresh and holds no credential, the pipeline's shape (validation
first; data -> train -> evaluate -> register gated on `passed`; GPU requests and placement only where GPUs work and
from parameters; caching off where results depend on the store; secrets by reference), its parameters, and the
`compile | submit | run` entry points (submit against a fake KFP API server). The end-to-end local run is
tests/pipelines/test_local_run.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_rest import FakeRestServer

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pipelines" / "livo_full.yaml"
LIVO = [sys.executable, "-m", "livo.cli"]
PUSHED_IMAGE = "registry.example.org/team/livo:1.0@sha256:" + "e" * 64
STAGE_PREFIXES = ("run_", "data_", "train_", "eval_", "control_", "registry_", "store_")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that changes the compiled package or reaches a real cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVO_", "KFP_"))}
    return {**env, **extra}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=clean_env(**env), timeout=120)


@pytest.fixture(scope="module")
def spec() -> dict:
    return next(yaml.safe_load_all(PACKAGE.read_text()))


@pytest.fixture(scope="module")
def platform() -> dict:
    docs = list(yaml.safe_load_all(PACKAGE.read_text()))
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_package_is_not_stale():
    result = run(LIVO + ["compile", "--check"])
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stdout


def test_stale_package_is_detected(tmp_path):
    stale = tmp_path / "livo_full.yaml"
    stale.write_text(PACKAGE.read_text().replace("livo-full", "livo-old", 1))
    result = run(LIVO + ["compile", "--check", "--output", str(stale)])
    assert result.returncode == 1
    assert "is stale: run `livo compile`" in result.stderr


def test_compile_never_embeds_credentials_from_the_environment(tmp_path):
    secret, access = "s3cr3t-VALUE-8f1d2c", "ACCESS-5e7a9b"
    out = tmp_path / "p.yaml"
    result = run(LIVO + ["compile", "-o", str(out)], LIVO_S3_ACCESS_KEY=access, LIVO_S3_SECRET_KEY=secret,
                 LIVO_S3_ENDPOINT="http://10.0.0.1:9000", AWS_SECRET_ACCESS_KEY=secret)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert secret not in text and access not in text and "10.0.0.1" not in text
    assert text == PACKAGE.read_text()  # the environment does not change the package at all


def test_committed_package_holds_no_credential_value():
    text = PACKAGE.read_text()
    for pattern in (r"minio123", r"AKIA[0-9A-Z]{16}", r"LIVO_S3_SECRET_KEY\s*[:=]\s*\S", r"secretkey\s*:\s*[^\s{]",
                    r"-----BEGIN [A-Z ]*PRIVATE KEY"):
        assert not re.search(pattern, text), pattern


def test_every_task_gets_the_store_by_reference_only(spec, platform):
    executors = spec["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    for name, config in platform.items():
        secret = config["secretAsEnv"][0]
        assert secret["secretNameParameter"] == {"componentInputParameter": "pipelinechannel--store_secret_name"} \
            or secret["secretNameParameter"]["componentInputParameter"].endswith("store_secret_name"), name
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == {
            "accesskey": "LIVO_S3_ACCESS_KEY", "secretkey": "LIVO_S3_SECRET_KEY"}
        config_map = config["configMapAsEnv"][0]
        assert {m["configMapKey"]: m["envVar"] for m in config_map["keyToEnv"]} == {
            "endpoint": "LIVO_S3_ENDPOINT", "bucket": "LIVO_S3_BUCKET"}
    for executor in executors.values():
        env_names = {e["name"] for e in executor["container"].get("env", [])}
        assert not env_names & {"LIVO_S3_ACCESS_KEY", "LIVO_S3_SECRET_KEY"}


def test_every_executor_uses_the_digest_pinned_livo_image(spec):
    from components._image import PUBLISHED_IMAGE

    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {PUBLISHED_IMAGE}


def test_parameters_are_typed_documented_stage_prefixed(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert len(params) >= 15
    for name, definition in params.items():
        assert name.startswith(STAGE_PREFIXES), f"{name} has no stage prefix"
        assert definition["parameterType"] in ("STRING", "NUMBER_INTEGER", "BOOLEAN", "STRUCT", "LIST",
                                               "NUMBER_DOUBLE"), name
        assert "defaultValue" in definition or definition.get("isOptional"), f"{name} has no default"
        assert "Default" in definition.get("description", ""), f"{name}: description does not cite its default"
    assert params["data_shard_count"]["parameterType"] == "NUMBER_INTEGER"
    assert params["train_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert params["store_secret_name"]["defaultValue"] == "mlpipeline-minio-artifact"


def _dag_tasks(spec) -> dict[str, dict]:
    """Every task of every DAG in the spec, by task name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def _gates_of(spec, task_name: str) -> list[str]:
    """The trigger conditions of every group enclosing `task_name`, innermost first."""
    parents = {}  # component name -> (task that runs it)
    owner = {}  # task name -> component whose DAG holds it
    for component_name, component in [("root", spec["root"]), *spec["components"].items()]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            owner[name] = component_name
            parents[task["componentRef"]["name"]] = (name, task)
    conditions, current = [], owner[task_name]
    while current in parents:
        name, task = parents[current]
        if "condition" in task.get("triggerPolicy", {}):
            conditions.append(task["triggerPolicy"]["condition"])
        current = owner[name]
    return conditions


def _parameter(task: dict, name: str) -> str:
    """A task input as one string: the channel it reads, or the constant it is given."""
    value = task["inputs"]["parameters"][name]
    if "componentInputParameter" in value:
        return value["componentInputParameter"]
    if "taskOutputParameter" in value:
        return f"{value['taskOutputParameter']['producerTask']}.{value['taskOutputParameter']['outputParameterKey']}"
    return str(value["runtimeValue"]["constant"])


def _artifact_sources(spec, task_name: str, input_name: str) -> list[tuple[str, str]]:
    """The (task, output) pairs an input artifact of `task_name` comes from: followed up through the enclosing DAGs'
    inputs and down through DAG outputs (a `dsl.OneOf` lists one source per branch)."""
    owner, runner = {}, {}  # task name -> component whose DAG holds it; component -> task that runs it
    for component_name, component in [("root", spec["root"]), *spec["components"].items()]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            owner[name] = component_name
            runner[task["componentRef"]["name"]] = name
    tasks = _dag_tasks(spec)

    def produced(component_name: str, task: str, key: str) -> list[tuple[str, str]]:
        component = spec["components"][tasks[task]["componentRef"]["name"]]
        if "dag" not in component:
            return [(task, key)]
        selectors = component["dag"]["outputs"]["artifacts"][key]["artifactSelectors"]
        return [pair for s in selectors for pair in produced(component_name, s["producerSubtask"], s["outputArtifactKey"])]

    reference, current = tasks[task_name]["inputs"]["artifacts"][input_name], owner[task_name]
    while "componentInputArtifact" in reference:
        parent = runner[current]
        reference, current = tasks[parent]["inputs"]["artifacts"][reference["componentInputArtifact"]], owner[parent]
    source = reference["taskOutputArtifact"]
    return sorted(produced(current, source["producerTask"], source["outputArtifactKey"]))


def test_the_stages_are_chained_through_typed_artifacts(spec):
    """KFP's lineage graph: merge -> Dataset -> training (either branch) -> Model -> evaluate -> Metrics + HTML ->
    register (which also reads the Dataset and the Model)."""
    trained = [("train-value-encoder", "model"), ("train-value-encoder-2", "model")]
    merged = [("merge-data-shards", "dataset")]
    for name in ("train-value-encoder", "train-value-encoder-2"):
        assert _artifact_sources(spec, name, "dataset") == merged, name
    assert _artifact_sources(spec, "evaluate", "model") == trained
    assert _artifact_sources(spec, "register", "model") == trained
    assert _artifact_sources(spec, "register", "dataset") == merged
    assert _artifact_sources(spec, "register", "metrics") == [("evaluate", "metrics")]
    assert _artifact_sources(spec, "register", "report") == [("evaluate", "report")]
    schema = {(component, kind, name): definition["artifactType"]["schemaTitle"]
              for component in ("comp-merge-data-shards", "comp-train-value-encoder", "comp-evaluate", "comp-register")
              for kind in ("inputDefinitions", "outputDefinitions")
              for name, definition in spec["components"][component].get(kind, {}).get("artifacts", {}).items()}
    assert schema == {
        ("comp-merge-data-shards", "outputDefinitions", "dataset"): "system.Dataset",
        ("comp-merge-data-shards", "outputDefinitions", "metrics"): "system.Metrics",
        ("comp-train-value-encoder", "inputDefinitions", "dataset"): "system.Dataset",
        ("comp-train-value-encoder", "outputDefinitions", "model"): "system.Model",
        ("comp-train-value-encoder", "outputDefinitions", "metrics"): "system.Metrics",
        ("comp-evaluate", "inputDefinitions", "model"): "system.Model",
        ("comp-evaluate", "outputDefinitions", "metrics"): "system.Metrics",
        ("comp-evaluate", "outputDefinitions", "report"): "system.HTML",
        ("comp-register", "inputDefinitions", "dataset"): "system.Dataset",
        ("comp-register", "inputDefinitions", "model"): "system.Model",
        ("comp-register", "inputDefinitions", "metrics"): "system.Metrics",
        ("comp-register", "inputDefinitions", "report"): "system.HTML",
    }


def test_validation_runs_first_and_gates_everything(spec):
    tasks = _dag_tasks(spec)
    validate = tasks["validate-inputs"]
    assert not validate.get("dependentTasks"), "validate-inputs must not wait for anything"
    assert tasks["principles-changed"]["dependentTasks"] == ["validate-inputs"]
    exit_task = spec["root"]["dag"]["tasks"]["record-outcome"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-validate-inputs"]["container"]["resources"]


def test_caching_is_off_where_results_depend_on_the_store(spec):
    tasks = _dag_tasks(spec)
    names = ("validate-inputs", "principles-changed", "record-outcome", "generate-data-shard", "merge-data-shards",
             "train-value-encoder", "train-value-encoder-2", "evaluate", "register")
    for name in names:
        assert not tasks[name].get("cachingOptions", {}).get("enableCache", False), name
    assert set(names) == set(tasks) - {t for t in tasks if t.startswith(("condition-", "for-loop-", "exit-handler-"))}


def test_data_shards_fan_out_behind_the_principles_gate_on_parameterised_gpus(spec, platform):
    tasks = _dag_tasks(spec)
    loop = next(t for t in tasks.values() if t.get("parameterIterator"))
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("validate-inputs-shard_indices")
    assert _gates_of(spec, "generate-data-shard") == [
        "inputs.parameter_values['pipelinechannel--principles-changed-Output'] == true"]
    resources = spec["deploymentSpec"]["executors"]["exec-generate-data-shard"]["container"]["resources"]
    assert "run_accelerator_type" in resources["accelerator"]["resourceType"]
    assert "data_gpus_per_shard" in resources["accelerator"]["resourceCount"]
    placement = platform["exec-generate-data-shard"]
    assert placement["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("data_node_selector")
    assert placement["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("data_tolerations")
    for name in ("exec-validate-inputs", "exec-principles-changed", "exec-merge-data-shards", "exec-register",
                 "exec-record-outcome", "exec-train-value-encoder-2"):
        assert "accelerator" not in spec["deploymentSpec"]["executors"][name]["container"]["resources"], name


def test_training_follows_the_merge_and_branches_on_the_launcher(spec, platform):
    tasks = _dag_tasks(spec)
    pod, trainjob = tasks["train-value-encoder"], tasks["train-value-encoder-2"]
    for task, launcher in ((pod, "pod"), (trainjob, "trainjob")):
        assert _parameter(task, "launcher") == launcher
        assert "dataset_uri" not in task["inputs"]["parameters"]  # the Dataset artifact (above) says where
        assert _parameter(task, "output_uri").endswith("validate-inputs-run_uri']}}/train")
        assert _parameter(task, "principle_set_hash") == "pipelinechannel--validate-inputs-principle_set_hash"
        assert _parameter(task, "config_overrides") == "pipelinechannel--train_config_overrides"
        assert _parameter(task, "gpus_per_node") == "pipelinechannel--train_gpus_per_node"
        assert _parameter(task, "num_nodes") == "pipelinechannel--train_num_nodes"
        assert _parameter(task, "run_id") == "{{$.pipeline_job_uuid}}"
    from components._image import PUBLISHED_IMAGE

    assert _parameter(trainjob, "image") == PUBLISHED_IMAGE  # the TrainJob's nodes run the pipeline's image
    assert _gates_of(spec, "train-value-encoder")[0] == \
        "inputs.parameter_values['pipelinechannel--train_launcher'] == 'pod'"
    assert _gates_of(spec, "train-value-encoder-2")[0] == \
        "!(inputs.parameter_values['pipelinechannel--train_launcher'] == 'pod')"
    for name in ("train-value-encoder", "train-value-encoder-2"):
        assert "principles-changed-Output'] == true" in _gates_of(spec, name)[-1]
    # pod: the GPUs, their placement and a memory-backed /dev/shm; trainjob: a launcher pod that only waits
    resources = spec["deploymentSpec"]["executors"]["exec-train-value-encoder"]["container"]["resources"]
    assert "train_gpus_per_node" in resources["accelerator"]["resourceCount"]
    assert "run_accelerator_type" in resources["accelerator"]["resourceType"]
    placement = platform["exec-train-value-encoder"]
    assert placement["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("train_node_selector")
    assert placement["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("train_tolerations")
    assert placement["emptyDirMounts"][0] == {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi",
                                              "volumeName": "dshm"}
    # the TrainJob's nodes get the run's store and the launcher's timeouts
    for name, channel in (("store_secret_name", "store_secret_name"), ("store_config_map_name", "store_config_map_name"),
                          ("trainjob_timeout_hours", "train_trainjob_timeout_hours"),
                          ("trainjob_start_timeout_minutes", "train_trainjob_start_timeout_minutes"),
                          ("model_source", "run_model_source")):
        assert _parameter(trainjob, name) == f"pipelinechannel--{channel}", name
    assert placement["emptyDirMounts"][1]["volumeName"] == "model-cache"
    assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(platform["exec-train-value-encoder-2"])


def test_evaluation_reads_either_branch_and_gates_registration(spec, platform):
    tasks = _dag_tasks(spec)
    evaluate, register = tasks["evaluate"], tasks["register"]
    branches = next(t for t in tasks.values() if t["componentRef"]["name"] == "comp-condition-branches-4")
    oneofs = spec["components"]["comp-condition-branches-4"]["dag"]["outputs"]["parameters"]
    selected = {key: [s["outputParameterKey"] for s in value["valueFromOneof"]["parameterSelectors"]]
                for key, value in oneofs.items()}
    assert evaluate["dependentTasks"] == ["condition-branches-4"] and branches["dependentTasks"] == ["merge-data-shards"]
    assert "value_encoder_uri" not in evaluate["inputs"]["parameters"]  # the Model artifact (above) says which
    assert _parameter(evaluate, "run_id") == "{{$.pipeline_job_uuid}}"
    output_key = _parameter(register, "training_output_uri").removeprefix("pipelinechannel--condition-branches-4-")
    assert selected[output_key] == ["pipelinechannel--train-value-encoder-output_uri",
                                    "pipelinechannel--train-value-encoder-2-output_uri"]
    # evaluation writes under the run's prefix; registration reads the same place, only when `passed` is true
    assert _parameter(evaluate, "report_uri").endswith("validate-inputs-run_uri']}}/evaluation")
    assert _parameter(register, "evaluation_uri") == _parameter(evaluate, "report_uri")
    assert _gates_of(spec, "register")[0] == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    assert _parameter(evaluate, "config_overrides") == "pipelinechannel--eval_config_overrides"
    assert _parameter(register, "model_name") == "pipelinechannel--registry_model_name"
    assert _parameter(register, "pipeline_spec_sha256") == "pipelinechannel--run_pipeline_spec_sha256"
    assert _parameter(register, "run_name") == "{{$.pipeline_job_name}}"
    # an evaluation that decided no gate registers only when the run says so (default: refused, outcome rejected)
    assert _parameter(register, "allow_ungated") == "pipelinechannel--run_allow_ungated"
    assert spec["root"]["inputDefinitions"]["parameters"]["run_allow_ungated"]["defaultValue"] is False
    resources = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]
    assert "eval_gpus" in resources["accelerator"]["resourceCount"]
    placement = platform["exec-evaluate"]
    assert placement["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("eval_node_selector")
    assert placement["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("eval_tolerations")


# ---------------------------------------------------------------------------------------------- entry points
def test_script_entry_requires_a_known_command_and_local_for_run():
    script = [sys.executable, "pipelines/livo_full.py"]
    assert run(script).returncode == 2
    result = run(script + ["run", "--preset", "tiny"])
    assert result.returncode == 2 and "pass --local" in result.stderr
    result = run(script + ["compile", "--check"])
    assert result.returncode == 0, result.stderr


def test_submit_refuses_the_unpublished_image():
    result = run(LIVO + ["submit", "--host", "http://127.0.0.1:9", "--dry-run"])
    assert result.returncode == 2
    assert "is not a published digest" in result.stderr and "--image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_image_without_a_digest_is_refused_at_the_door():
    for command in (["compile", "-o", "/dev/null"], ["submit", "--dry-run"], ["schedule", "--dry-run", "--cron",
                                                                             "@daily", "--principles", "p.yaml"]):
        result = run(LIVO + command + ["--image", "registry.example.org/team/livo:1.0"])
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip() == ("livo: error: image 'registry.example.org/team/livo:1.0' (from --image) is "
                                         "not pinned by digest; use <registry>/<repo>[:tag]@sha256:<64 hex>, as "
                                         "printed by `make images-push`")


def test_every_task_requests_cpu_and_memory_from_its_stage_parameters_and_retries_where_safe(spec):
    executors = spec["deploymentSpec"]["executors"]
    tasks = _dag_tasks(spec)
    stage_of = {"generate-data-shard": "data", "train-value-encoder": "train", "evaluate": "eval"}
    for name, task in tasks.items():
        if name.startswith(("condition-", "for-loop-", "exit-handler-")):
            continue
        resources = executors[task["componentRef"]["name"].replace("comp-", "exec-", 1)]["container"]["resources"]
        stage = stage_of.get(name, "control")
        assert resources["resourceCpuRequest"] == f"{{{{$.inputs.parameters['pipelinechannel--{stage}_cpu_request']}}}}"
        for key, param in (("resourceCpuLimit", "cpu_limit"), ("resourceMemoryRequest", "memory_request"),
                           ("resourceMemoryLimit", "memory_limit")):
            assert resources[key] == f"{{{{$.inputs.parameters['pipelinechannel--{stage}_{param}']}}}}", (name, key)
        retry = task.get("retryPolicy")
        if name == "validate-inputs":  # bad input fails the same way every time
            assert retry is None
        else:
            assert retry == {"maxRetryCount": 3, "backoffDuration": "60s", "backoffFactor": 2.0,
                             "backoffMaxDuration": "7200s"}, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert (params["train_memory_request"]["defaultValue"], params["control_cpu_request"]["defaultValue"]) == (
        "256Gi", "500m")


def test_model_loading_tasks_cache_models_on_a_volume_and_register_reads_the_model_registry_url(platform, spec):
    for name in ("exec-generate-data-shard", "exec-train-value-encoder", "exec-evaluate"):
        mounts = {m["volumeName"]: m for m in platform[name]["emptyDirMounts"]}
        assert mounts["model-cache"] == {"volumeName": "model-cache", "mountPath": "/var/cache/livo/models",
                                         "sizeLimit": "64Gi"}, name
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][name]["container"]["env"]}
        assert env["LIVO_MODEL_CACHE"] == "/var/cache/livo/models"
    registry = [m for m in platform["exec-register"]["configMapAsEnv"]
                if m["keyToEnv"] == [{"configMapKey": "model_registry_url", "envVar": "LIVO_MODEL_REGISTRY_URL"}]]
    assert len(registry) == 1 and registry[0]["optional"] is True
    assert registry[0]["configMapNameParameter"]["componentInputParameter"].endswith("store_config_map_name")


def test_compile_with_an_image_puts_it_on_every_task_and_the_trainjob(tmp_path):
    out = tmp_path / "p.yaml"
    result = run(LIVO + ["compile", "--image", PUSHED_IMAGE, "-o", str(out)])
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {PUSHED_IMAGE}
    tasks = _dag_tasks(spec)
    assert _parameter(tasks["train-value-encoder-2"], "image") == PUSHED_IMAGE  # the TrainJob's nodes
    assert _parameter(tasks["register"], "image") == PUSHED_IMAGE  # what lineage records
    assert "0" * 64 not in out.read_text()
    # LIVO_IMAGE is the default of --image, and --image wins over it
    other = PUSHED_IMAGE.replace("e" * 64, "f" * 64)
    result = run(LIVO + ["compile", "-o", str(out)], LIVO_IMAGE=other)
    assert result.returncode == 0 and other in out.read_text() and PUSHED_IMAGE not in out.read_text()
    result = run(LIVO + ["compile", "--image", PUSHED_IMAGE, "-o", str(out)], LIVO_IMAGE=other)
    assert result.returncode == 0 and other not in out.read_text()


def test_compile_writes_into_the_checkout_of_the_current_directory(tmp_path):
    import shutil

    checkout = tmp_path / "second-checkout"
    shutil.copytree(REPO / "pipelines", checkout / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "components", checkout / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "pipelines" / "livo_full.yaml").write_text("stale\n")
    before = PACKAGE.read_bytes()
    result = subprocess.run(LIVO + ["compile"], capture_output=True, text=True, cwd=checkout / "pipelines",
                            env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert (checkout / "pipelines" / "livo_full.yaml").read_bytes() == before  # written there, same content
    assert PACKAGE.read_bytes() == before  # the installed checkout was not touched


@pytest.mark.parametrize(("param", "message"), [
    ("data_shard_count=0", "data_shard_count: Input should be greater than or equal to 1"),
    ("train_gpus_per_node=-1", "train_gpus_per_node: Input should be greater than or equal to 0"),
    ("run_schedule_cron=0 3 * * *", "has 5 fields"),
    ("data_shards=4", "unknown pipeline parameter(s) data_shards"),
    ("nonsense", "not of the form name=value"),
])
def test_submit_checks_parameters_before_contacting_kfp(param, message):
    result = run(LIVO + ["submit", "--host", "http://127.0.0.1:9", "--allow-unpublished-image", "-p", param])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


class _FakeKfpRunsApi(FakeRestServer):
    """The two endpoints `livo submit` calls: create an experiment, create a run."""

    def __init__(self):
        super().__init__()
        self.requests: list[tuple[str, str, dict]] = []

    def route(self, method, path, query, body):
        self.requests.append((method, path, body or {}))
        if method == "POST" and path.endswith("/experiments"):
            return 200, {"experiment_id": "exp-1", "display_name": body.get("display_name")}
        if method == "POST":
            return 200, {"run_id": "run-42", "display_name": body.get("display_name")}
        return 200, {}


@pytest.fixture
def fake_kfp():
    with _FakeKfpRunsApi() as server:
        yield server.url, server.requests


def test_submit_creates_a_run_with_the_parameters_and_spec_hash(fake_kfp):
    host, requests = fake_kfp
    result = run(LIVO + ["submit", "--host", host, "--experiment", "livo-test", "--run-name", "r1",
                         "--service-account", "pipeline-runner", "-p", "data_shard_count=16", "-p", "run_preset=sd15"],
                 LIVO_IMAGE=PUSHED_IMAGE)
    assert result.returncode == 0, result.stderr
    assert "submitted run run-42" in result.stdout
    posted = {path: body for method, path, body in requests if method == "POST"}
    assert posted["/apis/v2beta1/experiments"]["display_name"] == "livo-test"
    body = posted["/apis/v2beta1/runs"]
    params = body["runtime_config"]["parameters"]
    assert params["data_shard_count"] == 16 and params["run_preset"] == "sd15"
    assert params["run_pipeline_spec_sha256"].startswith("sha256:")
    assert body["service_account"] == "pipeline-runner" and body["display_name"] == "r1"
    assert set(body["pipeline_spec"]) == {"pipeline_spec", "platform_spec"}  # the secret mappings travel with it
    executors = body["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {PUSHED_IMAGE}


def test_submit_unreachable_host_is_one_clear_line():
    result = run(LIVO + ["submit", "--host", "http://127.0.0.1:9"], LIVO_IMAGE=PUSHED_IMAGE)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("livo: error: submitting to http://127.0.0.1:9 failed")


def test_run_with_an_image_checks_docker_and_the_reference_before_starting_anything(tmp_path):
    runs = tmp_path / "runs"
    result = run(LIVO + ["run", "--preset", "tiny", "--runs-dir", str(runs), "--image", "example.org/livo:1"])
    assert result.returncode == 2 and "is not pinned by digest" in result.stderr
    # This machine has no Docker engine (at most the CLI): one line naming what is missing, and no run started.
    result = run(LIVO + ["run", "--preset", "tiny", "--runs-dir", str(runs), "--image", PUSHED_IMAGE])
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("livo: error: ") and "docker" in line.lower()
    assert not runs.exists() or not any(runs.iterdir())


def test_register_and_the_principles_check_get_the_optional_lineage_signing_key(platform):
    for name in ("exec-register", "exec-principles-changed"):
        optional = [m for m in platform[name]["secretAsEnv"] if m["optional"]]
        assert optional == [{"keyToEnv": [{"secretKey": "lineage_hmac_key", "envVar": "LIVO_LINEAGE_HMAC_KEY"}],
                             "optional": True, "secretNameParameter": {
                                 "componentInputParameter": "pipelinechannel--store_secret_name"}}], name
    assert not [m for m in platform["exec-evaluate"]["secretAsEnv"] if m["optional"]]
