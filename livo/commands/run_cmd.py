"""`livo run`: the whole pipeline locally, through kfp.local's SubprocessRunner over the same components a cluster runs.

    livo run                         # toy preset, embedded SeaweedFS store under runs/store
    livo run --preset tiny -p data_shard_count=1

Without `LIVO_S3_ENDPOINT` an embedded SeaweedFS server is started with its data under `<runs dir>/store`, which
persists across runs: a second run with the same principles is reported `skipped` (use -p run_force_retrain=true).
kfp.local ignores the pipeline's Kubernetes secret mappings, so the store's `LIVO_S3_*` variables are put into this
process's environment, which every component subprocess inherits. Prints the report path and a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livo.errors import LivoError
from livo.log import get_logger, log_event

logger = get_logger("livo.commands.run")

# What a laptop run changes relative to the pipeline's cluster defaults: no GPUs, no GPU-node tolerations, two data
# shards; the preset's own model name.
LOCAL_DEFAULTS: dict[str, Any] = {
    "data_shard_count": 2,
    "train_launcher": "pod",
    "train_num_nodes": 1,
    "train_gpus_per_node": 0,
    "train_tolerations": [],
}


def local_arguments(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**LOCAL_DEFAULTS, "run_preset": preset, "registry_model_name": f"livo-{Path(preset).stem}", **overrides}


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


def run_pipeline_locally(arguments: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run the pipeline with kfp.local in this process's environment; return the outcome record the run wrote."""
    from kfp import local

    from livo.commands.pipeline_cmd import git_commit, load_pipeline_module
    from livo.registry.store import ObjectStore, parse_s3_uri

    module = load_pipeline_module()
    pipeline_root = run_dir / "kfp"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=False)
    commit = git_commit(Path(module.__file__).resolve().parents[1])
    with patched_environ({"LIVO_GIT_COMMIT": commit} if commit else {}):
        module.livo_full(**arguments)
    output = task_output(pipeline_root, "record-outcome")
    if output is None:
        raise LivoError(f"the local run left no outcome record under {pipeline_root}; see the task logs above")
    outcome_uri = output["parameterValues"]["Output"]
    record = ObjectStore.for_uri(outcome_uri).get_json(parse_s3_uri(outcome_uri)[1])
    return {**record, "outcome_uri": outcome_uri, "pipeline_root": str(pipeline_root)}


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
    return rows


def print_table(rows: list[tuple[str, str]]) -> None:
    # sys.__stdout__: kfp.local leaves an indenting wrapper on sys.stdout after a failed pipeline
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}", file=sys.__stdout__, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from livo.commands.pipeline_cmd import parse_param_overrides
    from livo.paths import runs_dir

    root = Path(args.runs_dir).resolve() if args.runs_dir else runs_dir()
    run_dir = root / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    arguments = local_arguments(args.preset, parse_param_overrides(args.param))
    log_event(logger, "local_run_start", run_dir=str(run_dir), **{k: v for k, v in arguments.items()})
    started = time.perf_counter()
    with object_store_env(root / "store") as store_env, patched_environ(store_env):
        outcome = run_pipeline_locally(arguments, run_dir)
    outcome["wall_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str), encoding="utf-8")
    print_table(summary_rows(outcome) + [("wall time", f"{outcome['wall_seconds']} s"), ("run dir", str(run_dir))])
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
    parser.add_argument("--runs-dir", help="where run directories and the embedded store live (default: "
                                           "$LIVO_RUNS_DIR or ./runs)")
    parser.set_defaults(func=cmd_run)
