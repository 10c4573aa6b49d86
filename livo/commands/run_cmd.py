"""`livo run`: the whole pipeline locally, through kfp.local's SubprocessRunner over the same components a cluster runs.

    livo run                         # toy preset, embedded SeaweedFS store under runs/store
    livo run --preset tiny -p data_shard_count=1

Without `LIVO_S3_ENDPOINT` an embedded SeaweedFS server is started with its data under `<runs dir>/store`, which
persists across runs: a second run with the same principles is reported `skipped` (use -p run_force_retrain=true).
kfp.local ignores the pipeline's Kubernetes secret mappings, so the store's `LIVO_S3_*` variables are put into this
process's environment, which every component subprocess inherits.

`--image REF` runs every task in that image instead of as a local process (kfp.local's DockerRunner, host network so
the tasks reach the store on loopback): the way to try a freshly built image before pushing it. It needs a Docker
engine and the `docker` Python package, checked before anything starts.

At the end it prints the outcome (registered | skipped | rejected | failed), copies the evaluation's report.html and
metrics.json into the run directory, prints the report's path and the base-vs-aligned summary table. To audit the
registered model afterwards, serve the same store (`livo store serve --data-dir runs/store`) and use `livo lineage`.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event

logger = get_logger("livo.commands.run")

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


def threads_per_task(requested: int | None, arguments: dict[str, Any], cpu_count: int | None = None) -> int:
    """CPU threads each task's torch may use. kfp.local runs the data shards at the same time, and oversubscribed
    cores cost far more than idle ones: on 2 shared cores 2 threads per process ran ~10x slower than 1
    (docs/toy_world.md). Default: $OMP_NUM_THREADS if set, else the cores divided among the concurrent shards."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested}: give at least 1")
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    shards = arguments.get("data_shard_count")
    concurrent = shards if isinstance(shards, int) and shards > 0 else 1
    return max(1, (cpu_count or os.cpu_count() or 1) // concurrent)


@contextlib.contextmanager
def object_store_env(store_dir: Path) -> Iterator[dict[str, str]]:
    """The configured store (`LIVO_S3_*` already set), else an embedded SeaweedFS for the duration of the run."""
    from livo.registry.store import ENV_ENDPOINT, EmbeddedSeaweedFS

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
_TASK_EVENT_RE = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) - \w+ - (?:Executing task '([^']+)'|Task '([^']+)' finished with "
                            r"status (\w+))")


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


def run_pipeline_locally(arguments: dict[str, Any], run_dir: Path, image: str | None = None) -> dict[str, Any]:
    """Run the pipeline with kfp.local in this process's environment (in `image` when given, through Docker);
    return the outcome record the run wrote."""
    from kfp import local

    from livo.commands.pipeline_cmd import git_commit, load_pipeline_module, pipeline_image
    from livo.registry.store import ObjectStore, parse_s3_uri

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
        with patched_environ({"LIVO_GIT_COMMIT": commit} if commit and not image else {}), \
                pipeline_image(module, image or module.PIPELINE_IMAGE) as pipeline, \
                log_path.open("w", encoding="utf-8") as log_file, \
                contextlib.redirect_stdout(_Tee(sys.stdout, log_file)):
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


def fetch_evaluation(outcome: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Copy the run's evaluation (metrics.json, report.html) into `run_dir`; returns the metrics, or None when the
    run did not get as far as an evaluation. Needs the run's store to be reachable (call inside its context)."""
    from livo.registry.store import ObjectStore, parse_s3_uri

    evaluation = outcome.get("evaluation")
    if not evaluation:
        return None
    metrics_path, report_path = run_dir / "metrics.json", run_dir / "report.html"
    for uri, target in ((evaluation["metrics_uri"], metrics_path), (evaluation["report_uri"], report_path)):
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


def cmd_run(args: argparse.Namespace) -> int:
    from livo.commands.pipeline_cmd import parse_param_overrides
    from livo.paths import runs_dir

    image = None
    if args.image:
        from livo.images import resolve_image

        image = resolve_image(args.image)
        docker_runner({})  # Docker present and reachable: checked before a run directory or a store exists
    root = Path(args.runs_dir).resolve() if args.runs_dir else runs_dir()
    run_dir = new_run_dir(root)
    arguments = local_arguments(args.preset, parse_param_overrides(args.param))
    threads = threads_per_task(args.threads, arguments)
    log_event(logger, "local_run_start", run_dir=str(run_dir), threads=threads, **arguments)
    started = time.perf_counter()
    thread_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with object_store_env(root / "store") as store_env, patched_environ({**store_env, **thread_env}):
        outcome = run_pipeline_locally(arguments, run_dir, image)
        metrics = fetch_evaluation(outcome, run_dir)
    outcome["wall_seconds"] = round(time.perf_counter() - started, 1)
    outcome["threads_per_task"] = threads
    (run_dir / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str), encoding="utf-8")
    print_table(summary_rows(outcome) + [("wall time", f"{outcome['wall_seconds']} s ({threads} thread(s) per task)"),
                                         ("run dir", str(run_dir))]
                + [(f"task {name}", _format_timing(timing)) for name, timing in outcome["tasks"].items()])
    if metrics is not None:
        from livo.evaluation.report import format_summary_table

        print("\n" + format_summary_table(metrics), file=sys.__stdout__, flush=True)
    return 0 if outcome["status"] in ("registered", "skipped", "rejected") else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline locally (kfp.local); no arguments = toy preset, embedded store",
        description="Run pipelines/livo_full.py locally through kfp.local's SubprocessRunner. Without LIVO_S3_ENDPOINT "
                    "an embedded SeaweedFS store is started under <runs dir>/store. Exit 0 when the run registered a "
                    "model, was skipped (principles unchanged) or was rejected by the evaluation gates; 1 when it "
                    "failed.")
    parser.add_argument("--preset", default="toy", help="preset name or YAML path (default: toy)")
    parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                        help="pipeline parameter (repeatable), e.g. -p run_force_retrain=true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per task (default: $OMP_NUM_THREADS, else the cores divided among the "
                             "concurrent data shards)")
    parser.add_argument("--runs-dir", help="where run directories and the embedded store live (default: "
                                           "$LIVO_RUNS_DIR or ./runs)")
    parser.add_argument("--image", metavar="REF",
                        help="run every task in this image (digest-pinned) through Docker instead of as local "
                             "processes; needs a Docker engine")
    parser.set_defaults(func=cmd_run)
