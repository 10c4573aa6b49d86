"""Experiment tracking: one MLflow run per pipeline run, one nested run per stage; off costs nothing.

    with tracking.stage_run("train", kfp_run_id=run_id, params={...}, local_dir=output) as tracker:
        ...                                      # library code logs through tracking.active()
    tracking.active().log_metrics({"loss": 0.1}, step=10)
    tracking.tag_parent(run_id, {"livo.registered_version": "livo-toy@v3"})

Knobs (docs/tracking.md): a config's `tracking: mlflow | none` (default mlflow), overridden by `LIVO_TRACKING`;
`MLFLOW_TRACKING_URI` (default: `sqlite:///<local_dir>/mlflow.db`); `LIVO_MLFLOW_EXPERIMENT` (default `livo`);
`LIVO_KFP_RUN_ID` (the pipeline run id when a caller passes none); `LIVO_MLFLOW_PARENT_RUN_ID` (log under this
parent instead of looking it up by the `livo.kfp_run_id` tag: `livo run` creates the parent before the pipeline).

Failure contract: tracking never fails a run. The first MLflow error (server unreachable, bad answer, mlflow not
installed) logs exactly one warning line, turns tracking off for the rest of the process and is recorded in
`state()` (status `unreachable` or `failed`), so the evaluation report can say so; the stage's own outputs
(train_log.jsonl, metrics.json) are written as always. MLflow's HTTP retries are cut to seconds (`HTTP_DEFAULTS`).

This module imports nothing heavy: `mlflow` is imported only when a stage run opens with tracking on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from livo.errors import ConfigError
from livo.log import get_logger, log_event

logger = get_logger("livo.tracking")

TrackingBackend = Literal["mlflow", "none"]
BACKENDS = ("mlflow", "none")
DEFAULT_BACKEND: TrackingBackend = "mlflow"
DEFAULT_EXPERIMENT = "livo"

ENV_BACKEND = "LIVO_TRACKING"
ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "LIVO_MLFLOW_EXPERIMENT"
ENV_KFP_RUN_ID = "LIVO_KFP_RUN_ID"
ENV_PARENT_RUN_ID = "LIVO_MLFLOW_PARENT_RUN_ID"

TAG_KFP_RUN_ID = "livo.kfp_run_id"
TAG_ROLE = "livo.role"  # "pipeline" on the parent, "stage" on stage runs
TAG_STAGE = "livo.stage"
TAG_PARENT = "mlflow.parentRunId"
TAG_REGISTERED_VERSION = "livo.registered_version"

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"

# MLflow's own defaults retry an unreachable server 7 times with exponential back-off and wait 120 s per request:
# minutes per call. These apply unless the environment sets them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
}

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BATCH = 100  # params/tags per log_batch call (MLflow's limit)


# --------------------------------------------------------------------------------------------------------------------
# Settings


def resolve_backend(configured: str | None = None) -> TrackingBackend:
    """`LIVO_TRACKING` when set, else the config's value, else mlflow. ConfigError on anything else."""
    value = os.environ.get(ENV_BACKEND) or configured or DEFAULT_BACKEND
    value = str(value).strip().lower()
    if value not in BACKENDS:
        source = f"{ENV_BACKEND}={os.environ[ENV_BACKEND]!r}" if os.environ.get(ENV_BACKEND) else f"tracking: {value!r}"
        raise ConfigError(f"{source}: tracking must be one of {', '.join(BACKENDS)}")
    return value  # type: ignore[return-value]


def local_uri(directory: str | Path) -> str:
    """The embedded store: a SQLite database in `directory` (docs/tracking.md says why not the file store)."""
    return f"sqlite:///{Path(directory).resolve() / LOCAL_DB}"


def tracking_uri(local_dir: str | Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite store in `local_dir` (default: the runs directory)."""
    uri = os.environ.get(ENV_URI, "").strip()
    if uri:
        return uri
    if local_dir is None or str(local_dir).startswith("s3://"):
        from livo.paths import runs_dir

        local_dir = runs_dir()
    return local_uri(local_dir)


def redact_uri(uri: str) -> str:
    """`uri` without credentials (user:password@ and token-like query values)."""
    uri = re.sub(r"(?<=://)[^/@\s]*@", "***@", uri or "")
    return re.sub(r"(?i)([?&](?:token|password|secret|key|access_token)=)[^&]*", r"\1***", uri)


def ui_command(uri: str) -> str:
    """The one command that opens the MLflow UI on `uri` (a server URI is opened in a browser instead)."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_uri(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


# --------------------------------------------------------------------------------------------------------------------
# State of tracking in this process


_STATE: dict[str, Any] = {"backend": "none", "uri": "", "experiment_id": "", "run_id": "", "parent_run_id": "",
                          "status": "off", "error": ""}
_DISABLED = False  # set by the first failure: tracking stays off for the rest of the process


def state() -> dict[str, str]:
    """What tracking did in this process: backend, uri (redacted), experiment_id, run_id (the stage run),
    parent_run_id (the pipeline run: lineage's `mlflow_run_id`), status (ok | off | unreachable | failed), error.
    The shape evaluation metrics record under `tracking`."""
    return dict(_STATE)


def _set_state(**fields: Any) -> None:
    _STATE.update({k: ("" if v is None else v) for k, v in fields.items()})


def reset() -> None:
    """Forget an earlier failure (tests; a long-lived process that wants to try again)."""
    global _DISABLED
    _DISABLED = False
    _keep_mlflow_unloaded(False)
    _set_state(backend="none", uri="", experiment_id="", run_id="", parent_run_id="", status="off", error="")


def _is_unreachable(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(word in text for word in ("connection", "refused", "timed out", "timeout", "max retries",
                                         "name or service not known", "unreachable", "temporary failure"))


def _fail(exc: BaseException, what: str) -> None:
    """The failure contract: one warning line, tracking off for the rest of the process, the state recorded."""
    global _DISABLED
    if _DISABLED:
        return
    _DISABLED = True
    status = "unreachable" if _is_unreachable(exc) else "failed"
    error = redact_uri(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
    _set_state(status=status, error=error)
    log_event(logger, f"experiment tracking disabled for this process: {what} failed ({status}); metrics are still "
                      "written locally", logging.WARNING, uri=_STATE.get("uri"), error=error)


# --------------------------------------------------------------------------------------------------------------------
# Trackers


class NullTracker:
    """Tracking off (or failed): every call does nothing."""

    enabled = False
    run_id = ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def info(self) -> dict[str, str]:
        return state()


NULL_TRACKER = NullTracker()


class MlflowTracker:
    """One MLflow stage run. Every call is guarded: the first error disables tracking (see `_fail`). A lazy tracker
    creates its run on first use, so a stage that fails its input checks leaves no run (and no local store) behind."""

    def __init__(self, opener: Any, stage: str):
        self._opener = opener  # () -> (client, run_id)
        self.stage = stage
        self.client: Any = None
        self.run_id = ""

    @property
    def enabled(self) -> bool:
        return not _DISABLED

    @property
    def opened(self) -> bool:
        return bool(self.run_id)

    def open(self) -> bool:
        if _DISABLED:
            return False
        if not self.run_id:
            try:
                self.client, self.run_id = self._opener()
            except Exception as exc:  # noqa: BLE001 - the failure contract
                _fail(exc, f"opening the {self.stage} run")
                return False
        return True

    def _guard(self, what: str, call: Any) -> None:
        if not self.open():
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any mlflow error must not fail the run
            _fail(exc, what)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.open():
            return
        from mlflow.entities import Param

        items = [Param(_key(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            chunk = items[start:start + _BATCH]
            self._guard("logging params", lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.open():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, int(step or 0)) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and v == v]  # NaN dropped
        for start in range(0, len(items), 1000):
            chunk = items[start:start + 1000]
            self._guard("logging metrics", lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.open():
            return
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), str(v)) for k, v in tags.items()]
        self._guard("setting tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard(f"uploading {Path(path).name}",
                    lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def info(self) -> dict[str, str]:
        return state()


def _key(name: Any) -> str:
    """A name MLflow accepts (letters, digits, _ - . / and spaces; 250 characters): others become `_`."""
    return re.sub(r"[^\w\-. /]", "_", str(name))[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else __import__("json").dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[:_MAX_PARAM_CHARS - 3] + "..."


_ACTIVE: list[Any] = []


def active() -> NullTracker | MlflowTracker:
    """The tracker of the innermost open stage run, or a null one (library code logs through this)."""
    if _DISABLED or not _ACTIVE:
        return NULL_TRACKER
    return _ACTIVE[-1]


# --------------------------------------------------------------------------------------------------------------------
# MLflow plumbing (imported lazily)


class _RefuseMlflow:
    """Import hook installed while tracking is off: `import mlflow` fails with ImportError instead of loading it.
    Needed because `import deepspeed` imports mlflow on its own whenever it is installed
    (deepspeed/autotuning/autotuner.py, inside try/except), ~1 s and ~100 MB per training process for nothing."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".")[0] != "mlflow" or "mlflow" in sys.modules:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: Any) -> Any:
        raise ImportError("mlflow is not loaded while experiment tracking is off (tracking: none / LIVO_TRACKING=none)",
                          name=spec.name)

    def exec_module(self, module: Any) -> None:  # never reached: create_module refuses
        raise ImportError(module.__name__)


_REFUSE_MLFLOW = _RefuseMlflow()


def _keep_mlflow_unloaded(keep: bool) -> None:
    if keep and "mlflow" not in sys.modules and _REFUSE_MLFLOW not in sys.meta_path:
        sys.meta_path.insert(0, _REFUSE_MLFLOW)
    elif not keep and _REFUSE_MLFLOW in sys.meta_path:
        sys.meta_path.remove(_REFUSE_MLFLOW)


def _client(uri: str) -> Any:
    _keep_mlflow_unloaded(False)
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # migrations and store set-up log INFO lines to stderr
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / LOCAL_ARTIFACTS).resolve().as_uri()
    return None


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))
    except Exception:  # noqa: BLE001 - created concurrently by another stage: use theirs
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def find_parent(client: Any, experiment_id: str, kfp_run_id: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_KFP_RUN_ID}` = '{_quote(kfp_run_id)}' and "
                                                             f"tags.`{TAG_ROLE}` = 'pipeline'",
                              max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _parent_run(client: Any, experiment_id: str, kfp_run_id: str, run_name: str | None = None) -> str | None:
    """The pipeline run's MLflow run: `LIVO_MLFLOW_PARENT_RUN_ID`, else found by its KFP run id tag, else created."""
    given = os.environ.get(ENV_PARENT_RUN_ID, "").strip()
    if given:
        if kfp_run_id and client.get_run(given).data.tags.get(TAG_KFP_RUN_ID) != kfp_run_id:
            client.set_tag(given, TAG_KFP_RUN_ID, kfp_run_id)
        return given
    if not kfp_run_id:
        return None
    found = find_parent(client, experiment_id, kfp_run_id)
    if found:
        return found
    run = client.create_run(experiment_id, tags={TAG_KFP_RUN_ID: kfp_run_id, TAG_ROLE: "pipeline"},
                            run_name=run_name or f"pipeline-{kfp_run_id[:40]}")
    return run.info.run_id


def create_parent_run(*, run_name: str, tags: Mapping[str, Any] | None = None, local_dir: str | Path | None = None,
                      experiment: str | None = None, backend: str | None = None) -> str | None:
    """Create the pipeline's MLflow run before its KFP run id is known (`livo run`); stages then log under it
    through `LIVO_MLFLOW_PARENT_RUN_ID`. Returns its run id, or None (tracking off or failed: one warning)."""
    if resolve_backend(backend) == "none" or _DISABLED:
        return None
    uri = tracking_uri(local_dir)
    _set_state(backend="mlflow", uri=redact_uri(uri))
    try:
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT, uri)
        run = client.create_run(experiment_id, tags={TAG_ROLE: "pipeline", **{k: str(v) for k, v in
                                                                               (tags or {}).items()}},
                                run_name=run_name)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, "creating the pipeline run")
        return None
    _set_state(experiment_id=experiment_id, run_id="", parent_run_id=run.info.run_id, status="ok", error="")
    return run.info.run_id


def finish_parent_run(run_id: str | None, status: str = "FINISHED", tags: Mapping[str, Any] | None = None,
                      local_dir: str | Path | None = None) -> None:
    """Tag and close a parent made by `create_parent_run` (no-op for None or after a failure)."""
    if not run_id or _DISABLED:
        return
    try:
        client = _client(tracking_uri(local_dir))
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, str(value))
        client.set_terminated(run_id, status=status)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, "closing the pipeline run")


def tag_parent(kfp_run_id: str, tags: Mapping[str, Any], *, local_dir: str | Path | None = None,
               experiment: str | None = None, backend: str | None = None) -> bool:
    """Set `tags` on the pipeline run's MLflow run (e.g. {"livo.registered_version": "livo-toy@v3"} after
    registration). Finds or creates it like a stage does. True when the tags were set; never raises for MLflow."""
    if resolve_backend(backend) == "none" or _DISABLED:
        return False
    kfp_run_id = kfp_run_id or os.environ.get(ENV_KFP_RUN_ID, "")
    uri = tracking_uri(local_dir)
    _set_state(backend="mlflow", uri=redact_uri(uri))
    try:
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT, uri)
        parent = _parent_run(client, experiment_id, kfp_run_id)
        if parent is None:
            return False
        for key, value in tags.items():
            client.set_tag(parent, key, str(value))
    except Exception as exc:  # noqa: BLE001
        _fail(exc, "tagging the pipeline run")
        return False
    _set_state(experiment_id=experiment_id, parent_run_id=parent, status="ok", error="")
    return True


def pipeline_run_id(kfp_run_id: str, *, local_dir: str | Path | None = None, experiment: str | None = None,
                    backend: str | None = None) -> str:
    """The MLflow run id of the pipeline run `kfp_run_id` (lineage's `mlflow_run_id`), created when no stage made it
    yet; "" when tracking is off or failed (one warning)."""
    return state()["parent_run_id"] if tag_parent(kfp_run_id, {}, local_dir=local_dir, experiment=experiment,
                                                  backend=backend) else ""


@contextlib.contextmanager
def stage_run(stage: str, *, kfp_run_id: str = "", run_name: str | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              backend: str | None = None, local_dir: str | Path | None = None,
              experiment: str | None = None, lazy: bool = False) -> Iterator[NullTracker | MlflowTracker]:
    """Open the MLflow run of one stage (nested under the pipeline run when a KFP run id or
    `LIVO_MLFLOW_PARENT_RUN_ID` is known) and make it `active()` inside the block. `backend` is the config's
    `tracking` (None: mlflow), `LIVO_TRACKING` overrides it. Tracking off: a NullTracker, mlflow never imported.
    The run ends FINISHED, or FAILED when the block raises (the exception propagates unchanged). `lazy`: the run
    (and a local store) is created on the first call through the tracker, so a stage refused at its door leaves
    nothing behind (training opens lazily: its input checks run inside the block)."""
    chosen = resolve_backend(backend)
    if chosen == "none":
        _set_state(backend="none", uri="", experiment_id="", run_id="", parent_run_id="", status="off", error="")
        _keep_mlflow_unloaded(True)
        yield NULL_TRACKER
        return
    if _DISABLED:  # an earlier failure in this process: state() keeps saying why
        yield NULL_TRACKER
        return
    kfp_run_id = kfp_run_id or os.environ.get(ENV_KFP_RUN_ID, "")
    uri = tracking_uri(local_dir)
    _set_state(backend="mlflow", uri=redact_uri(uri), experiment_id="", run_id="", parent_run_id="", status="ok",
               error="")

    def opener() -> tuple[Any, str]:
        started = time.perf_counter()
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT, uri)
        _set_state(experiment_id=experiment_id)
        parent = _parent_run(client, experiment_id, kfp_run_id)
        _set_state(parent_run_id=parent)
        run_tags = {TAG_ROLE: "stage", TAG_STAGE: stage, **({TAG_KFP_RUN_ID: kfp_run_id} if kfp_run_id else {}),
                    **({TAG_PARENT: parent} if parent else {}), **{k: str(v) for k, v in (tags or {}).items()}}
        run = client.create_run(experiment_id, tags=run_tags, run_name=run_name or stage)
        _set_state(run_id=run.info.run_id)
        log_event(logger, "tracking", stage=stage, uri=redact_uri(uri), run_id=run.info.run_id,
                  seconds=round(time.perf_counter() - started, 2))
        return client, run.info.run_id

    tracker = MlflowTracker(opener, stage)
    if not lazy and tracker.open() and params:
        tracker.log_params(params)
    elif lazy and params:
        raise ValueError("stage_run(lazy=True) takes no params: log them with the first call")
    _ACTIVE.append(tracker)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        _ACTIVE.remove(tracker)
        if tracker.opened:
            tracker._guard(f"closing the {stage} run", lambda: tracker.client.set_terminated(tracker.run_id, status))
