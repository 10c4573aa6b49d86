"""Starting training ranks: torchrun in this pod (one rank per GPU), or a Kubeflow Trainer v2 TrainJob (multi-node).

Used by `livo train --nproc N` and by the `train_value_encoder` KFP component. The TrainJob runs our image on the
`livo-torch-distributed` runtime (manifests/base/training-runtime.yaml: torchrun per node, which DeepSpeed accepts)
and the same entry point, `python -m livo.training.launch`. Everything that talks to Kubernetes goes through a
`kubernetes.client.CustomObjectsApi`/`CoreV1Api` pair passed in, so the waiting logic is testable without a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event

log = get_logger("livo.training.jobs")

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOB_PLURAL = "trainjobs"
DEFAULT_RUNTIME = "livo-torch-distributed"
LAUNCH_MODULE = "livo.training.launch"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def torchrun_command(nproc_per_node: int, launch_args: Sequence[str]) -> list[str]:
    """One node, `nproc_per_node` ranks; `--standalone` picks a free rendezvous port (no collisions)."""
    if nproc_per_node < 1:
        raise ConfigError(f"number of processes per node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc_per_node),
            "-m", LAUNCH_MODULE, *launch_args]


def run_local_ranks(nproc_per_node: int, launch_args: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run the ranks under torchrun in this pod, their logs streaming to ours; returns torchrun's exit code.

    SIGTERM to this process is forwarded to torchrun, which forwards it to the ranks: they checkpoint and exit 143.
    """
    import signal

    command = torchrun_command(nproc_per_node, launch_args)
    child_env = {k: v for k, v in (env or os.environ).items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    log_event(log, "starting ranks", nproc_per_node=nproc_per_node, command=" ".join(command[1:]))
    process = subprocess.Popen(command, env=child_env)
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        process.send_signal(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
        previous = None
    try:
        return process.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------------------------
# Kubeflow Trainer v2


def trainjob_name(run_id: str) -> str:
    """A DNS-1123 name for the TrainJob of pipeline run `run_id` (stable, so a retried task finds its job)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    name = f"livo-train-{cleaned}"[:63].rstrip("-")
    if not _NAME_RE.match(name):
        raise ConfigError(f"cannot build a TrainJob name from run id {run_id!r}; pass a name of lowercase letters, "
                          "digits and '-'")
    return name


def trainjob_body(*, name: str, namespace: str, image: str, launch_args: Sequence[str], num_nodes: int,
                  procs_per_node: int, accelerator_type: str = "nvidia.com/gpu", runtime: str = DEFAULT_RUNTIME,
                  env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob manifest (validated with the Trainer API's pydantic models before it is returned).

    Each node runs `torchrun` through the runtime's torch policy (the controller sets the node count, ranks per node,
    rendezvous address and PET_* variables); our command is the launch module and its arguments.
    """
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    if not _NAME_RE.match(name):
        raise ConfigError(f"TrainJob name {name!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
    if num_nodes < 1 or procs_per_node < 1:
        raise ConfigError(f"num_nodes ({num_nodes}) and procs_per_node ({procs_per_node}) must be >= 1")
    trainer: dict[str, Any] = {
        "image": image,
        "command": ["python", "-m", LAUNCH_MODULE],
        "args": [str(a) for a in launch_args],
        "numNodes": num_nodes,
        "numProcPerNode": procs_per_node,
        "resourcesPerNode": {"limits": {accelerator_type: str(procs_per_node)},
                             "requests": {accelerator_type: str(procs_per_node)}},
    }
    if env:
        trainer["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    body = {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "livo", **(labels or {})}},
        "spec": {"runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime", "name": runtime},
                 "trainer": trainer},
    }
    try:
        TrainerV1alpha1TrainJob.from_dict(body)
    except Exception as exc:  # pydantic ValidationError: a bug in this function, reported with the field
        raise ConfigError(f"TrainJob body does not validate against the Trainer API: {exc}") from exc
    return body


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def run_trainjob(body: dict[str, Any], *, custom_api, core_api=None, poll_seconds: float = 10.0,
                 timeout_seconds: float | None = None, echo: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Create the TrainJob (or adopt the one a previous attempt created), stream the logs of its first node while it
    runs, and return its final status. Raises LivoError when it fails or times out."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    args = (TRAINER_GROUP, TRAINER_VERSION, namespace, TRAINJOB_PLURAL)
    try:
        custom_api.create_namespaced_custom_object(*args, body)
        log_event(log, "trainjob created", name=name, namespace=namespace)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:  # 409: it exists — a retried task adopts its TrainJob
            raise LivoError(f"cannot create TrainJob {namespace}/{name}: {exc}; check the Trainer is installed and the "
                            "pipeline's service account may create trainjobs") from exc
        log_event(log, "trainjob exists, adopting it", name=name, namespace=namespace)
    started = time.monotonic()
    printed = 0
    while True:
        job = custom_api.get_namespaced_custom_object(*args, name)
        status = job.get("status") or {}
        if core_api is not None:
            printed = _echo_new_log_lines(core_api, namespace, name, printed, echo)
        if _condition(status, "Complete"):
            log_event(log, "trainjob complete", name=name)
            return status
        failed = _condition(status, "Failed")
        if failed:
            raise LivoError(f"TrainJob {namespace}/{name} failed: {failed.get('reason', '')} {failed.get('message', '')}"
                            f"; see `kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name}`".strip())
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise LivoError(f"TrainJob {namespace}/{name} did not finish within {timeout_seconds:.0f} s")
        sleep(poll_seconds)


def _echo_new_log_lines(core_api, namespace: str, name: str, printed: int, echo: Callable[[str], None]) -> int:
    """Print the first node's log lines not printed yet; returns how many have been printed."""
    try:
        pods = core_api.list_namespaced_pod(
            namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0")
        items = getattr(pods, "items", None) or []
        if not items:
            return printed
        text = core_api.read_namespaced_pod_log(items[0].metadata.name, namespace)
    except Exception:  # logs are best-effort: the pod may not exist yet or be gone
        return printed
    lines = text.splitlines()
    for line in lines[printed:]:
        echo(line)
    return max(printed, len(lines))


def current_namespace() -> str:
    """The namespace of this pod (service-account mount), else `default`."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else "default"


def copy_value_encoder(output_uri: str, target_dir: str | Path) -> dict[str, Any]:
    """Copy the finished run's value encoder into `target_dir`; returns the run's result record.

    Reads `result.json` (written last by rank 0), so an unfinished run is refused rather than half-copied.
    """
    from livo.training.checkpoint import RESULT_FILE, VALUE_ENCODER_DIR, open_run_output, sha256_file

    output = open_run_output(output_uri)
    result = output.get_json(RESULT_FILE)
    if not result:
        raise LivoError(f"{output.uri} has no {RESULT_FILE}: the training run did not finish")
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    expected = result["value_encoder"]["files"]
    for relpath, digest in expected.items():
        destination = target / relpath
        output.fetch_file(f"{VALUE_ENCODER_DIR}/{relpath}", destination)
        if sha256_file(destination) != digest:
            raise LivoError(f"{output.uri}/{VALUE_ENCODER_DIR}/{relpath} does not match the digest in {RESULT_FILE}")
    return result


# --------------------------------------------------------------------------------------------------------------------
# What the KFP component runs


def launch_arguments(*, dataset_uri: str, output_uri: str, preset: str = "", model_source: str = "",
                     principle_set_hash: str = "", overrides: Sequence[str] = (), resume: bool = True) -> list[str]:
    """The arguments of `python -m livo.training.launch` for a pipeline run."""
    args = ["--dataset", dataset_uri, "--output", output_uri]
    if preset:
        args += ["--preset", preset]
    if model_source:
        args += ["--model", model_source]
    if principle_set_hash:
        args += ["--expected-principle-set-hash", principle_set_hash]
    if resume:
        args.append("--resume")
    return args + [str(item) for item in overrides]


def validate_launch_arguments(launch_args: Sequence[str], world_size: int) -> None:
    """Parse and validate the config in this process (no model, no dataset) so bad input fails before any rank or
    TrainJob starts."""
    from livo.training.launch import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(list(launch_args)))
    config.batch_layout(world_size)


def run_training(*, launcher: str, launch_args: Sequence[str], procs_per_node: int = 1, num_nodes: int = 1,
                 image: str = "", run_id: str = "", accelerator_type: str = "nvidia.com/gpu",
                 runtime: str = DEFAULT_RUNTIME, namespace: str = "", custom_api=None, core_api=None) -> None:
    """Train with `launcher` = `pod` (torchrun here, `procs_per_node` ranks) or `trainjob` (Kubeflow Trainer)."""
    if launcher not in ("pod", "trainjob"):
        raise ConfigError(f"unknown launcher {launcher!r}; use pod or trainjob")
    if launcher == "pod" and num_nodes != 1:
        raise ConfigError(f"launcher=pod runs on one node, but num_nodes={num_nodes}; use launcher=trainjob")
    validate_launch_arguments(launch_args, world_size=max(1, procs_per_node) * max(1, num_nodes))
    if launcher == "pod":
        code = run_local_ranks(max(1, procs_per_node), launch_args)
        if code == 143:
            raise LivoError("training was stopped by SIGTERM after saving a checkpoint; retry the task to resume it")
        if code != 0:
            raise LivoError(f"training ranks failed (torchrun exit code {code}); see the log above")
        return
    if not image:
        raise ConfigError("launcher=trainjob needs the container image for the TrainJob")
    if custom_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        custom_api, core_api = client.CustomObjectsApi(), client.CoreV1Api()
    body = trainjob_body(name=trainjob_name(run_id or f"{int(time.time())}"), namespace=namespace or current_namespace(),
                         image=image, launch_args=launch_args, num_nodes=num_nodes, procs_per_node=procs_per_node,
                         accelerator_type=accelerator_type, runtime=runtime)
    run_trainjob(body, custom_api=custom_api, core_api=core_api)
