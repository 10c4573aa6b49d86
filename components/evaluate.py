"""Evaluate a value encoder against its base model; the single output `passed` gates registration.

Thin wrapper over `livo.evaluation.protocol.evaluate_candidate` (docs/evaluation.md). Its input is the training
task's `Model` artifact (a pointer to the value encoder in the object store; the downloaded weights must digest to
the pointer's sha256). It also writes KFP `Metrics` (every name carries its judge; the artifact's file is
metrics.json itself) and the self-contained HTML report, both with `uri` and `sha256` in their metadata
(livo.artifacts), and, when `report_uri` is set, copies metrics.json, report.html and summary.md to the object store
(an earlier metrics.json there is deleted before the evaluation starts; the new one is written last).
"""

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    preset: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    principles_uri: str = "",
    model_source: str = "",
    config_overrides: list = [],  # noqa: B006 - kfp parameters take literal defaults
    report_uri: str = "",
    device: str = "auto",
    run_id: str = "",
) -> bool:
    """Run the paper's protocol on the candidate (base model + value encoder) and return whether the gates pass.
    `run_id`: the KFP run id (the pipeline passes it; metrics `run` and the MLflow stage run)."""
    import tempfile

    from livo.artifacts import file_artifact, local_model, read_pointer
    from livo.evaluation.protocol import evaluate_candidate
    from livo.evaluation.report import format_summary_table, invalidate_uploaded_outputs, kfp_metrics, upload_outputs

    if report_uri:
        invalidate_uploaded_outputs(report_uri)  # a retried task: no earlier verdict survives a failure of this one
    workdir = tempfile.mkdtemp(prefix="livo-evaluate-")
    candidate = read_pointer(model.path, model.metadata, "Model")
    result = evaluate_candidate(
        local_model(candidate, workdir), preset=preset, model=model_source or None,
        principles=principles_uri or None, overrides=[str(item) for item in config_overrides], device=device,
        output_dir=f"{workdir}/out", run_id=run_id, training_output=candidate.get("training_output_uri") or "",
        value_encoder_uri=candidate["uri"],  # the report names the stored encoder, not this task's temporary copy
    )
    uploaded = upload_outputs(f"{workdir}/out", report_uri) if report_uri else {}
    for name, value in kfp_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    consumed = {"model_artifact_uri": model.uri}
    metrics.metadata.update({**file_artifact(result.paths["metrics"], metrics.path, uploaded.get("metrics.json", "")),
                             **consumed})
    report.metadata.update({**file_artifact(result.paths["report"], report.path, uploaded.get("report.html", "")),
                            **consumed})
    print(format_summary_table(result.metrics))
    return bool(result.metrics["passed"])
