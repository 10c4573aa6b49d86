"""`livo run`: the whole pipeline locally, through kfp.local's SubprocessRunner over the same components a cluster runs.

    livo run                         # toy preset, embedded SeaweedFS store under runs/store
    livo run --preset tiny --allow-ungated -p data_shard_count=1
    livo run --seed 7                # data generation, training and evaluation seeds all 7 (default: 0 each)

Without `LIVO_S3_ENDPOINT` an embedded SeaweedFS server is started with its data under `<runs dir>/store`, which
persists across runs: a second run with the same principles is reported `skipped` (use -p run_force_retrain=true).
kfp.local ignores the pipeline's Kubernetes secret mappings, so the store's `LIVO_S3_*` variables are put into this
process's environment, which every component subprocess inherits.

`--image REF` runs every task in that image instead of as a local process (kfp.local's DockerRunner, host network so
the tasks reach the store on loopback): the way to try a freshly built image before pushing it. It needs a Docker
engine and the `docker` Python package, checked before anything starts.

At the end it prints the outcome (registered | skipped | rejected | failed), copies the report.html (the registered
version's when there is one, else the evaluation's) and
metrics.json into the run directory, prints the report's path and the base-vs-aligned summary table. To audit the
registered model afterwards, serve the same store (`livo store serve --data-dir runs/store`) and use `livo lineage`.

SIGTERM, SIGHUP and SIGINT (Ctrl-C) cancel the run: every task process tree the run started is stopped (SIGTERM,
then SIGKILL after a grace period), the outcome `canceled` is recorded (in the store when it is still up and the run
id is known, always in `<run dir>/outcome.json`), the embedded store is stopped, and the exit code is 128 + the
signal number (143 for SIGTERM, 129 for SIGHUP, 130 for SIGINT).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event
from livo.orchestration import ENV_PARALLEL_TASK_THREADS
from livo.progress import ENV_PROGRESS_LINES

logger = get_logger("livo.commands.run")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

# What a laptop run changes relative to the pipeline's cluster defaults: no GPUs, no GPU-node tolerations, two data
# shards (kfp.local runs them one after the other; two still exercise the fan-out and the merge); the preset's own
# model name.
LOCAL_DEFAULTS: dict[str, Any] = {
    "data_shard_count": 2,
    "data_gpus_per_shard": 0,
    "data_tolerations": [],
    "train_launcher": "pod",
    "train_num_nodes": 1,
    "train_gpus_per_node": 0,
    "train_tolerations": [],
    "eval_gpus": 0,
    "eval_tolerations": [],
}


def local_arguments(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**LOCAL_DEFAULTS, "run_preset": preset, "registry_model_name": f"livo-{Path(preset).stem}", **overrides}


# The stage configs whose `seed` field `--seed` sets: data generation (GenerateConfig.seed: every image seed derives
# from it), training (TrainingConfig.seed: data order, violating-image draws, noise, timesteps) and evaluation
# (EvaluationConfig.seed: image i of a principle's grid uses seed + i). Each defaults to 0, so --seed 0 is the run
# without --seed.
SEEDED_STAGE_OVERRIDES = ("data_config_overrides", "train_config_overrides", "eval_config_overrides")


def apply_run_seed(arguments: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """`--seed N`: `seed=N` first in every stage's config overrides (an explicit `-p <stage>_config_overrides=[seed=M]`
    comes after it and wins). None leaves the arguments as they are."""
    if seed is None:
        return arguments
    if seed < 0:
        raise ConfigError(f"--seed {seed}: give a seed of 0 or more")
    seeded = dict(arguments)
    for name in SEEDED_STAGE_OVERRIDES:
        existing = arguments.get(name) or []
        if not isinstance(existing, list):
            raise ConfigError(f"-p {name}: expected a list of key=value items, got {existing!r}")
        seeded[name] = [f"seed={seed}", *existing]
    return seeded


def check_gates_at_door(arguments: dict[str, Any]) -> None:
    """`livo.orchestration.check_evaluation_gates` before the store starts (the pipeline's validate-inputs runs it
    again). Skipped for principles in the object store, which only the pipeline's first step can read."""
    from livo.evaluation.config import load_evaluation_config
    from livo.evaluation.protocol import plan_evaluation
    from livo.orchestration import check_evaluation_gates
    from livo.presets import load_preset_config
    from livo.principles import load_principles

    preset = load_preset_config(arguments["run_preset"])
    source = arguments.get("run_principles_uri") or preset.principles_path()
    if str(source).startswith("s3://"):
        return
    try:
        evaluation = load_evaluation_config(preset.evaluate, preset.judges, None,
                                            [str(item) for item in arguments.get("eval_config_overrides") or []])
        plan = plan_evaluation(load_principles(source), evaluation)
    except ConfigError as exc:
        raise ConfigError(f"eval_config_overrides / preset {preset.name} evaluate.gates: {exc}") from None
    check_evaluation_gates(evaluation, plan, preset_name=preset.name,
                           allow_ungated=bool(arguments.get("run_allow_ungated")))


def threads_per_task(requested: int | None, arguments: dict[str, Any], cpu_count: int | None = None
                     ) -> tuple[int, int]:
    """CPU threads of torch in each task: (a task that runs alone, a data shard). Training and evaluation run alone
    and get every core (2 threads were 1.56x faster than 1 on the evaluation UNet and 1.76x on training samples/s,
    issue 17); kfp.local runs the data shards at the same time and oversubscribed cores cost far more than idle ones
    (on 2 shared cores 2 threads per process ran ~10x slower than 1, docs/toy_world.md), so the shards split the
    cores. `--threads N` or $OMP_NUM_THREADS: N for every task."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested}: give at least 1")
        return requested, requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), int(os.environ["OMP_NUM_THREADS"])
    cores = cpu_count or os.cpu_count() or 1
    shards = arguments.get("data_shard_count")
    concurrent = shards if isinstance(shards, int) and shards > 0 else 1
    return cores, max(1, cores // concurrent)


@contextlib.contextmanager
def object_store_env(store_dir: Path) -> Iterator[dict[str, str]]:
    """The configured store (`LIVO_S3_*` already set), else an embedded SeaweedFS for the duration of the run."""
    from livo.store import ENV_ENDPOINT, EmbeddedSeaweedFS

    if os.environ.get(ENV_ENDPOINT):
        yield {}
        return
    with EmbeddedSeaweedFS(store_dir) as server:
        server.store().ensure_bucket()
        yield server.env()


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def task_output(pipeline_root: Path, task_name: str) -> dict[str, Any] | None:
    """The executor output kfp.local wrote for `task_name` (newest run under `pipeline_root`), or None."""
    candidates = sorted(pipeline_root.glob(f"*/{task_name}/executor_output.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(candidates[-1].read_text()) if candidates else None


class _Tee(io.TextIOBase):
    """Writes to several text streams: the console and the run's pipeline.log."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_TASK_EVENT_RE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) - \w+ - (?:Executing task '([^']+)'|"
                            r"Task '([^']+)' finished with status (\w+))")


def task_timings(log_text: str) -> dict[str, dict[str, Any]]:
    """{task: {seconds, runs, status}} from kfp.local's log lines ("HH:MM:SS.mmm - INFO - Executing task 'x'" ...
    "Task 'x' finished with status SUCCESS"), in the order the tasks started. kfp.local runs the iterations of a
    ParallelFor concurrently under one task name (and may drop one of their log lines), so a task's seconds span
    from its first start to its last finish and `runs` counts its starts."""
    spans: dict[str, dict[str, Any]] = {}
    day = last = 0.0
    for line in _ANSI_RE.sub("", log_text).splitlines():
        match = _TASK_EVENT_RE.match(line)
        if not match:
            continue
        hours, minutes, seconds, begun, ended, status = match.groups()
        clock = int(hours) * 3600 + int(minutes) * 60 + float(seconds) + day
        if clock < last - 43200.0:  # the run went past midnight (concurrent shards may log a little out of order)
            day += 86400.0
            clock += 86400.0
        last = max(last, clock)
        if begun:
            span = spans.setdefault(begun, {"start": clock, "end": None, "runs": 0, "status": "RUNNING"})
            span["start"] = min(span["start"], clock)
            span["runs"] += 1
        elif ended in spans:
            span = spans[ended]
            span["end"] = clock
            span["status"] = status if span["status"] in ("RUNNING", "SUCCESS") else span["status"]
    return {name: {"seconds": round(span["end"] - span["start"], 1) if span["end"] is not None else None,
                   "runs": span["runs"], "status": span["status"]} for name, span in spans.items()}


def docker_runner(env: dict[str, str]) -> Any:
    """kfp.local's DockerRunner with the host network and `env` in every container; refuses early without Docker."""
    import shutil

    from kfp import local

    if shutil.which("docker") is None:
        raise LivoError("--image runs the tasks in containers, but no `docker` command was found; install Docker (or "
                        "drop --image to run the tasks as local processes)")
    try:
        import docker
    except ImportError:
        raise LivoError("--image needs the `docker` Python package (pip install docker) for kfp.local's "
                        "DockerRunner") from None
    try:
        docker.from_env().ping()
    except Exception as exc:  # docker raises DockerException, requests and socket errors alike
        raise LivoError(f"the Docker engine is not reachable ({' '.join(str(exc).split())[:200]}); start it or drop "
                        "--image") from None
    return local.DockerRunner(network_mode="host", environment=env)


TASK_STOP_GRACE_S = 5.0


def stop_task_processes(grace_s: float = TASK_STOP_GRACE_S) -> list[int]:
    """Stop every process below this one except the embedded store servers it runs: kfp.local's task subprocesses
    and whatever they started (torchrun workers, ...). SIGTERM, `grace_s`, SIGKILL; the tree is walked again until
    no new process appears (a task thread may be launching one just now). Returns the PIDs signalled. Does not log
    (it runs inside a signal handler)."""
    from livo.store import descendant_pids, embedded_server_pids, terminate_pids

    signalled: list[int] = []
    for _ in range(5):
        spared = embedded_server_pids()
        victims = [pid for pid in descendant_pids(os.getpid()) if pid not in spared and pid not in signalled]
        if not victims:
            break
        terminate_pids(victims, grace_s)
        signalled.extend(victims)
    return signalled


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Linux: make this process a child subreaper for the block, so the children of a task that died first
    re-parent to it (and `stop_task_processes` still finds them) instead of to init."""
    libc = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


_PR_SET_CHILD_SUBREAPER = 36


def known_run_ids() -> set[str] | None:
    """Run ids that have records in the configured store (`LIVO_S3_*`), or None when the store cannot be listed."""
    from livo.orchestration import RUN_RECORDS_PREFIX
    from livo.store import ObjectStore

    try:
        keys = ObjectStore.from_env().list(RUN_RECORDS_PREFIX, recursive=False)
    except LivoError:
        return None
    return {key.rstrip("/").rsplit("/", 1)[-1] for key in keys}


def canceled_outcome(run_dir: Path, known: set[str] | None, reason: str) -> dict[str, Any]:
    """The `canceled` outcome of an interrupted run. When the store is still up and exactly one run id appeared in it
    since the run began, the record is also written there (`pipeline-runs/<id>/outcome.json`, as the exit handler
    would have); otherwise it lives only in the run directory. Store calls are bounded by a short timeout."""
    from livo.orchestration import build_outcome, write_outcome
    from livo.store import ENV_TIMEOUT, ObjectStore

    outcome: dict[str, Any] = {"run_id": None, "status": "canceled", "kfp_state": "CANCELED",
                               "summary": f"the run was canceled ({reason})", "error": reason, "outcome_uri": None}
    if known is None or not os.environ.get("LIVO_S3_ENDPOINT"):
        outcome["record"] = "not written to the store: the run's records could not be listed"
        return outcome
    try:
        store = ObjectStore.from_env({**os.environ, ENV_TIMEOUT: "3"})
        new = sorted((known_run_ids() or set()) - known)
        if len(new) != 1:
            outcome["record"] = (f"not written to the store: {len(new)} new run ids in it, cannot tell which is "
                                 "this run's")
            return outcome
        names = sorted(p.name for p in (run_dir / "kfp").glob("*") if p.is_dir())
        record = build_outcome(store, run_id=new[0], run_name=names[-1] if names else "local",
                               final_state="CANCELED", error_message=reason)
        record["summary"] = outcome["summary"]
        key = write_outcome(store, record)
        return {**record, "outcome_uri": store.uri(key)}
    except LivoError as exc:
        outcome["record"] = f"not written to the store: {exc}"
        return outcome


def run_pipeline_locally(arguments: dict[str, Any], run_dir: Path, image: str | None = None, *,
                         verbose: bool = True) -> dict[str, Any]:
    """Run the pipeline with kfp.local in this process's environment (in `image` when given, through Docker);
    return the outcome record the run wrote. kfp.local's whole output goes to `<run_dir>/pipeline.log`; the console
    gets it too when `verbose`, else one live line per task (`livo.run_view.TaskView`)."""
    from kfp import local

    from livo.commands.pipeline_cmd import git_commit, load_pipeline_module, pipeline_image
    from livo.store import ObjectStore, parse_s3_uri

    module = load_pipeline_module()
    pipeline_root = run_dir / "kfp"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    if image:
        task_env = {k: v for k, v in os.environ.items() if k.startswith("LIVO_S3_") or k.endswith("_NUM_THREADS")}
        runner = docker_runner(task_env)
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=False)
    commit = git_commit(Path(module.__file__).resolve().parents[1])
    log_path = run_dir / "pipeline.log"
    # kfp.local indents task logs by swapping builtins.print and restoring what it found; tasks of a ParallelFor run
    # in threads, so when they finish in the order they started, an indenting print is left behind. Restore ours.
    original_print = builtins.print
    try:
        with patched_environ({**({"LIVO_GIT_COMMIT": commit} if commit and not image else {}),
                              ENV_PROGRESS_LINES: "2"}), \
                pipeline_image(module, image or module.PIPELINE_IMAGE) as pipeline, \
                log_path.open("w", encoding="utf-8") as log_file, \
                _console_view(log_file, verbose) as stream, \
                contextlib.redirect_stdout(stream), \
                contextlib.redirect_stderr(sys.stderr if verbose else stream):
            pipeline(**arguments)
    finally:
        builtins.print = original_print
    output = task_output(pipeline_root, "record-outcome")
    if output is None:
        raise LivoError(f"the local run left no outcome record under {pipeline_root}; see the task logs above")
    outcome_uri = output["parameterValues"]["Output"]
    record = ObjectStore.for_uri(outcome_uri).get_json(parse_s3_uri(outcome_uri)[1])
    return {**record, "outcome_uri": outcome_uri, "pipeline_root": str(pipeline_root),
            "tasks": task_timings(log_path.read_text(encoding="utf-8")), "log": str(log_path)}


@contextlib.contextmanager
def _console_view(log_file: Any, verbose: bool) -> Iterator[Any]:
    """The stream kfp.local's output goes to: the console and the log (`verbose`), or the log and one live line per
    task on the console."""
    if verbose:
        yield _Tee(sys.stdout, log_file)
        return
    from livo.run_view import TaskView

    print(f"livo run: one line per task below; kfp.local's full output is in {log_file.name} (--verbose prints it)",
          file=sys.__stdout__, flush=True)
    with TaskView(log_file, sys.__stdout__) as view:
        yield view


def fetch_evaluation(outcome: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Copy the run's evaluation (metrics.json, report.html) into `run_dir`; returns the metrics, or None when the
    run did not get as far as an evaluation. Needs the run's store to be reachable (call inside its context)."""
    from livo.store import ObjectStore, parse_s3_uri

    evaluation = outcome.get("evaluation")
    if not evaluation:
        return None
    metrics_path, report_path = run_dir / "metrics.json", run_dir / "report.html"
    # A registered run's report is the version's copy: the evaluation's plus name@version, commit, image, MLflow run
    report_uri = (outcome.get("registration") or {}).get("report_uri") or evaluation["report_uri"]
    for uri, target in ((evaluation["metrics_uri"], metrics_path), (report_uri, report_path)):
        ObjectStore.for_uri(uri).download_file(parse_s3_uri(uri)[1], target)
    evaluation["report_path"] = str(report_path)
    return json.loads(metrics_path.read_text(encoding="utf-8"))


def summary_rows(outcome: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("status", outcome["status"]), ("summary", outcome["summary"]), ("run id", outcome["run_id"])]
    decision = outcome.get("decision") or {}
    if decision.get("principle_set_hash"):
        rows.append(("principle set", decision["principle_set_hash"]))
    registration = outcome.get("registration") or {}
    for field in ("model_name", "version", "uri", "report_uri"):
        if registration.get(field):
            rows.append((field.replace("_", " "), str(registration[field])))
    rows.append(("outcome record", outcome["outcome_uri"]))
    evaluation = outcome.get("evaluation") or {}
    if evaluation.get("report_path"):
        rows.append(("report", evaluation["report_path"]))
    return rows


def _format_timing(timing: dict[str, Any]) -> str:
    runs = f", {timing['runs']} in parallel" if timing["runs"] > 1 else ""
    seconds = "?" if timing["seconds"] is None else timing["seconds"]
    return f"{seconds} s ({timing['status'].lower()}{runs})"


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}", file=sys.__stdout__, flush=True)


def new_run_dir(root: Path) -> Path:
    """`<root>/run-YYYYmmdd-HHMMSS[-N]`, created; never one an earlier run already uses."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise LivoError(f"cannot create a new run directory under {root}")


class RunCancellation:
    """The signal handler of `livo run` (SIGTERM, SIGHUP, SIGINT), installed for the whole run.

    kfp.local joins its task threads in ``finally`` blocks and sleeps through task-retry back-offs, so unwinding the
    stack after a signal would wait for tasks that no longer matter. The handler therefore does the whole clean-up
    itself, in order: stop every task process tree; record the outcome `canceled` (in the store while it is still up,
    and in ``<run dir>/outcome.json``); stop the embedded store; print one line; leave with exit code 128 + signal.
    Each step is guarded on its own, so a failing one cannot keep the store running. Repeated signals are ignored.
    """

    def __init__(self, run_dir: Path, started: float):
        self.run_dir = run_dir
        self.started = started
        self.known_run_ids: set[str] | None = None  # run ids in the store before this run began
        self.outcome: dict[str, Any] | None = None  # the run's own outcome once it has one: then nothing is canceled

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import threading

        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {signum: signal.signal(signum, self.handle) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def handle(self, signum: int, frame: object) -> None:
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        name = signal.Signals(signum).name
        problems: list[str] = []
        with _step(problems, "stopping the tasks"):
            stop_task_processes()
        outcome = self.outcome
        if outcome is None:
            outcome = canceled_outcome(self.run_dir, None, f"received {name}")
            with _step(problems, "recording the outcome in the store"):
                outcome = canceled_outcome(self.run_dir, self.known_run_ids, f"received {name}")
            outcome["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        with _step(problems, "writing outcome.json"):
            _write_outcome_file(self.run_dir, outcome)
        with _step(problems, "stopping the embedded store"):
            from livo.store import stop_embedded_servers

            stop_embedded_servers()
        where = outcome.get("outcome_uri") or "not in the store"
        status = outcome.get("status", "canceled")
        message = (f"livo: run {'canceled' if status == 'canceled' else 'stopped'} by {name}: its tasks and the "
                   f"embedded store were stopped; outcome '{status}' in {self.run_dir / 'outcome.json'} (store "
                   f"record: {where})")
        if problems:
            message += f"; clean-up problems: {'; '.join(problems)}"
        with contextlib.suppress(OSError):
            os.write(2, (message + "\n").encode("utf-8", "replace"))
        os._exit(128 + signum)


@contextlib.contextmanager
def _step(problems: list[str], what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - each clean-up step must run whatever the previous one raised
        problems.append(f"{what}: {' '.join(str(exc).split())[:200]}")


def check_local_arguments(arguments: dict[str, Any]) -> None:
    """The checks of the pipeline's first step that need no store: parameter names against the pipeline's signature,
    values against `PipelineParameters`, the preset, and — unless the principles or the model are in the object
    store, which only the pipeline's first step can read — every stage's config against the model (resolution,
    distillation). ConfigError (exit 2) names the parameter."""
    from livo.commands.pipeline_cmd import load_pipeline_module
    from livo.orchestration import PipelineParameters
    from livo.presets import load_preset_config

    inputs = load_pipeline_module().livo_full.component_spec.inputs
    unknown = sorted(set(arguments) - set(inputs))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(inputs))}")
    values = {name: spec.default for name, spec in inputs.items() if name in PipelineParameters.model_fields}
    values.update({name: value for name, value in arguments.items() if name in PipelineParameters.model_fields})
    parameters = PipelineParameters.parse(values)
    load_preset_config(arguments["run_preset"])
    check_gates_at_door(arguments)
    if not any(str(uri).startswith("s3://") for uri in (parameters.run_principles_uri, parameters.run_model_source)):
        parameters.resolve()  # every stage's config and what the base model can take (the pipeline's first step)


def cmd_run(args: argparse.Namespace) -> int:
    from livo.commands.pipeline_cmd import parse_param_overrides
    from livo.paths import runs_dir

    image = None
    if args.image:
        from livo.images import resolve_image

        image = resolve_image(args.image)
        docker_runner({})  # Docker present and reachable: checked before a run directory or a store exists
    arguments = apply_run_seed(local_arguments(args.preset, parse_param_overrides(args.param)), args.seed)
    if args.allow_ungated:
        arguments["run_allow_ungated"] = True
    threads, shard_threads = threads_per_task(args.threads, arguments)
    check_local_arguments(arguments)  # at the door: before a run directory or the embedded store exists
    root = Path(args.runs_dir).resolve() if args.runs_dir else runs_dir()
    run_dir = new_run_dir(root)
    # the arguments are in outcome.json too; the console shows them with --verbose only
    log_event(logger, "local_run_start", logging.INFO if args.verbose else logging.DEBUG, run_dir=str(run_dir),
              threads=threads, shard_threads=shard_threads, **arguments)
    started = time.perf_counter()
    thread_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                  ENV_PARALLEL_TASK_THREADS: str(shard_threads)}
    cancellation = RunCancellation(run_dir, started)
    tracking_env = start_pipeline_tracking(arguments, root, run_dir)
    with cancellation.installed(), adopting_orphans():
        with object_store_env(root / "store") as store_env, \
                patched_environ({**store_env, **thread_env, **tracking_env}):
            cancellation.known_run_ids = known_run_ids()
            outcome = run_pipeline_locally(arguments, run_dir, image, verbose=args.verbose)
            cancellation.outcome = outcome
            metrics = fetch_evaluation(outcome, run_dir)
        outcome["wall_seconds"] = round(time.perf_counter() - started, 1)
        outcome["threads_per_task"] = threads
        outcome["threads_per_data_shard"] = shard_threads
        outcome["seed"] = args.seed  # --seed (None: each stage config's own seed, 0 by default)
        outcome["arguments"] = arguments  # the pipeline parameters this run was given
        tracking_row = finish_pipeline_tracking(tracking_env, outcome)
        _write_outcome_file(run_dir, outcome)
    print_table(summary_rows(outcome) + [("wall time", f"{outcome['wall_seconds']} s ({threads} thread(s) per task, "
                                                       f"{shard_threads} per data shard)"),
                                         ("run dir", str(run_dir)), ("log", outcome["log"])]
                + ([(f"task {name}", _format_timing(timing)) for name, timing in outcome["tasks"].items()]
                   if args.verbose else [])
                + ([tracking_row] if tracking_row else []))
    if metrics is not None:
        from livo.evaluation.report import format_summary_table

        print("\n" + format_summary_table(metrics), file=sys.__stdout__, flush=True)
    return 0 if outcome["status"] in ("registered", "skipped", "rejected") else 1


def start_pipeline_tracking(arguments: dict[str, Any], root: Path, run_dir: Path) -> dict[str, str]:
    """The pipeline run's MLflow run, made before the pipeline starts (its KFP run id is not known yet): returns the
    env every task inherits to log its stage run under it (`MLFLOW_TRACKING_URI`, default a SQLite store in the runs
    directory shared by all local runs, and `LIVO_MLFLOW_PARENT_RUN_ID`); {} when tracking is off or failed."""
    from livo import tracking
    from livo.presets import load_preset_config

    backend = tracking.resolve_backend(load_preset_config(arguments["run_preset"]).tracking)
    if backend == "none":
        return {tracking.ENV_BACKEND: "none"}
    uri = tracking.tracking_uri(root)
    with patched_environ({tracking.ENV_URI: uri}):
        parent = tracking.create_parent_run(
            run_name=f"livo run {run_dir.name}", backend=backend,
            tags={"livo.preset": arguments["run_preset"], "livo.run_dir": str(run_dir), "livo.local_run": "true"})
    if parent is None:
        return {tracking.ENV_BACKEND: "none"}  # one warning was logged; the tasks do not try again
    return {tracking.ENV_URI: uri, tracking.ENV_PARENT_RUN_ID: parent}


def finish_pipeline_tracking(env: dict[str, str], outcome: dict[str, Any]) -> tuple[str, str] | None:
    """Tag the pipeline's MLflow run with the KFP run id, the outcome and the registered version, and close it;
    returns the (label, value) row of the command that opens the UI on it, or None when tracking was off."""
    from livo import tracking

    parent = env.get(tracking.ENV_PARENT_RUN_ID)
    if not parent:
        return None
    registration = outcome.get("registration") or {}
    tags = {tracking.TAG_KFP_RUN_ID: outcome.get("run_id") or "", "livo.outcome": outcome.get("status", "")}
    if registration.get("model_name") and registration.get("version"):
        tags[tracking.TAG_REGISTERED_VERSION] = f"{registration['model_name']}@{registration['version']}"
    ok = outcome.get("status") in ("registered", "skipped", "rejected")
    with patched_environ({tracking.ENV_URI: env[tracking.ENV_URI]}):
        tracking.finish_parent_run(parent, "FINISHED" if ok else "FAILED", tags)
    if tracking.state()["status"] != "ok":
        return ("tracking", f"{tracking.state()['status']}: {tracking.state()['error']}")
    outcome["tracking"] = {"uri": tracking.redact_uri(env[tracking.ENV_URI]), "parent_run_id": parent,
                           "ui": tracking.ui_command(env[tracking.ENV_URI])}
    return ("tracking ui", outcome["tracking"]["ui"])


def _write_outcome_file(run_dir: Path, outcome: dict[str, Any]) -> None:
    tmp = run_dir / "outcome.json.tmp"
    tmp.write_text(json.dumps(outcome, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, run_dir / "outcome.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline locally (kfp.local); no arguments = toy preset, embedded store",
        description="Run pipelines/livo_full.py locally through kfp.local's SubprocessRunner. Without LIVO_S3_ENDPOINT "
                    "an embedded SeaweedFS store is started under <runs dir>/store. Exit 0 when the run registered a "
                    "model, was skipped (principles unchanged) or was rejected by the evaluation gates; 1 when it "
                    "failed; 128 + signal (143 for SIGTERM, 130 for Ctrl-C) when a signal canceled it (tasks and "
                    "store stopped, outcome 'canceled').")
    parser.add_argument("--preset", default="toy", help="preset name or YAML path (default: toy)")
    parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                        help="pipeline parameter (repeatable), e.g. -p run_force_retrain=true")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="register the candidate even when its evaluation decides no gate (e.g. --preset tiny, "
                             "whose noise images have nothing to gate); the version is marked UNGATED. Without it such "
                             "a run is refused at the door (exit 2)")
    parser.add_argument("--seed", type=int, default=None,
                        help="one seed for data generation, training and evaluation (each stage config's `seed`, "
                             "default 0 each; recorded in the dataset manifest, the lineage and metrics.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of every task (default: $OMP_NUM_THREADS if set, else every core for the "
                             "tasks that run alone and the cores divided among the concurrent data shards)")
    parser.add_argument("--runs-dir", help="where run directories and the embedded store live (default: "
                                           "$LIVO_RUNS_DIR or ./runs)")
    parser.add_argument("--verbose", action="store_true",
                        help="print kfp.local's whole output (task events, executor inputs, every task's log) instead "
                             "of one live line per task; it always goes to <run dir>/pipeline.log")
    parser.add_argument("--image", metavar="REF",
                        help="run every task in this image (digest-pinned) through Docker instead of as local "
                             "processes; needs a Docker engine")
    parser.set_defaults(func=cmd_run)
