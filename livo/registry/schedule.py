"""Scheduled retraining: a KFP recurring run of the `livo-full` pipeline through `kfp_server_api` (API v2beta1).

The KFP SDK pins a recurring run to one pipeline version; the REST API accepts a pipeline reference without a
version, which KFP resolves to the pipeline's latest version at every trigger — so uploading a new version of the
pipeline updates the schedule without recreating it. Each triggered run starts with the principles check
(`livo.registry.registration.principles_changed`) and is a cheap, successful no-op (outcome `skipped`) while the
principle set is unchanged since the latest registered model.

The image the scheduled runs use is the one in the package: `livo schedule --image REF` compiles the package with
REF, and when the server's latest version of the pipeline is not that package, the package is uploaded as a new
version named after its sha256 (`<pipeline>-<12 hex>`), so the recurring run pulls exactly REF.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from livo.config import LivoConfig
from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event

logger = get_logger("livo.registry.schedule")

DEFAULT_PIPELINE_NAME = "livo-full"
DEFAULT_EXPERIMENT = "livo"


class ScheduleResult(LivoConfig):
    recurring_run_id: str
    display_name: str
    pipeline_id: str
    experiment_id: str
    cron: str
    parameters: dict[str, Any]
    pipeline_uploaded: bool = False
    version_uploaded: str | None = None
    replaced: str | None = None


def kfp_api_client(host: str, token: str | None = None) -> Any:
    """A `kfp_server_api.ApiClient` for `host` (``http(s)://…``), with a bearer token when given."""
    import kfp_server_api

    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"KFP host {host!r}: expected http(s)://host[:port][/pipeline]")
    config = kfp_server_api.Configuration(host=host.rstrip("/"))
    if token:
        config.api_key["authorization"] = token
        config.api_key_prefix["authorization"] = "Bearer"
    return kfp_server_api.ApiClient(config)


def _equals_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


class _Kfp:
    """Error translation around the generated API classes."""

    def __init__(self, api_client: Any):
        import kfp_server_api

        self.client = api_client
        self.host = api_client.configuration.host
        self.pipelines = kfp_server_api.PipelineServiceApi(api_client)
        self.uploads = kfp_server_api.PipelineUploadServiceApi(api_client)
        self.experiments = kfp_server_api.ExperimentServiceApi(api_client)
        self.recurring_runs = kfp_server_api.RecurringRunServiceApi(api_client)

    def call(self, action: str, func: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        from kfp_server_api.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return func(*args, **kwargs)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            message = _api_message(exc)
            hint = "; check KFP_TOKEN" if exc.status in (401, 403) else ""
            raise LivoError(f"KFP API at {self.host} refused to {action}: HTTP {exc.status} {message}{hint}") from None
        except (HTTPError, OSError) as exc:
            raise LivoError(f"KFP API at {self.host} is unreachable while trying to {action} "
                            f"({' '.join(str(exc).split())[:200]}); check --host / KFP_HOST") from None


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or body.get("error") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


def schedule_retraining(api_client: Any, *, cron: str, parameters: dict[str, Any], display_name: str,
                        pipeline_name: str = DEFAULT_PIPELINE_NAME, experiment: str = DEFAULT_EXPERIMENT,
                        namespace: str | None = None, package: Path | None = None, max_concurrency: int = 1,
                        catchup: bool = False, replace: bool = False, service_account: str | None = None,
                        description: str = "") -> ScheduleResult:
    """Create the recurring run `display_name` of the latest version of `pipeline_name`.

    The pipeline is uploaded from `package` when the server does not have it yet (otherwise a missing pipeline is an
    error). An existing recurring run with the same name in the experiment is an error unless `replace`.
    """
    import kfp_server_api as k

    from livo.orchestration import validate_kfp_cron

    cron = validate_kfp_cron(cron)
    if max_concurrency < 1:
        raise ConfigError(f"max concurrency {max_concurrency}: must be at least 1")
    kfp = _Kfp(api_client)

    if package is not None and not Path(package).is_file():
        raise ConfigError(f"{package}: no such pipeline package; run `livo compile`")
    pipeline = kfp.call(f"look up pipeline {pipeline_name!r}", kfp.pipelines.pipeline_service_get_pipeline_by_name,
                        pipeline_name, namespace=namespace, missing_ok=True)
    uploaded = False
    version_uploaded = None
    if pipeline is None:
        if package is None:
            raise ConfigError(f"pipeline {pipeline_name!r} does not exist on {kfp.host}; upload it first or pass the "
                              "compiled package (--package pipelines/livo_full.yaml) to upload it")
        pipeline = kfp.call(f"upload pipeline {pipeline_name!r}", kfp.uploads.upload_pipeline, str(package),
                            name=pipeline_name, display_name=pipeline_name, namespace=namespace)
        uploaded = True
        log_event(logger, "pipeline uploaded", pipeline=pipeline_name, pipeline_id=pipeline.pipeline_id)
    elif package is not None:
        version_uploaded = _ensure_latest_version(kfp, pipeline, pipeline_name, Path(package))

    found = kfp.call(f"look up experiment {experiment!r}", kfp.experiments.experiment_service_list_experiments,
                     filter=_equals_filter("display_name", experiment), namespace=namespace)
    experiments = [e for e in (found.experiments or []) if e.display_name == experiment]
    if experiments:
        experiment_id = experiments[0].experiment_id
    else:
        created = kfp.call(f"create experiment {experiment!r}", kfp.experiments.experiment_service_create_experiment,
                           k.V2beta1Experiment(display_name=experiment, namespace=namespace))
        experiment_id = created.experiment_id

    listed = kfp.call("list recurring runs", kfp.recurring_runs.recurring_run_service_list_recurring_runs,
                      experiment_id=experiment_id, filter=_equals_filter("display_name", display_name),
                      namespace=namespace)
    clashes = [r for r in (listed.recurring_runs or []) if r.display_name == display_name]
    replaced = None
    if clashes:
        if not replace:
            raise ConfigError(f"recurring run {display_name!r} already exists in experiment {experiment!r} "
                              f"(id {clashes[0].recurring_run_id}); pass --replace to replace it or choose --name")
        for old in clashes:
            kfp.call(f"delete recurring run {old.recurring_run_id}",
                     kfp.recurring_runs.recurring_run_service_delete_recurring_run, old.recurring_run_id)
        replaced = clashes[0].recurring_run_id

    body = k.V2beta1RecurringRun(
        display_name=display_name,
        description=description or f"LiVO retraining of {pipeline_name} when the principle set changes",
        # no pipeline_version_id: KFP runs the pipeline's latest version at every trigger
        pipeline_version_reference=k.V2beta1PipelineVersionReference(pipeline_id=pipeline.pipeline_id),
        runtime_config=k.V2beta1RuntimeConfig(parameters=parameters),
        trigger=k.V2beta1Trigger(cron_schedule=k.V2beta1CronSchedule(cron=cron)),
        mode="ENABLE",
        max_concurrency=str(max_concurrency),
        no_catchup=not catchup,
        experiment_id=experiment_id,
        namespace=namespace,
        service_account=service_account or None,
    )
    created_run = kfp.call(f"create recurring run {display_name!r}",
                           kfp.recurring_runs.recurring_run_service_create_recurring_run, body)
    result = ScheduleResult(recurring_run_id=created_run.recurring_run_id, display_name=display_name,
                            pipeline_id=pipeline.pipeline_id, experiment_id=experiment_id, cron=cron,
                            parameters=parameters, pipeline_uploaded=uploaded, version_uploaded=version_uploaded,
                            replaced=replaced)
    log_event(logger, "recurring run created", recurring_run_id=result.recurring_run_id, name=display_name,
              cron=cron, pipeline=pipeline_name, experiment=experiment, replaced=replaced)
    return result


def package_version_name(pipeline_name: str, package: Path) -> str:
    """`<pipeline>-<first 12 hex of the package's sha256>`: the same package always gets the same version name."""
    return f"{pipeline_name}-{hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]}"


def _ensure_latest_version(kfp: _Kfp, pipeline: Any, pipeline_name: str, package: Path) -> str | None:
    """Make `package` the latest version of the existing `pipeline`; returns the uploaded version's name, or None
    when the latest version already is this package."""
    wanted = package_version_name(pipeline_name, package)
    listed = kfp.call(f"list the versions of pipeline {pipeline_name!r}",
                      kfp.pipelines.pipeline_service_list_pipeline_versions, pipeline.pipeline_id, page_size=1,
                      sort_by="created_at desc")
    latest = (listed.pipeline_versions or [None])[0]
    if latest is not None and wanted in (latest.display_name, getattr(latest, "name", None)):
        return None
    version = kfp.call(f"upload version {wanted!r} of pipeline {pipeline_name!r}",
                       kfp.uploads.upload_pipeline_version, str(package), name=wanted, display_name=wanted,
                       pipelineid=pipeline.pipeline_id)
    log_event(logger, "pipeline version uploaded", pipeline=pipeline_name, version=wanted,
              pipeline_version_id=version.pipeline_version_id)
    return wanted
