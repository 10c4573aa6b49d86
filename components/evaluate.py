"""Evaluate a value encoder against its base model; the single output `passed` gates registration.

Thin wrapper over `livo.evaluation.protocol.evaluate_candidate` (docs/evaluation.md). It also writes KFP `Metrics`
(every name carries its judge) and the self-contained HTML report, and, when `report_uri` is set, copies
metrics.json, report.html and summary.md to the object store (an earlier metrics.json there is deleted before the
evaluation starts; the new one is written last).
"""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components._image import LIVO_IMAGE


@dsl.component(base_image=LIVO_IMAGE, install_kfp_package=False)
def evaluate(
    value_encoder_uri: str,
    preset: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    principles_uri: str = "",
    model_source: str = "",
    config_overrides: list = [],  # noqa: B006 - kfp parameters take literal defaults
    report_uri: str = "",
    device: str = "auto",
) -> bool:
    """Run the paper's protocol on the candidate (base model + value encoder) and return whether the gates pass."""
    import shutil
    import tempfile

    from livo.evaluation.protocol import evaluate_candidate, local_value_encoder
    from livo.evaluation.report import format_summary_table, invalidate_uploaded_outputs, kfp_metrics, upload_outputs

    if report_uri:
        invalidate_uploaded_outputs(report_uri)  # a retried task: no earlier verdict survives a failure of this one
    workdir = tempfile.mkdtemp(prefix="livo-evaluate-")
    result = evaluate_candidate(
        local_value_encoder(value_encoder_uri, workdir), preset=preset, model=model_source or None,
        principles=principles_uri or None, overrides=[str(item) for item in config_overrides], device=device,
        output_dir=f"{workdir}/out",
    )
    for name, value in kfp_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    shutil.copyfile(result.paths["report"], report.path)
    if report_uri:
        upload_outputs(f"{workdir}/out", report_uri)
    print(format_summary_table(result.metrics))
    return bool(result.metrics["passed"])
