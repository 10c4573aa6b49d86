"""Gates and report formats on a hand-made metrics dict."""

from __future__ import annotations

import copy

import pytest

from livo.evaluation.config import GateConfig
from livo.evaluation.gates import apply_gates
from livo.evaluation.report import format_markdown, format_summary_table, kfp_metrics, svg_bar_chart

METRICS = {
    "principles": {
        "gender-equality": {"kind": "bias", "available": True, "judge": "toy-attribute@1", "text": "gender equality",
                            "base": {"D1": 80.0, "D2": 56.57}, "aligned": {"D1": 20.0, "D2": 14.14},
                            "improvement": {"D1": 60.0, "D2": 42.43}},
        "bloody": {"kind": "toxicity", "available": True, "judge": "toy-concept@1", "text": "bloody",
                   "base": {"R": 90.0, "S": 85.0, "Max": 99.0, "Prob": 100.0},
                   "aligned": {"R": 88.0, "S": 80.0, "Max": 97.0, "Prob": 100.0},
                   "improvement": {"R": 2.0, "S": 5.0, "Max": 2.0, "Prob": 0.0}},
        "racial-equality": {"kind": "bias", "available": False, "judge": None, "text": "racial equality",
                            "reason": "no judge configured for 'race'"},
    },
    "quality": {"FID": {"judge": "pixel-stats-v1", "aligned": 3.5, "higher_is_better": False},
                "CLIPScore": {"judge": "clipscore:vit-l", "base": 30.0, "aligned": 29.0, "higher_is_better": True},
                "unavailable": {"IS": "extractor has no classifier head"}},
}


def test_gates_pass_and_fail_on_thresholds():
    gates = apply_gates(METRICS, GateConfig(min_bias_improvement=50, min_toxicity_improvement=5, max_fid=4.0,
                                            max_clip_score_drop=0.5))
    by_name = {g["name"]: g for g in gates}
    assert by_name["gender-equality: D1 improvement"]["passed"] is True
    assert by_name["bloody: R improvement"]["passed"] is False and by_name["bloody: R improvement"]["value"] == 2.0
    assert by_name["quality: FID"]["passed"] is True
    assert by_name["quality: CLIPScore"]["passed"] is False  # dropped by 1.0 > 0.5
    assert by_name["racial-equality: judged"]["skipped"] is True and by_name["racial-equality: judged"]["passed"]
    assert all(g["judge"] for g in gates if not g["skipped"])


def test_gate_metric_choice_and_unavailable_policy():
    gates = apply_gates(METRICS, GateConfig(toxicity_metric="S", min_toxicity_improvement=5,
                                            max_inception_score_drop=1.0, fail_on_unavailable=True))
    by_name = {g["name"]: g for g in gates}
    assert by_name["bloody: S improvement"]["passed"] is True
    assert by_name["racial-equality: judged"]["passed"] is False
    assert by_name["quality: IS"]["passed"] is False and "classifier head" in by_name["quality: IS"]["detail"]


def test_summary_table_markdown_and_kfp_metrics_name_judges():
    metrics = copy.deepcopy(METRICS)
    metrics["gates"] = apply_gates(metrics, GateConfig(min_toxicity_improvement=5))
    metrics["passed"] = all(g["passed"] for g in metrics["gates"])
    table = format_summary_table(metrics)
    assert table.splitlines()[0] == "LiVO evaluation: FAILED"
    assert "gender-equality" in table and "toy-attribute@1" in table and "80.00" in table and "-60.00" in table
    assert "unavailable: no judge configured for 'race'" in table
    assert "FAILED bloody: R improvement" in table
    markdown = format_markdown(metrics)
    assert "| bloody | R | 90.00 | 88.00 | -2.00 | `toy-concept@1` |" in markdown
    flat = kfp_metrics(metrics)
    assert flat["gender-equality.D1.aligned [toy-attribute@1]"] == 20.0
    assert flat["quality.FID.aligned [pixel-stats-v1]"] == 3.5 and flat["passed"] == 0.0


def test_svg_bar_chart_scales_bars_to_values():
    svg = svg_bar_chart("t", [("D1", 50.0, 25.0), ("D2", None, 10.0)], unit_max=100.0, width=470)
    chart_w = 470 - 170
    assert f'class="bar base" x="110" y="30" width="{chart_w * 0.5:.1f}"' in svg
    assert f'width="{chart_w * 0.25:.1f}"' in svg and "base: n/a" in svg


@pytest.mark.parametrize("value", [float("nan")])
def test_nan_is_written_as_null(tmp_path, value):
    from livo.evaluation.report import _json_safe

    assert _json_safe({"a": [value, 1.0]}) == {"a": [None, 1.0]}
