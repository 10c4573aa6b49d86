"""Audit-grade report: bootstrap intervals from the protocol to every format, provenance, gate configuration,
tracking state, the training curve and the registered version's block (issue 14)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np

from livo.evaluation.config import EvalPrompt, EvaluationConfig
from livo.evaluation.protocol import PrincipleImages, PrinciplePlan, _score_principle
from livo.evaluation.report import (
    REGISTRATION_MARKER,
    format_markdown,
    format_summary_table,
    render_html,
    svg_line_chart,
    with_registration,
)


class _EchoConcept:
    """A concept judge whose P(concept) is the 'image' itself (images are floats here)."""

    id = "echo@1"

    def score(self, images, concept):
        return np.asarray(images, dtype=float)


def _scored() -> dict:
    """Toxicity principle, 2 prompts × 5 images: base P is 0.9 on prompt A and 0.1 on B, aligned 0.1 everywhere."""
    principle = SimpleNamespace(id="bloody", category="toxicity", text="bloody considered inappropriate",
                                inference_dropout=0.0, evaluation=SimpleNamespace(concept="blood"))
    prompts = [EvalPrompt(text="prompt a", split="seen"), EvalPrompt(text="prompt b", split="unseen")]
    item = PrinciplePlan(principle=principle, kind="toxicity", prompts=prompts, judge_name="echo", judge=_EchoConcept())
    images = PrincipleImages(prompts=["prompt a"] * 5 + ["prompt b"] * 5, seeds=list(range(10)),
                             base=[0.9] * 5 + [0.1] * 5, aligned=[0.1] * 10, used_value_token=[True] * 10)
    config = EvaluationConfig(images_per_prompt=5, seed=0)
    return _score_principle(item, images, config, SimpleNamespace(subject_judge=None))


def test_protocol_writes_prompt_bootstrap_intervals_per_principle_and_split():
    entry = _scored()
    assert entry["base"]["R"] == 50.0 and entry["aligned"]["R"] == 0.0 and entry["improvement"]["R"] == 50.0
    # base R per prompt is 100 and 0: resampled means 0 / 50 / 100 -> [0, 100]; aligned 0 on both -> zero width
    assert entry["ci"]["base"]["R"] == [0.0, 100.0] and entry["ci"]["aligned"]["R"] == [0.0, 0.0]
    assert entry["ci"]["improvement"]["R"] == [0.0, 100.0]
    assert entry["ci"]["base"]["S"] == [10.0, 90.0] and entry["ci"]["aligned"]["S"] == [10.0, 10.0]
    assert set(entry["ci"]["base"]) == {"R", "S", "Max", "Prob"}
    assert entry["ci_method"] == {"method": "percentile bootstrap", "unit": "prompt",
                                  "statistic": "mean over prompts of the per-prompt metric", "paired": True,
                                  "resamples": 1000, "confidence": 0.95, "seed": 0, "prompts": 2}
    seen = entry["splits"]["seen"]  # one prompt per split: zero-width intervals at the split's value
    assert seen["ci"]["base"]["R"] == [100.0, 100.0] and seen["ci"]["improvement"]["R"] == [100.0, 100.0]
    assert entry["splits"]["unseen"]["ci"]["improvement"]["R"] == [0.0, 0.0]
    assert "zero width" in seen["ci_method"]["note"]


def _metrics(**extra) -> dict:
    entry = _scored()
    return {"principles": {"bloody": entry}, "quality": {}, "judges": {}, "gates": [
        {"name": "bloody: R ceiling", "passed": True, "held": True, "waived": False, "waiver": None,
         "unavailable": False, "value": 0.0, "threshold": 20.0, "judge": "echo@1", "detail": "aligned R 0.00"}],
        "passed": True,
        "config": {"gates": {"bias_metric": "D1", "toxicity_metric": "R", "max_toxicity": 20.0, "max_bias": None,
                             "per_principle": {}, "waive": {}}},
        "context": {"preset": "toy", "value_encoder": "s3://livo/runs/r1/value_encoder", "model": "toy",
                    "principles": "configs/principles/default.yaml"},
        "evaluated": {"value_encoder_sha256": "sha256:" + "1" * 64, "base_model_fingerprint": "sha256:" + "2" * 64,
                      "principle_set_hash": "sha256:" + "3" * 64, "config_sha256": "sha256:" + "4" * 64},
        **extra}


def _result(metrics: dict):
    return SimpleNamespace(metrics=metrics, images={}, config=EvaluationConfig(report_images_per_principle=0))


def test_every_format_shows_intervals_gate_thresholds_and_provenance():
    metrics = _metrics(run={"run_id": "kfp-run-42"})
    table = format_summary_table(metrics)
    assert "50.00 [0.00, 100.00]" in table and "0.00 [0.00, 0.00]" in table
    assert "-50.00 [-100.00, 0.00]" in table  # change = aligned − base: the negated improvement interval
    assert "95 % percentile bootstrap interval, 1000 resamples" in table and "KFP run: kfp-run-42" in table
    markdown = format_markdown(metrics)
    assert "| bloody | R | 50.00 [0.00, 100.00] | 0.00 [0.00, 0.00] | -50.00 [-100.00, 0.00] | `echo@1` |" in markdown
    assert "| seen | " not in markdown and "| bloody | R (seen) | 100.00 [100.00, 100.00] |" in markdown
    assert "| max_toxicity | 20.000 |" in markdown and "| toxicity_metric | R |" in markdown
    assert "max_bias" not in markdown  # unset thresholds are not listed
    for row in ("| KFP run id | `kfp-run-42` |", "| value encoder | `s3://livo/runs/r1/value_encoder` |",
                f"| value encoder sha256 | `sha256:{'1' * 64}` |", f"| principle set hash | `sha256:{'3' * 64}` |",
                f"| evaluation config sha256 | `sha256:{'4' * 64}` |"):
        assert row in markdown, row
    page = render_html(_result(metrics))
    assert "<td>50.00 [0.00, 100.00]</td>" in page and "id='provenance'" in page and "kfp-run-42" in page
    assert "<th>max_toxicity</th><td><code>20.000</code></td>" in page
    assert REGISTRATION_MARKER in page and "id='training'" not in page and "id='tracking'" not in page


def test_negative_zero_is_never_an_improvement():
    metrics = _metrics()
    entry = metrics["principles"]["bloody"]
    entry["base"]["S"], entry["aligned"]["S"] = 12.0, 12.004  # change +0.004 -> "0.00", not improved
    entry["base"]["Max"], entry["aligned"]["Max"] = 12.004, 12.0  # change -0.004 -> "0.00", not "-0.00", not good
    entry["ci"]["improvement"]["Max"] = [-0.001, 0.0]
    entry["improvement"]["Max"] = -0.004
    from livo.evaluation.config import GateConfig
    from livo.evaluation.gates import apply_gates

    metrics["gates"] = apply_gates(metrics, GateConfig(toxicity_metric="Max", min_toxicity_improvement=1.0))
    assert "a drop of 0.00 (needs at least 1)" in metrics["gates"][0]["detail"]
    for text in (format_summary_table(metrics), format_markdown(metrics), render_html(_result(metrics))):
        assert not re.search(r"-0\.00(?!\d)", text)  # (the gate's value -0.004 at 3 decimals is a real number)
    page = render_html(_result(metrics))
    rows = {m[0]: m[1] for m in re.findall(r"<tr><td>(\w+)</td>.*?<td class='(\w*)'>", page)}
    assert rows["R"] == "good" and rows["Max"] == "" and rows["S"] == ""


def test_tracking_state_is_said_clearly_and_absent_keys_render():
    off = _metrics(tracking={"backend": "mlflow", "uri": None, "status": "off"})
    assert "tracking: OFF: experiment tracking was switched off" in format_summary_table(off)
    down = _metrics(tracking={"backend": "mlflow", "uri": "http://mlflow:5000", "experiment_id": None, "run_id": None,
                              "status": "unreachable", "error": "connection refused"})
    page = render_html(_result(down))
    assert ("<p id='tracking' class='banner'><b>Tracking</b>: UNREACHABLE: mlflow at http://mlflow:5000 could not be "
            "reached (connection refused)") in page
    assert "**Tracking**: UNREACHABLE" in format_markdown(down)
    ok = _metrics(tracking={"backend": "mlflow", "uri": "http://mlflow:5000", "experiment_id": "3", "run_id": "abc",
                            "status": "ok", "error": None})
    assert "tracking: mlflow run abc (experiment 3) at http://mlflow:5000" in format_summary_table(ok)
    older = _metrics()
    assert "tracking" not in format_summary_table(older) and "Tracking" not in format_markdown(older)
    assert "| KFP run id | `- (not run by a pipeline, or not recorded)` |" in format_markdown(older)


def test_training_curve_is_inline_svg_from_the_training_log():
    log = [{"step": s, "loss": 2.0 - s / 100, "hinge_w": 1.0, "hinge_l": 1.0 - s / 100, "lr": 1e-6,
            "grad_norm": 0.5, "samples_per_s": 8.0} for s in (60, 20, 40)]
    page = render_html(_result(_metrics(training_log=log)))
    section = page[page.index("id='training'"):]
    section = section[:section.index("</section>")]
    assert "<svg" in section and "<script" not in page and "<img" not in section
    lines = dict(re.findall(r'data-name="(\w+)"[^>]*points="([^"]+)"', section))
    assert set(lines) == {"loss", "hinge_w", "hinge_l"} and len(lines["loss"].split()) == 3
    xs = [float(p.split(",")[0]) for p in lines["loss"].split()]
    assert xs == sorted(xs)  # drawn in step order
    assert "<th>step</th><td><code>60</code></td>" in section
    assert "3 logged steps, step 20 to 60; loss 1.8000 -> 1.4000" in format_markdown(_metrics(training_log=log))
    assert "no data" in svg_line_chart("empty", [])


def test_registration_block_replaces_the_marker_and_keeps_the_rest():
    lineage = {"model": "livo-toy@v3", "git_commit": "0123abc", "image": "reg/livo@sha256:" + "c" * 64,
               "kfp_run_id": "run-1", "mlflow_run_id": "mlf-9", "dataset_id": "ds-1", "dataset_rows": 96,
               "dataset_by_principle": {"gender-equality": 60, "nudity": 36}}
    page = render_html(_result(_metrics()))
    stored = with_registration(page, lineage)
    assert REGISTRATION_MARKER not in stored and stored.replace(
        stored[stored.index("<section id='registration'>"):stored.index("</section>", stored.index(
            "<section id='registration'>")) + len("</section>")], REGISTRATION_MARKER) == page
    for cell in ("<th>model</th><td><code>livo-toy@v3</code></td>", "<th>code commit</th><td><code>0123abc</code>",
                 "<th>MLflow run id</th><td><code>mlf-9</code>", "<th>dataset size (pairs)</th><td><code>96</code>",
                 "<th>dataset pairs: nudity</th><td><code>36</code>"):
        assert cell in stored, cell
    assert render_html(_result(_metrics()), lineage=lineage) == stored
    # a report without the marker (older) gets the block after its title, else at the top of the body
    assert with_registration("<html><body><h1>x</h1><p>y</p></body></html>", lineage).index("registration") < \
        with_registration("<html><body><h1>x</h1><p>y</p></body></html>", lineage).index("<p>y")
    assert "<body><section id='registration'>" in with_registration("<html><body>z</body></html>", lineage)
