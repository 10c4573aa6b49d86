"""Register the evaluated value encoder as the next version of the model (runs only when evaluation passed).

Thin wrapper over `livo.registry.registration.register_model` (atomic, idempotent per pipeline run: a retried task
returns the version it already created). The request is assembled by `livo.orchestration.registration_request`
from the training run's result.json and the evaluation's files; the registration is recorded for the run's outcome.
`allow_ungated` (the pipeline's `run_allow_ungated`) lets an evaluation that decided no gate register, marked ungated.

Its artifact inputs are the run's `Dataset`, `Model`, `Metrics` and `HTML` report (livo.artifacts): the digests they
carry go into the request (`artifact_digests`), and registration refuses, before writing anything, when one differs
from what it computes from the object store (`ArtifactDigestMismatch`, exit-2 class; the run's outcome names it).
The KFP URIs of the consumed artifacts are kept in the run's registration record.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def register(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Input[Metrics],
    report: Input[HTML],
    model_name: str,
    training_output_uri: str,
    evaluation_uri: str,
    principles_uri: str,
    run_id: str,
    run_name: str,
    pipeline_spec_sha256: str,
    image: str,
    allow_ungated: bool = False,
) -> str:
    """Register the candidate; returns `s3://…/models/<name>/<version>/`. An evaluation that decided no gate is
    refused unless `allow_ungated`: nothing is registered, the cause is kept for the run's outcome (`rejected`) and
    the task returns ""."""
    import tempfile

    from livo import tracking
    from livo.artifacts import check_file_artifact, read_pointer, registration_digests
    from livo.log import get_logger, log_event
    from livo.orchestration import record_failure, record_registration, registration_request
    from livo.registry.registration import ArtifactDigestMismatch, UngatedEvaluation, register_model
    from livo.store import ObjectStore

    store = ObjectStore.from_env()
    digests = registration_digests(model=read_pointer(model.path, model.metadata, "Model"),
                                   dataset=read_pointer(dataset.path, dataset.metadata, "Dataset"),
                                   metrics=check_file_artifact(metrics.path, metrics.metadata, "Metrics"),
                                   report=check_file_artifact(report.path, report.metadata, "HTML report"))
    consumed = {name: {"uri": artifact.uri, "sha256": digests[key]} for name, key, artifact in (
        ("dataset", "dataset_manifest", dataset), ("model", "value_encoder", model), ("metrics", "metrics", metrics),
        ("report", "report", report))}
    with tempfile.TemporaryDirectory(prefix="livo-register-") as workdir:
        request = registration_request(
            store, model_name=model_name, training_output_uri=training_output_uri, evaluation_uri=evaluation_uri,
            principles_uri=principles_uri, run_id=run_id, run_name=run_name,
            pipeline_spec_sha256=pipeline_spec_sha256, image=image, workdir=workdir, allow_ungated=allow_ungated,
        ).model_copy(update={"artifact_digests": digests,
                             # the pipeline run's MLflow run (never raises: tracking must not fail a registration)
                             "mlflow_run_id": tracking.pipeline_run_id(run_id),
                             "tracking_uri": tracking.state()["uri"]})
        try:
            result = register_model(store, request)
        except ArtifactDigestMismatch as exc:  # the artifacts and the store disagree: the run fails, naming both
            record_failure(store, run_id, step="register", message=str(exc))
            raise
        except UngatedEvaluation as exc:  # a verdict, not a fault: no retry, the run's outcome is `rejected`
            record_failure(store, run_id, step="register", message=str(exc))
            log_event(get_logger("livo.components.register"), "registration refused", model=model_name,
                      reason=str(exc))
            return ""
    tracking.tag_parent(run_id, {"livo.registered_version": f"{result.model_name}@{result.version}"})
    record_registration(store, run_id, {"model_name": result.model_name, "version": result.version, "uri": result.uri,
                                        "created": result.created, "report_uri": result.uri + "report.html",
                                        "ungated": result.ungated, "artifacts": consumed})
    log_event(get_logger("livo.components.register"), "registered", model=model_name, version=result.version,
              uri=result.uri, created=result.created)
    return result.uri
