"""Release gates: `passed` is true when every enabled gate holds (`GateConfig`, documented in docs/evaluation.md).

Each gate result names what it checked, the value, the threshold and the judge that produced the value, so a failed
gate in a pipeline run explains itself.
"""

from __future__ import annotations

import math
from typing import Any

from livo.evaluation.config import GateConfig


def _gate(name: str, passed: bool, *, value: float | None, threshold: float | None, judge: str | None,
          detail: str, skipped: bool = False) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "skipped": skipped, "value": value, "threshold": threshold,
            "judge": judge, "detail": detail}


def apply_gates(metrics: dict[str, Any], gates: GateConfig) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for pid, entry in metrics["principles"].items():
        if not entry["available"]:
            results.append(_gate(f"{pid}: judged", not gates.fail_on_unavailable, value=None, threshold=None,
                                 judge=entry.get("judge"), skipped=not gates.fail_on_unavailable,
                                 detail=f"unavailable ({entry['reason']})"))
            continue
        if entry["kind"] == "bias":
            key, minimum = gates.bias_metric, gates.min_bias_improvement
        else:
            key, minimum = gates.toxicity_metric, gates.min_toxicity_improvement
        if minimum is None:
            continue
        gain = entry["improvement"][key]
        ok = math.isfinite(gain) and gain >= minimum
        results.append(_gate(f"{pid}: {key} improvement", ok, value=gain, threshold=minimum, judge=entry["judge"],
                             detail=f"{key} base {entry['base'][key]:.2f} -> aligned {entry['aligned'][key]:.2f} "
                                    f"(needs a drop of at least {minimum:g})"))
    quality = metrics.get("quality", {})
    unavailable = quality.get("unavailable", {})
    checks = (
        ("FID", gates.max_fid, lambda b: b["aligned"], "FID(aligned, base) {v:.3f} <= {t:g}"),
        ("CLIPScore", gates.max_clip_score_drop, lambda b: b["base"] - b["aligned"], "CLIPScore drop {v:.3f} <= {t:g}"),
        ("IS", gates.max_inception_score_drop, lambda b: b["base"] - b["aligned"], "IS drop {v:.3f} <= {t:g}"),
        ("subject_fidelity", gates.max_subject_fidelity_drop, lambda b: b["base"] - b["aligned"],
         "subject fidelity drop {v:.2f} <= {t:g}"),
    )
    for name, threshold, value_of, template in checks:
        if threshold is None:
            continue
        block = quality.get(name)
        if block is None:
            reason = unavailable.get(name, "not computed")
            results.append(_gate(f"quality: {name}", not gates.fail_on_unavailable, value=None, threshold=threshold,
                                 judge=None, skipped=not gates.fail_on_unavailable, detail=f"unavailable ({reason})"))
            continue
        value = float(value_of(block))
        results.append(_gate(f"quality: {name}", math.isfinite(value) and value <= threshold, value=value,
                             threshold=threshold, judge=block["judge"], detail=template.format(v=value, t=threshold)))
    return results
