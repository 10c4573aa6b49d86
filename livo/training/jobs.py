"""Starting training ranks: torchrun in this pod (one rank per GPU), or a Kubeflow Trainer v2 TrainJob (multi-node).

Used by `livo train --nproc N` and by the `train_value_encoder` KFP component. The TrainJob runs our image on the
`livo-torch-distributed` runtime (manifests/base/training-runtime.yaml). The Trainer's torch policy only injects
`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR` and `PET_MASTER_PORT`; it does not wrap the
command, so the TrainJob's command is `torchrun -m livo.training.launch`, which reads those variables as its defaults.
Everything that talks to Kubernetes goes through a `kubernetes.client.CustomObjectsApi`/`CoreV1Api` pair passed in,
so the waiting logic is testable without a cluster.
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
DEFAULT_STORE_SECRET = "mlpipeline-minio-artifact"
DEFAULT_STORE_CONFIG_MAP = "livo-object-store"
DEFAULT_TIMEOUT_SECONDS = 48 * 3600.0      # a TrainJob running longer than this is reported and left for a human
DEFAULT_START_TIMEOUT_SECONDS = 20 * 60.0  # no pod running by then: image pull, scheduling or config problem
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_OBJECT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
_MISSING_REF_RE = re.compile(r'(secret|configmap)s? "([^"]+)" not found', re.I)


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as livo.training.trainer.PREEMPTED_EXIT_CODE (not imported: torch)
PREEMPTED_MESSAGE = "training stopped by SIGTERM after saving a checkpoint; rerun with --resume"


class TrainingPreempted(LivoError):
    """The ranks were stopped by SIGTERM (they save a checkpoint first); the CLI exits 143 so a retry resumes."""

    exit_code = PREEMPTED_EXIT_CODE


def torchrun_command(nproc_per_node: int, launch_args: Sequence[str]) -> list[str]:
    """One node, `nproc_per_node` ranks; `--standalone` picks a free rendezvous port (no collisions).

    torchrun runs through this module's `torchrun_main`, which turns torchrun's way of ending on a signal (a
    `SignalException` traceback, exit 1) into the exit status of the signal (143 for SIGTERM)."""
    if nproc_per_node < 1:
        raise ConfigError(f"number of processes per node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "livo.training.jobs", "--standalone", "--nproc_per_node", str(nproc_per_node),
            "-m", LAUNCH_MODULE, *launch_args]


def torchrun_main(argv: Sequence[str]) -> int:
    """`torch.distributed.run` with exit codes instead of tracebacks: 128 + N when torchrun got signal N (it has
    forwarded it to the ranks and waited for them), 143 when every failed rank exited 143 (preempted; checkpoint
    saved), the ranks' common exit code when they all failed alike (2: bad input), else 1. The ranks' own errors
    are on stderr already; this adds one log line per failed rank."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as run_torchrun

    try:
        run_torchrun(list(argv))
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        return _ranks_exit_code({rank: failure.exitcode for rank, failure in exc.failures.items()})
    return 0


def _ranks_exit_code(exit_codes: dict[int, int]) -> int:
    """One exit code for the failed ranks (`rank -> exit code`, negative = killed by that signal)."""
    import signal

    for rank, code in sorted(exit_codes.items()):
        cause = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else None
        log_event(log, "rank failed", rank=rank, exit_code=code, **({"cause": cause} if cause else {}))
    codes = {128 - code if code < 0 else code for code in exit_codes.values()}  # -15 (killed by SIGTERM) -> 143
    if codes == {PREEMPTED_EXIT_CODE}:
        return PREEMPTED_EXIT_CODE
    if len(codes) == 1 and 0 < next(iter(codes)) < 128:
        return next(iter(codes))
    return 1


def run_local_ranks(nproc_per_node: int, launch_args: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run the ranks under torchrun in this pod, their logs streaming to ours; returns 0 when they finished.

    SIGTERM to this process is forwarded to torchrun, which forwards it to the ranks: they checkpoint and exit; this
    then raises `TrainingPreempted` (exit code 143, so a retried task resumes). Ranks that refused their input raise
    `ConfigError` (2), any other failure `LivoError` (1); the ranks' own messages are in the log above.
    """
    import signal

    command = torchrun_command(nproc_per_node, launch_args)
    child_env = {k: v for k, v in (env or os.environ).items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    log_event(log, "starting ranks", nproc_per_node=nproc_per_node, command=" ".join(command[1:]))
    process = subprocess.Popen(command, env=child_env)
    previous = signal.getsignal(signal.SIGTERM)
    terminated = False

    def forward(signum, frame):
        nonlocal terminated
        terminated = True
        process.send_signal(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
        previous = None
    try:
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too (same process group): let it stop the ranks
            process.wait()
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return _launcher_outcome(code, terminated)


def _launcher_outcome(code: int, terminated: bool) -> int:
    """Translate torchrun's exit status (negative: killed by that signal) into 0 or the matching livo error."""
    import signal

    if code == 0:
        return 0
    if code in (PREEMPTED_EXIT_CODE, -signal.SIGTERM) or (terminated and code in (1, -signal.SIGKILL)):
        raise TrainingPreempted(PREEMPTED_MESSAGE)
    if code == ConfigError.exit_code:
        raise ConfigError("the training ranks refused their input (exit code 2); their error is in the log above")
    if code == 128 + signal.SIGINT or code == -signal.SIGINT:
        raise KeyboardInterrupt
    detail = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exit code {code}"
    raise LivoError(f"training ranks failed (torchrun {detail}); see the log above")


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


def trainjob_command() -> list[str]:
    """What each TrainJob node runs: torchrun, which takes the node count, processes per node, node rank and the
    rendezvous address from the `PET_*` variables the Trainer's torch policy injects (static rendezvous on node 0).
    The Trainer does not wrap a TrainJob's command in torchrun itself; without it every node would train alone."""
    return ["torchrun", "-m", LAUNCH_MODULE]


def store_env(store_secret_name: str = DEFAULT_STORE_SECRET,
              store_config_map_name: str = DEFAULT_STORE_CONFIG_MAP) -> list[dict[str, Any]]:
    """The object-store (and optional model-registry) settings of the TrainJob's pods, as env references: credentials
    from the Secret (keys accesskey/secretkey), endpoint and bucket from the ConfigMap (keys endpoint/bucket)."""
    def secret(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": store_secret_name, "key": key}}

    def config(key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": store_config_map_name, "key": key}
        if optional:
            ref["optional"] = True
        return {"configMapKeyRef": ref}

    return [
        {"name": "LIVO_S3_ENDPOINT", "valueFrom": config("endpoint")},
        {"name": "LIVO_S3_BUCKET", "valueFrom": config("bucket")},
        {"name": "LIVO_S3_ACCESS_KEY", "valueFrom": secret("accesskey")},
        {"name": "LIVO_S3_SECRET_KEY", "valueFrom": secret("secretkey")},
        {"name": "LIVO_MODEL_REGISTRY_URL", "valueFrom": config("model_registry_url", optional=True)},
        {"name": "MLFLOW_TRACKING_URI", "valueFrom": config("mlflow_tracking_uri", optional=True)},
    ]


# Tracking settings a TrainJob's ranks inherit from the task that submits it (docs/tracking.md).
TRACKING_ENV = ("LIVO_TRACKING", "LIVO_MLFLOW_EXPERIMENT", "LIVO_MLFLOW_PARENT_RUN_ID")


def tracking_env(run_id: str = "") -> dict[str, str]:
    """Plain env of the TrainJob for experiment tracking: the KFP run id (rank 0 logs under that pipeline run) and
    the tracking settings set in this process. The tracking URI comes from the ConfigMap (`mlflow_tracking_uri`)."""
    env = {name: os.environ[name] for name in TRACKING_ENV if os.environ.get(name)}
    if run_id:
        env["LIVO_KFP_RUN_ID"] = run_id
    return env


def trainjob_body(*, name: str, namespace: str, image: str, launch_args: Sequence[str], num_nodes: int,
                  procs_per_node: int, accelerator_type: str = "nvidia.com/gpu", runtime: str = DEFAULT_RUNTIME,
                  env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                  store_secret_name: str = DEFAULT_STORE_SECRET,
                  store_config_map_name: str = DEFAULT_STORE_CONFIG_MAP) -> dict[str, Any]:
    """The TrainJob manifest, validated strictly against the Trainer v2.3 API models before it is returned.

    Each of the `num_nodes` pods runs `torchrun -m livo.training.launch <launch_args>`; torchrun starts
    `procs_per_node` ranks there (world size num_nodes × procs_per_node). The pods get the object store's Secret and
    ConfigMap as env references (the runtime declares none, so this body is the single source).
    """
    from livo.k8s_schema import validate_trainjob

    if not _NAME_RE.match(name):
        raise ConfigError(f"TrainJob name {name!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
    if num_nodes < 1 or procs_per_node < 1:
        raise ConfigError(f"num_nodes ({num_nodes}) and procs_per_node ({procs_per_node}) must be >= 1")
    if not _DIGEST_RE.search(image or ""):
        raise ConfigError(f"TrainJob image {image!r} is not pinned by digest; every node must run the same build, so "
                          "pass an image reference ending in @sha256:<64 hex digits>")
    for what, value in (("store_secret_name", store_secret_name), ("store_config_map_name", store_config_map_name)):
        if not _OBJECT_NAME_RE.match(value or ""):
            raise ConfigError(f"{what}={value!r} is not a Kubernetes object name (lowercase letters, digits, '-', '.')")
    references = store_env(store_secret_name, store_config_map_name)
    clashes = sorted(set(env or {}) & {item["name"] for item in references})
    if clashes:
        raise ConfigError(f"env sets {', '.join(clashes)}, which come from the Secret/ConfigMap; pass "
                          "store_secret_name / store_config_map_name instead")
    trainer: dict[str, Any] = {
        "image": image,
        "command": trainjob_command(),
        "args": [str(a) for a in launch_args],
        "numNodes": num_nodes,
        "numProcPerNode": procs_per_node,
        "resourcesPerNode": {"limits": {accelerator_type: str(procs_per_node)},
                             "requests": {accelerator_type: str(procs_per_node)}},
        "env": references + [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
    }
    body = {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "livo", **(labels or {})}},
        "spec": {"runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime", "name": runtime},
                 "trainer": trainer},
    }
    try:
        validate_trainjob(body)
    except ConfigError as exc:  # a bug in this function (or a bad label/env value), reported with the field
        raise ConfigError(f"{exc} (building the TrainJob body)") from exc
    return body


def _true_conditions(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def describe_conditions(status: dict[str, Any]) -> str:
    """`Type=Status (Reason: message)` of every condition, or `none`."""
    parts = []
    for condition in (status or {}).get("conditions") or []:
        detail = ": ".join(str(x) for x in (condition.get("reason"), condition.get("message")) if x)
        parts.append(f"{condition.get('type')}={condition.get('status')}" + (f" ({detail})" if detail else ""))
    return ", ".join(parts) or "none"


class PodReport:
    """What the TrainJob's pods say: phases, waiting reasons, scheduling failures and events, with the fix."""

    def __init__(self, core_api, namespace: str, name: str):
        self.namespace, self.name = namespace, name
        self.lines: list[str] = []
        self.hints: list[str] = []
        self.pods: list[Any] = []
        self.any_running = False
        if core_api is None:
            return
        try:
            self.pods = list(getattr(core_api.list_namespaced_pod(
                namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name}"), "items", None) or [])
        except Exception as exc:  # diagnosis is best effort
            self.lines.append(f"cannot list pods ({exc})")
            return
        for pod in self.pods:
            self._inspect(core_api, pod)

    def _inspect(self, core_api, pod) -> None:
        pod_name = getattr(pod.metadata, "name", "?")
        status = getattr(pod, "status", None)
        phase = getattr(status, "phase", None) or "Unknown"
        if phase in ("Running", "Succeeded", "Failed"):
            self.any_running = True
        notes = []
        for container in getattr(status, "container_statuses", None) or []:
            waiting = getattr(getattr(container, "state", None), "waiting", None)
            if waiting is not None and getattr(waiting, "reason", None):
                notes.append(f"{waiting.reason}" + (f": {waiting.message}" if getattr(waiting, "message", None) else ""))
                self._hint(waiting.reason, getattr(waiting, "message", "") or "")
        for condition in getattr(status, "conditions", None) or []:
            if getattr(condition, "type", "") == "PodScheduled" and getattr(condition, "status", "") == "False":
                notes.append(f"{condition.reason}: {condition.message}" if getattr(condition, "message", None)
                             else str(condition.reason))
                self._hint(str(condition.reason), getattr(condition, "message", "") or "")
        try:
            events = getattr(core_api.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={pod_name}"), "items", None) or []
        except Exception:
            events = []
        for event in events:
            reason, message = getattr(event, "reason", "") or "", getattr(event, "message", "") or ""
            if getattr(event, "type", "Warning") == "Warning" and reason:
                notes.append(f"event {reason}: {message}")
                self._hint(reason, message)
        unique = list(dict.fromkeys(notes))
        self.lines.append(f"pod {pod_name} {phase}" + (f" ({'; '.join(unique)})" if unique else ""))

    def _hint(self, reason: str, message: str) -> None:
        missing = _MISSING_REF_RE.search(message)
        if missing:
            kind, ref = missing.group(1).lower(), missing.group(2)
            if kind == "secret":
                hint = (f"create Secret {ref} (keys accesskey, secretkey) in namespace {self.namespace} "
                        "(manifests/templates/object-store-secret.yaml) or pass store_secret_name")
            else:
                hint = (f"create ConfigMap {ref} (keys endpoint, bucket) in namespace {self.namespace} "
                        "(kubectl apply -k manifests/overlays/...) or pass store_config_map_name")
        elif reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            hint = "the image cannot be pulled: check the image reference and the namespace's image pull secret"
        elif reason in ("Unschedulable", "FailedScheduling"):
            hint = ("no node fits a TrainJob pod: check the accelerator type/count per node, node selectors and "
                    "quotas (kubectl describe pod)")
        elif reason == "CreateContainerConfigError":
            hint = "the pod's env/volume references are wrong: check the Secret and ConfigMap it names"
        else:
            return
        if hint not in self.hints:
            self.hints.append(hint)

    def summary(self) -> str:
        if self.pods:
            text = "pods: " + ", ".join(self.lines)
        elif self.lines:
            text = self.lines[0]
        else:
            text = "no pods"
        return text + (f"; fix: {'; '.join(self.hints)}" if self.hints else "")


def _job_started(status: dict[str, Any], pods: PodReport) -> bool:
    """A pod runs (or ran), or the JobSet reports ready/finished pods."""
    if pods.any_running:
        return True
    for job in (status or {}).get("jobsStatus") or []:
        if any(int(job.get(key) or 0) > 0 for key in ("ready", "succeeded", "failed")):
            return True
    return False


def run_trainjob(body: dict[str, Any], *, custom_api, core_api=None, poll_seconds: float = 10.0,
                 timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
                 start_timeout_seconds: float | None = DEFAULT_START_TIMEOUT_SECONDS,
                 echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Create the TrainJob (or adopt the one a previous attempt created), stream the logs of its first node while it
    runs, and return its final status.

    Raises LivoError, naming the TrainJob, its conditions, its pods' phases and waiting reasons and the fix, when it
    fails, when no pod runs within `start_timeout_seconds` (image pull, scheduling, missing Secret), or when it has
    not finished within `timeout_seconds`.
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    where = f"TrainJob {namespace}/{name}"
    args = (TRAINER_GROUP, TRAINER_VERSION, namespace, TRAINJOB_PLURAL)
    try:
        custom_api.create_namespaced_custom_object(*args, body)
        log_event(log, "trainjob created", name=name, namespace=namespace)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:  # 409: it exists — a retried task adopts its TrainJob
            raise LivoError(f"cannot create {where}: {exc}; check the Trainer is installed and the pipeline's service "
                            "account may create trainjobs") from exc
        log_event(log, "trainjob exists, adopting it", name=name, namespace=namespace)
    started_at = clock()
    running = False
    printed = 0
    logs_hint = f"see `kubectl logs -n {namespace} -l jobset.sigs.k8s.io/jobset-name={name}`"
    while True:
        job = custom_api.get_namespaced_custom_object(*args, name)
        status = job.get("status") or {}
        if core_api is not None:
            printed = _echo_new_log_lines(core_api, namespace, name, printed, echo)
        if _true_conditions(status, "Complete"):
            log_event(log, "trainjob complete", name=name)
            return status
        elapsed = clock() - started_at
        if _true_conditions(status, "Failed"):
            pods = PodReport(core_api, namespace, name)
            raise LivoError(f"{where} failed; conditions: {describe_conditions(status)}; {pods.summary()}; "
                            f"{logs_hint}")
        if not running:
            pods = PodReport(core_api, namespace, name)
            running = _job_started(status, pods)
            if not running and start_timeout_seconds is not None and elapsed > start_timeout_seconds:
                raise LivoError(f"{where} never started: no pod ran within {start_timeout_seconds:.0f} s; conditions: "
                                f"{describe_conditions(status)}; {pods.summary()}; delete it with `kubectl delete "
                                f"trainjob -n {namespace} {name}` after fixing the cause")
            if running:
                log_event(log, "trainjob running", name=name, waited_s=round(elapsed, 1))
        if timeout_seconds is not None and elapsed > timeout_seconds:
            pods = PodReport(core_api, namespace, name)
            raise LivoError(f"{where} did not finish within {timeout_seconds:.0f} s; conditions: "
                            f"{describe_conditions(status)}; {pods.summary()}; raise timeout_seconds or check its "
                            f"progress ({logs_hint}), then delete it with `kubectl delete trainjob -n {namespace} "
                            f"{name}`")
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
    from livo.training.trainer import check_training_model

    config = config_from_args(build_parser().parse_args(list(launch_args)))
    config.batch_layout(world_size)
    check_training_model(config)


def run_training(*, launcher: str, launch_args: Sequence[str], procs_per_node: int = 1, num_nodes: int = 1,
                 image: str = "", run_id: str = "", accelerator_type: str = "nvidia.com/gpu",
                 runtime: str = DEFAULT_RUNTIME, namespace: str = "", custom_api=None, core_api=None,
                 store_secret_name: str = DEFAULT_STORE_SECRET, store_config_map_name: str = DEFAULT_STORE_CONFIG_MAP,
                 timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
                 start_timeout_seconds: float | None = DEFAULT_START_TIMEOUT_SECONDS,
                 poll_seconds: float = 10.0) -> None:
    """Train with `launcher` = `pod` (torchrun here, `procs_per_node` ranks) or `trainjob` (Kubeflow Trainer:
    `num_nodes` pods of `procs_per_node` ranks, object store from `store_secret_name`/`store_config_map_name`, waited
    on for at most `timeout_seconds`, of which at most `start_timeout_seconds` until a pod runs)."""
    if launcher not in ("pod", "trainjob"):
        raise ConfigError(f"unknown launcher {launcher!r}; use pod or trainjob")
    if num_nodes < 1 or procs_per_node < 1:
        raise ConfigError(f"num_nodes ({num_nodes}) and procs_per_node ({procs_per_node}) must be >= 1")
    if launcher == "pod" and num_nodes != 1:
        raise ConfigError(f"launcher=pod runs on one node, but num_nodes={num_nodes}; use launcher=trainjob")
    validate_launch_arguments(launch_args, world_size=procs_per_node * num_nodes)
    if launcher == "pod":  # raises TrainingPreempted (exit code 143) on SIGTERM; rank 0 tracks under the KFP run
        run_local_ranks(procs_per_node, launch_args, env={**os.environ, **tracking_env(run_id)})
        return
    if not image:
        raise ConfigError("launcher=trainjob needs the container image for the TrainJob (an @sha256: reference)")
    body = trainjob_body(name=trainjob_name(run_id or f"{int(time.time())}"), namespace=namespace or current_namespace(),
                         image=image, launch_args=launch_args, num_nodes=num_nodes, procs_per_node=procs_per_node,
                         accelerator_type=accelerator_type, runtime=runtime, store_secret_name=store_secret_name,
                         store_config_map_name=store_config_map_name, env=tracking_env(run_id))
    if custom_api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        custom_api, core_api = client.CustomObjectsApi(), client.CoreV1Api()
    run_trainjob(body, custom_api=custom_api, core_api=core_api, timeout_seconds=timeout_seconds,
                 start_timeout_seconds=start_timeout_seconds, poll_seconds=poll_seconds)


if __name__ == "__main__":  # torchrun_command's entry: `python -m livo.training.jobs <torchrun arguments>`
    sys.exit(torchrun_main(sys.argv[1:]))
