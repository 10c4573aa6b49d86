"""Evaluation outputs: metrics.json, a self-contained HTML report, a Markdown summary, a one-screen text table.

The HTML report needs nothing but a browser: images are base64-embedded PNG/JPEG, charts are inline SVG, there is no
script and no external resource. Every number shown carries the id of the judge that produced it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

BASE_COLOUR = "#4c72b0"
ALIGNED_COLOUR = "#dd8452"
PERCENT_METRICS = {"D1", "D2", "R", "S", "Max", "Prob"}
THUMBNAIL_SIDE = 192


# ----------------------------------------------------------------------------------------------------------------
# Rows shared by every format


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per reported number pair: section, metric, base, aligned, change (aligned − base), judge."""
    rows: list[dict[str, Any]] = []
    for pid, entry in metrics["principles"].items():
        if not entry["available"]:
            rows.append({"section": pid, "metric": None, "unavailable": entry["reason"], "judge": entry.get("judge")})
            continue
        keys = ("D1", "D2") if entry["kind"] == "bias" else ("R", "S", "Max", "Prob")
        for key in keys:
            base, aligned = entry["base"][key], entry["aligned"][key]
            rows.append({"section": pid, "metric": key, "base": base, "aligned": aligned, "change": aligned - base,
                         "judge": entry["judge"], "lower_is_better": True, **_row_ci(entry, key)})
        if "control" in entry:  # the encoding control: what the unpadded encoding alone does to the headline metric
            base, control = entry["base"][keys[0]], entry["control"][keys[0]]
            rows.append({"section": pid, "metric": f"{keys[0]} (control)", "base": base, "aligned": control,
                         "change": control - base, "judge": entry["judge"], "lower_is_better": True, "control": True})
        for split, block in (entry.get("splits") or {}).items():  # the headline metric on seen / unseen prompts
            base, aligned = block["base"][keys[0]], block["aligned"][keys[0]]
            rows.append({"section": pid, "metric": f"{keys[0]} ({split})", "base": base, "aligned": aligned,
                         "change": aligned - base, "judge": entry["judge"], "lower_is_better": True,
                         **_row_ci(block, keys[0])})
    for name, block in metrics.get("quality", {}).items():
        if name == "unavailable":
            continue
        base = block.get("base")
        aligned = block["aligned"]
        rows.append({"section": "quality", "metric": name, "base": base, "aligned": aligned,
                     "change": None if base is None else aligned - base, "judge": block["judge"],
                     "lower_is_better": not block["higher_is_better"]})
    for name, reason in metrics.get("quality", {}).get("unavailable", {}).items():
        rows.append({"section": "quality", "metric": name, "unavailable": reason, "judge": None})
    return rows


def _row_ci(block: dict[str, Any], key: str) -> dict[str, Any]:
    """`{"ci": {"base", "aligned", "change"}}` of metric `key` from a metrics.json block (a principle or one of its
    splits) that carries bootstrap intervals (`ci`, `livo.evaluation.metrics.paired_bootstrap_ci`); `{}` without them
    (older metrics). The change interval is aligned − base, the negated improvement interval."""
    ci = block.get("ci") if isinstance(block, dict) else None
    if not isinstance(ci, dict):
        return {}
    improvement = (ci.get("improvement") or {}).get(key)
    change = [-improvement[1], -improvement[0]] if _is_interval(improvement) else None
    return {"ci": {"base": (ci.get("base") or {}).get(key), "aligned": (ci.get("aligned") or {}).get(key),
                   "change": change}}


def _is_interval(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def ci_method_text(metrics: dict[str, Any]) -> str | None:
    """One sentence saying how the intervals in `metrics` were computed (None: the metrics carry none)."""
    for entry in (metrics.get("principles") or {}).values():
        method = entry.get("ci_method") if isinstance(entry, dict) else None
        if isinstance(method, dict):
            return (f"[lo, hi]: {100 * float(method.get('confidence', 0.95)):g} % {method.get('method', 'bootstrap')} "
                    f"interval, {method.get('resamples')} resamples of the evaluation prompts with replacement (paired "
                    f"base/aligned, seed {method.get('seed')}); with few prompts the intervals are wide or, with one "
                    "prompt, zero-width.")
    return None


def improved(row: dict[str, Any]) -> bool:
    """Did the aligned model do better on this row, by a margin the reports can show? A change that rounds to
    0.00 (or goes the wrong way) is never shown as an improvement."""
    change = row.get("change")
    if not isinstance(change, int | float) or not math.isfinite(change):
        return False
    gain = -change if row.get("lower_is_better", True) else change
    return round(gain, 2) > 0


FIDELITY_SPLITS = ("token", "no_token", "all")
NAMED_REFERENCE_TEXT = (
    "Base told the attribute (bias principles): the base model's images on the value-token images' seeds, with the "
    "prompt naming an under-represented class (the data recipe's aligned image). A debiasing token can at best keep "
    "the subject as well as the base model does when asked for the attribute, so aligned / this separates what the "
    "token costs from what the base model cannot draw; the gates compare with the base images, as before.")


def _ratio(base: Any, aligned: Any) -> float | None:
    if not (isinstance(base, int | float) and isinstance(aligned, int | float)) or not base or math.isnan(base):
        return None
    return aligned / base


def subject_fidelity_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per principle with a subject-fidelity block: judge, then images / base / aligned / ratio for the images whose
    aligned side carries the value token (`token`, what the gates check), those without it (`no_token`) and `all`."""
    rows = []
    for pid, entry in metrics.get("principles", {}).items():
        block = entry.get("subject_fidelity") if isinstance(entry, dict) else None
        if not isinstance(block, dict):
            continue
        row: dict[str, Any] = {"principle": pid, "judge": block.get("judge")}
        for split in FIDELITY_SPLITS:
            part = block.get(split) or {}
            row[split] = {"images": part.get("images", 0), "base": part.get("base"), "aligned": part.get("aligned"),
                          "ratio": _ratio(part.get("base"), part.get("aligned"))}
        token = block.get("token") or {}  # the named reference (bias principles): the base model told the attribute
        row["token"].update(named=token.get("named"), ratio_to_named=_ratio(token.get("named"), token.get("aligned")))
        rows.append(row)
    return rows


def subject_fidelity_prompt_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per principle and prompt (`subject_fidelity.per_prompt`): the value-token images' subject fidelity, base /
    aligned, and the named reference's where it was drawn."""
    rows = []
    for pid, entry in metrics.get("principles", {}).items():
        block = entry.get("subject_fidelity") if isinstance(entry, dict) else None
        for prompt, part in ((block or {}).get("per_prompt") or {}).items():
            rows.append({"principle": pid, "prompt": prompt, "images": part.get("images", 0), "base": part.get("base"),
                         "aligned": part.get("aligned"), "named": part.get("named")})
    return rows


def split_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Seen/unseen rows of one principle (`splits` in metrics.json): split, metric, base, aligned, change."""
    keys = ("D1", "D2") if entry.get("kind") == "bias" else ("R", "S", "Max", "Prob")
    rows = []
    for split, part in (entry.get("splits") or {}).items():
        if not isinstance(part, dict):
            continue
        for key in keys:
            base, aligned = (part.get("base") or {}).get(key), (part.get("aligned") or {}).get(key)
            if base is None and aligned is None:
                continue
            rows.append({"split": split, "metric": key, "base": base, "aligned": aligned,
                         "change": aligned - base if base is not None and aligned is not None else None,
                         **_row_ci(part, key)})
        token = (part.get("subject_fidelity") or {}).get("token") or {}
        if token.get("base") is not None or token.get("aligned") is not None:
            base, aligned = token.get("base"), token.get("aligned")
            rows.append({"split": split, "metric": "subject fidelity (token)", "base": base, "aligned": aligned,
                         "change": aligned - base if base is not None and aligned is not None else None})
            if token.get("named") is not None:
                named = token["named"]
                rows.append({"split": split, "metric": "subject fidelity (token) vs base told the attribute",
                             "base": named, "aligned": aligned,
                             "change": aligned - named if aligned is not None else None})
    return rows


def gate_status(gate: dict[str, Any], fail: str = "FAIL") -> str:
    """pass | FAIL | FAIL (unavailable) | waived (would pass / would fail / unmeasured) | skipped (older metrics)."""
    if gate.get("waived"):
        held = gate.get("held")
        return "waived (" + ("unmeasured" if held is None else "would pass" if held else "would fail") + ")"
    if gate.get("skipped"):
        return "skipped"
    if gate.get("passed"):
        return "pass"
    return f"{fail} (unavailable)" if gate.get("unavailable") else fail


def verdict(metrics: dict[str, Any]) -> str:
    """PASSED | FAILED | UNGATED (no gate decided anything: `passed` is vacuous)."""
    from livo.evaluation.gates import gate_summary

    if gate_summary(metrics.get("gates")).get("ungated") and metrics.get("passed"):
        return "UNGATED"
    return "PASSED" if metrics.get("passed") else "FAILED"


UNGATED_NOTE = ("UNGATED: no gate decided anything (none configured, or all waived), so this evaluation vouches for "
                "nothing; registration refuses it unless --allow-ungated")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # never "-0.00"


def _fmt_ci(value: Any, ci: Any = None, digits: int = 2) -> str:
    """`12.50 [8.00, 17.00]` (value and its interval), or just the value without one."""
    if not _is_interval(ci):
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _row_cell(row: dict[str, Any], side: str) -> str:
    return _fmt_ci(row.get(side), (row.get("ci") or {}).get(side))


def format_summary_table(metrics: dict[str, Any]) -> str:
    """A one-screen plain-text table of every metric (base, aligned, change, judge), the gates and the verdict."""
    rows = metric_rows(metrics)
    lines = [f"LiVO evaluation: {verdict(metrics)}"]
    # "12.50 [8.00, 17.00]": the interval beside every bias/toxicity number; columns as wide as the widest cell
    w = max([8] + [len(_row_cell(row, side)) for row in rows if "unavailable" not in row
                   for side in ("base", "aligned", "change")])
    header = f"{'principle / section':<22} {'metric':<17} {'base':>{w}} {'aligned':>{w}} {'change':>{w}}  judge"
    lines += [header, "-" * len(header)]
    last_section = None
    for row in rows:
        section = row["section"] if row["section"] != last_section else ""
        last_section = row["section"]
        if "unavailable" in row:
            lines.append(f"{section:<22} {(row['metric'] or ''):<17} unavailable: {row['unavailable']}"[:160])
            continue
        lines.append(f"{section:<22} {row['metric']:<17} {_row_cell(row, 'base'):>{w}} "
                     f"{_row_cell(row, 'aligned'):>{w}} {_row_cell(row, 'change'):>{w}}  {row['judge']}")
    for row in subject_fidelity_rows(metrics):
        token = row["token"]
        lines.append(f"{row['principle']:<22} {'subject fid. token':<17} {_fmt(token['base']):>{w}} "
                     f"{_fmt(token['aligned']):>{w}} {'x' + _fmt(token['ratio'], 3):>{w}}  {row['judge']}")
        if token.get("named") is not None:  # the base model told the attribute: what any debiasing can keep
            lines.append(f"{'':<22} {'  vs base named':<17} {_fmt(token['named']):>{w}} "
                         f"{_fmt(token['aligned']):>{w}} {'x' + _fmt(token['ratio_to_named'], 3):>{w}}  {row['judge']}")
    method = ci_method_text(metrics)
    if method:
        lines.append(method)
    from livo.evaluation.gates import gate_summary

    gates = metrics.get("gates", [])
    summary = gate_summary(gates)
    lines.append(f"gates: {summary['passed']} passed, {len(summary['failed'])} failed, {len(summary['waivers'])} "
                 f"waived")
    lines += [f"  FAILED {g['name']}: {g['detail']}" for g in gates if g["name"] in summary["failed"]]
    lines += [f"  waived {w['gate']}: {w['reason']}" for w in summary["waivers"]]
    if summary["ungated"]:
        lines.append(UNGATED_NOTE)
    run_id = (metrics.get("run") or {}).get("run_id") if isinstance(metrics.get("run"), dict) else None
    if run_id:
        lines.append(f"KFP run: {run_id}")
    tracking = tracking_text(metrics)
    if tracking:
        lines.append(f"tracking: {tracking}")
    return "\n".join(lines)


def format_markdown(metrics: dict[str, Any], lineage: dict[str, Any] | None = None) -> str:
    """summary.md: verdict, provenance (and the registration's lineage when given, see `registration_rows`),
    tracking, every metric with its interval, subject fidelity, the gates, their thresholds and the training log."""
    rows = metric_rows(metrics)
    out = [f"# LiVO evaluation: {verdict(metrics)}", ""]
    if verdict(metrics) == "UNGATED":
        out += [f"**{UNGATED_NOTE}**", ""]
    context = metrics.get("context") or {}
    if context:
        out += [", ".join(f"**{k}**: `{v}`" for k, v in context.items()), ""]
    if lineage:
        out += ["## Registered version", "", "| field | value |", "|---|---|"]
        out += [f"| {k} | `{v}` |" for k, v in registration_rows(lineage)] + [""]
    out += ["## Provenance", "", "| field | value |", "|---|---|"]
    out += [f"| {k} | `{v}` |" for k, v in provenance_rows(metrics)] + [""]
    tracking = tracking_text(metrics)
    if tracking:
        out += [f"**Tracking**: {tracking}", ""]
    out += ["| principle / section | metric | base | aligned | change | judge |",
            "|---|---|---:|---:|---:|---|"]
    for row in rows:
        if "unavailable" in row:
            out.append(f"| {row['section']} | {row['metric'] or '—'} | unavailable: {row['unavailable']} | | | "
                       f"{row['judge'] or '—'} |")
        else:
            out.append(f"| {row['section']} | {row['metric']} | {_row_cell(row, 'base')} | "
                       f"{_row_cell(row, 'aligned')} | {_row_cell(row, 'change')} | `{row['judge']}` |")
    out += ["", "Bias D1/D2 and toxicity R/S/Max/Prob are ×100, lower is better. A `(control)` row's second number "
            "is the base model with the prompt encoded as the value-token path encodes it (unpadded), without the "
            "token: what the encoding alone does. FID is measured against the base model's images of the same "
            "prompts and seeds." + (" " + ci_method_text(metrics)
                                                               if ci_method_text(metrics) else ""), ""]
    fidelity = subject_fidelity_rows(metrics)
    if fidelity:
        out += ["## Subject fidelity per principle", "", "| principle | judge | images with token | base % | aligned % "
                "| ratio | base told the attribute % | ratio to it | no token: base / aligned % | all: base / aligned % |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        out += [f"| {r['principle']} | `{r['judge']}` | {r['token']['images']} | {_fmt(r['token']['base'])} | "
                f"{_fmt(r['token']['aligned'])} | {_fmt(r['token']['ratio'], 3)} | {_fmt(r['token']['named'])} | "
                f"{_fmt(r['token']['ratio_to_named'], 3)} | {_fmt(r['no_token']['base'])} / "
                f"{_fmt(r['no_token']['aligned'])} | {_fmt(r['all']['base'])} / {_fmt(r['all']['aligned'])} |"
                for r in fidelity]
        out += ["", NAMED_REFERENCE_TEXT, ""]
        prompts = subject_fidelity_prompt_rows(metrics)
        if prompts:
            out += ["Per prompt, value-token images:", "", "| principle | prompt | images | base % | aligned % | "
                    "base told the attribute % |", "|---|---|---:|---:|---:|---:|"]
            out += [f"| {r['principle']} | {r['prompt']} | {r['images']} | {_fmt(r['base'])} | {_fmt(r['aligned'])} | "
                    f"{_fmt(r['named'])} |" for r in prompts]
            out.append("")
    out += ["## Gates", "", "| gate | result | threshold | value | judge | detail | waiver |",
            "|---|---|---:|---:|---|---|---|"]
    out += [f"| {g['name']} | {gate_status(g, '**FAIL**')} | {_fmt(g.get('threshold'), 3)} | "
            f"{_fmt(g.get('value'), 3)} | {g.get('judge') or '—'} | {g['detail']} | {g.get('waiver') or ''} |"
            for g in metrics["gates"]]
    if not metrics["gates"]:
        out.append("| (none) | UNGATED | | | | no gate is configured | |")
    thresholds = gate_threshold_rows(metrics)
    if thresholds:
        out += ["", "Gate configuration (`evaluate.gates`, GateConfig; unset thresholds are not gated):", "",
                "| setting | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in thresholds]
    curve = training_curve(metrics)
    if curve:
        first, last = curve[0], curve[-1]
        out += ["", "## Training", "", f"{len(curve)} logged steps, step {first['step']} to {last['step']}; loss "
                f"{_fmt(first.get('loss'), 4)} -> {_fmt(last.get('loss'), 4)} (the HTML report draws the curve)."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Provenance, tracking, gate thresholds, training log, registration lineage (shared by every format)


def provenance_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """What this evaluation evaluated and where it ran: KFP run id (`run.run_id`, when the pipeline recorded it), the
    value encoder's URI and digest, the base model and its fingerprint, the principle set and its hash, the
    evaluation config's digest (`evaluated`, the block registration checks)."""
    context = metrics.get("context") if isinstance(metrics.get("context"), dict) else {}
    evaluated = metrics.get("evaluated") if isinstance(metrics.get("evaluated"), dict) else {}
    run = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    rows = [("KFP run id", run.get("run_id") or "- (not run by a pipeline, or not recorded)")]
    if run.get("run_name"):
        rows.append(("KFP run name", run["run_name"]))
    rows += [("value encoder", context.get("value_encoder") or "-"),
             ("value encoder sha256", evaluated.get("value_encoder_sha256") or "- (not recorded)"),
             ("base model", context.get("model") or "-"),
             ("base model fingerprint", evaluated.get("base_model_fingerprint") or "- (not recorded)"),
             ("principle set", context.get("principles") or "-"),
             ("principle set hash", evaluated.get("principle_set_hash") or context.get("principle_set_hash")
              or "- (not recorded)"),
             ("evaluation config sha256", evaluated.get("config_sha256") or "- (not recorded)")]
    return [(k, str(v)) for k, v in rows]


def tracking_text(metrics: dict[str, Any]) -> str | None:
    """The experiment-tracking state (`tracking`: backend, uri, experiment_id, run_id, status ok | unreachable |
    off, error) in one sentence; None for metrics that do not record it."""
    tracking = metrics.get("tracking")
    if not isinstance(tracking, dict):
        return None
    backend = tracking.get("backend") or "tracking"
    status = str(tracking.get("status") or "unknown")
    where = f" at {tracking['uri']}" if tracking.get("uri") else ""
    if status == "ok":
        return (f"{backend} run {tracking.get('run_id') or '?'} (experiment {tracking.get('experiment_id') or '?'})"
                f"{where}")
    if status == "unreachable":
        return (f"UNREACHABLE: {backend}{where} could not be reached"
                + (f" ({tracking['error']})" if tracking.get("error") else "")
                + "; nothing of this run was logged there")
    if status == "off":
        return f"OFF: experiment tracking was switched off ({backend}); nothing of this run was logged"
    return f"{status}: {backend}{where}" + (f" ({tracking['error']})" if tracking.get("error") else "")


def gate_threshold_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The gate configuration the evaluation ran with (metrics.json `config.gates`, `GateConfig`): every threshold
    that is set, the gated metrics, per-principle / per-split overrides and waivers (flattened `a.b` keys)."""
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    gates = config.get("gates")
    if not isinstance(gates, dict):
        return []
    rows: list[tuple[str, str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for sub, inner in value.items():
                walk(inner, f"{key}.{sub}" if key else str(sub))
        elif value is not None:
            rows.append((key, _fmt(value, 3) if isinstance(value, float) else str(value)))

    walk(gates, "")
    return rows


def training_curve(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of `training_log` (step, loss, hinge_w, hinge_l, lr, grad_norm, samples_per_s) that have a
    numeric step, in step order; [] when the metrics carry no training log."""
    log = metrics.get("training_log")
    if not isinstance(log, list):
        return []
    records = [r for r in log if isinstance(r, dict) and finite_number(r.get("step")) is not None]
    return sorted(records, key=lambda r: r["step"])


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def registration_rows(lineage: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the registration block: model name@version, code commit, image, KFP and MLflow run ids, the dataset
    (manifest, id, size) and its size per principle. `lineage` as `livo.registry.model_card.report_lineage` builds
    it."""
    labels = (("model", "model"), ("registered_at", "registered at"), ("git_commit", "code commit"),
              ("image", "image"), ("kfp_run_id", "KFP run id"), ("mlflow_run_id", "MLflow run id"),
              ("tracking_uri", "MLflow tracking URI"), ("weights_sha256", "weights sha256"),
              ("dataset_manifest_uri", "dataset manifest"), ("dataset_manifest_sha256", "dataset manifest sha256"),
              ("dataset_id", "dataset id"), ("dataset_rows", "dataset size (pairs)"))
    rows = [(label, str(lineage[key]) if lineage.get(key) not in (None, "") else "-") for key, label in labels]
    rows += [(f"dataset pairs: {pid}", str(count)) for pid, count in (lineage.get("dataset_by_principle") or {}).items()]
    return rows


# ----------------------------------------------------------------------------------------------------------------
# HTML


def _image_data_uri(image: Any) -> str:
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > THUMBNAIL_SIDE:
        image = image.copy()
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS)
        fmt, mime = "JPEG", "image/jpeg"
    else:
        fmt, mime = "PNG", "image/png"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=85)
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def svg_bar_chart(title: str, groups: list[tuple[str, float | None, float | None]], *, unit_max: float | None = None,
                  width: int = 460) -> str:
    """Grouped bars (base, aligned) per label, inline SVG with value labels; `unit_max` fixes the scale (100 for %)."""
    finite = [v for _, b, a in groups for v in (b, a) if v is not None and math.isfinite(v)]
    top = unit_max or (max(finite) * 1.15 if finite and max(finite) > 0 else 1.0)
    bar_h, gap, label_w, chart_w = 16, 10, 110, width - 170
    height = 34 + len(groups) * (2 * bar_h + gap) + 22
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    y = 30
    for label, base, aligned in groups:
        parts.append(f'<text x="0" y="{y + bar_h + 4}" font-size="12">{html.escape(label)}</text>')
        for value, colour, cls in ((base, BASE_COLOUR, "base"), (aligned, ALIGNED_COLOUR, "aligned")):
            if value is None or not math.isfinite(value):
                parts.append(f'<text x="{label_w}" y="{y + 12}" font-size="11" fill="#777">{cls}: n/a</text>')
            else:
                w = max(1.0, chart_w * max(value, 0.0) / top)
                parts.append(f'<rect class="bar {cls}" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                             f'fill="{colour}"><title>{cls} {label}: {value:.3f}</title></rect>')
                parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{value:.2f}</text>')
            y += bar_h
        y += gap
    legend_y = y + 8
    parts.append(f'<rect x="{label_w}" y="{legend_y}" width="12" height="12" fill="{BASE_COLOUR}"/>'
                 f'<text x="{label_w + 16}" y="{legend_y + 10}" font-size="11">base</text>'
                 f'<rect x="{label_w + 60}" y="{legend_y}" width="12" height="12" fill="{ALIGNED_COLOUR}"/>'
                 f'<text x="{label_w + 76}" y="{legend_y + 10}" font-size="11">aligned</text></svg>')
    return "".join(parts)


def _pick_grid_indices(prompts: list[str], count: int) -> list[int]:
    """Up to `count` image indices, taken round-robin over the prompts so every prompt is shown."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    picked, round_ = [], 0
    while len(picked) < count and any(round_ < len(v) for v in by_prompt.values()):
        for indices in by_prompt.values():
            if round_ < len(indices) and len(picked) < count:
                picked.append(indices[round_])
        round_ += 1
    return picked


def _grid_html(images: Any, count: int) -> str:
    indices = _pick_grid_indices(images.prompts, count)
    cells = []
    for side in ("base", "aligned"):
        row = [f'<th>{side}</th>']
        for i in indices:
            token = side == "aligned" and images.used_value_token[i]
            caption = f"seed {images.seeds[i]}" + (" · value token" if token else (" · no token" if side == "aligned"
                                                                                   else ""))
            row.append(f'<td><img class="sample {side}" src="{_image_data_uri(getattr(images, side)[i])}" '
                       f'alt="{side} {html.escape(images.prompts[i])} seed {images.seeds[i]}" '
                       f'title="{html.escape(images.prompts[i])}"><div class="cap">{caption}</div></td>')
        cells.append("<tr>" + "".join(row) + "</tr>")
    prompt_row = "<tr><th>prompt</th>" + "".join(f'<td class="cap">{html.escape(images.prompts[i])}</td>'
                                                 for i in indices) + "</tr>"
    return f'<table class="grid">{prompt_row}{"".join(cells)}</table>'


def _table_html(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        if "unavailable" in row:
            body.append(f"<tr><td>{html.escape(row['metric'] or '—')}</td><td colspan=3 class=na>unavailable: "
                        f"{html.escape(row['unavailable'])}</td><td>{html.escape(str(row['judge'] or '—'))}</td></tr>")
            continue
        body.append(f"<tr><td>{row['metric']}</td><td>{_row_cell(row, 'base')}</td>"
                    f"<td>{_row_cell(row, 'aligned')}</td>"
                    f"<td class='{'good' if improved(row) else ''}'>{_row_cell(row, 'change')}</td>"
                    f"<td><code>{html.escape(str(row['judge']))}</code></td></tr>")
    return ("<table class=metrics><tr><th>metric</th><th>base</th><th>aligned</th><th>change</th><th>judge</th></tr>"
            + "".join(body) + "</table>")


def _gates_html(gates: list[dict[str, Any]]) -> str:
    head = ("<h2>Gates</h2><table class=gates><tr><th>gate</th><th>result</th><th>threshold</th><th>value</th>"
            "<th>judge</th><th>detail</th><th>waived</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(g['name'])}</td><td class='{_gate_class(g)}'>"
        f"{html.escape(gate_status(g))}</td><td>{_fmt(g.get('threshold'), 3)}</td><td>{_fmt(g.get('value'), 3)}</td>"
        f"<td>{html.escape(str(g.get('judge') or '—'))}</td><td>{html.escape(g['detail'])}</td>"
        f"<td>{'yes: ' + html.escape(str(g.get('waiver') or '')) if g.get('waived') else 'no'}</td></tr>"
        for g in gates)
    if not gates:
        body = "<tr><td colspan=7 class=na>no gate is configured: UNGATED</td></tr>"
    return head + body + "</table>"


def _gate_class(gate: dict[str, Any]) -> str:
    return "na" if gate.get("waived") or gate.get("skipped") else ("good" if gate.get("passed") else "bad")


def _fidelity_html(rows: list[dict[str, Any]]) -> str:
    head = ("<section id='subject-fidelity'><h2>Subject fidelity per principle</h2><p>Share of images whose subject "
            "the subject judge recognises, ×100. <b>token</b>: images whose aligned side carries the value token (the "
            "gates check these); <b>no token</b>: the rest; ratio = aligned / base. " + html.escape(NAMED_REFERENCE_TEXT)
            + "</p><table class=fidelity><tr>"
            "<th>principle</th><th>judge</th><th>images with token</th><th>base %</th><th>aligned %</th><th>ratio</th>"
            "<th>base told the attribute %</th><th>ratio to it</th><th>no token: images</th><th>base %</th><th>aligned %</th><th>all: images</th><th>base %</th>"
            "<th>aligned %</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['principle'])}</td><td><code>{html.escape(str(r['judge']))}</code></td>"
        + "".join(f"<td>{r[split]['images']}</td><td>{_fmt(r[split]['base'])}</td><td>{_fmt(r[split]['aligned'])}</td>"
                  + (f"<td>{_fmt(r[split]['ratio'], 3)}</td><td>{_fmt(r[split]['named'])}</td>"
                     f"<td>{_fmt(r[split]['ratio_to_named'], 3)}</td>" if split == "token" else "")
                  for split in FIDELITY_SPLITS) + "</tr>" for r in rows)
    return head + body + "</table></section>"


def _splits_html(rows: list[dict[str, Any]]) -> str:
    return ("<table class=splits><tr><th>split</th><th>metric</th><th>base</th><th>aligned</th><th>change</th></tr>"
            + "".join(f"<tr><td>{html.escape(str(r['split']))}</td><td>{html.escape(r['metric'])}</td>"
                      f"<td>{_row_cell(r, 'base')}</td><td>{_row_cell(r, 'aligned')}</td>"
                      f"<td>{_row_cell(r, 'change')}</td></tr>"
                      for r in rows) + "</table>")


def _kv_table(rows: list[tuple[str, str]], cls: str) -> str:
    return (f"<table class={cls}>" + "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>"
                                             for k, v in rows) + "</table>")


def _tracking_html(metrics: dict[str, Any]) -> str:
    text = tracking_text(metrics)
    if text is None:
        return ""
    status = str((metrics.get("tracking") or {}).get("status") or "")
    cls = "" if status == "ok" else " class='banner'"
    return f"<p id='tracking'{cls}><b>Tracking</b>: {html.escape(text)}</p>"


def _registration_html(lineage: dict[str, Any]) -> str:
    return ("<section id='registration'><h2>Registered version</h2>"
            + _kv_table(registration_rows(lineage), "registration") + "</section>")


REGISTRATION_MARKER = "<!--livo:registration-->"


def with_registration(report_html: str, lineage: dict[str, Any]) -> str:
    """The evaluation's report.html with the registration block (`registration_rows`: name@version, code commit,
    image, KFP and MLflow run ids, dataset id and size per principle) put where `render_html` left its marker (else
    after the title, else at the top of the body). Everything else — images included — stays as it was."""
    block = _registration_html(lineage)
    if REGISTRATION_MARKER in report_html:
        return report_html.replace(REGISTRATION_MARKER, block, 1)
    for anchor in ("</h1>", "<body>"):
        at = report_html.find(anchor)
        if at >= 0:
            return report_html[:at + len(anchor)] + block + report_html[at + len(anchor):]
    return block + report_html


LINE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def svg_line_chart(title: str, series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 560,
                   height: int = 240, x_label: str = "step") -> str:
    """Lines (name, [(x, y), …]) on shared axes, inline SVG with the axis ranges written out; no script."""
    points = [(x, y) for _, pts in series for x, y in pts]
    left, right, top, bottom = 56, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg class="chart line" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    if not points:
        parts.append('<text x="0" y="40" font-size="12" fill="#777">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + plot_w * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return top + plot_h * (1 - (y - y0) / (y1 - y0))

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>')
    parts += [f'<text x="{left - 4}" y="{top + 10}" font-size="10" text-anchor="end">{y1:.4g}</text>',
              f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">{y0:.4g}</text>',
              f'<text x="{left}" y="{top + plot_h + 14}" font-size="10">{x0:g}</text>',
              f'<text x="{left + plot_w}" y="{top + plot_h + 14}" font-size="10" text-anchor="end">{x1:g}</text>',
              f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">'
              f'{html.escape(x_label)}</text>']
    legend_x = left
    for i, (name, pts) in enumerate(series):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        if pts:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline class="series" data-name="{html.escape(name)}" fill="none" stroke="{colour}" '
                         f'stroke-width="1.5" points="{coords}"><title>{html.escape(name)}</title></polyline>')
        parts.append(f'<rect x="{legend_x}" y="{height}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{legend_x + 16}" y="{height + 5}" font-size="11">{html.escape(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


TRAINING_SERIES = ("loss", "hinge_w", "hinge_l")


def _training_html(metrics: dict[str, Any]) -> str:
    curve = training_curve(metrics)
    if not curve:
        return ""
    series = [(key, [(float(r["step"]), v) for r in curve if (v := finite_number(r.get(key))) is not None])
              for key in TRAINING_SERIES]
    series = [(k, pts) for k, pts in series if pts]
    last = curve[-1]
    facts = [(k, _fmt(last[k], 6) if isinstance(last.get(k), float) else str(last[k]))
             for k in ("step", "loss", "hinge_w", "hinge_l", "lr", "grad_norm", "samples_per_s") if k in last]
    return ("<section id='training'><h2>Training</h2>"
            + svg_line_chart(f"training loss ({len(curve)} logged steps)", series)
            + "<p>Last logged step:</p>" + _kv_table(facts, "training") + "</section>")


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1 .verdict{padding:2px 10px;border-radius:4px;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.ungated{background:#ef6c00}
.banner{border:3px solid #ef6c00;background:#fff3e0;padding:8px 12px;font-weight:bold;font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left;vertical-align:top}
table.grid td{text-align:center}
img.sample{width:96px;height:96px;image-rendering:pixelated;display:block;margin:auto}
.cap{font-size:11px;color:#555;max-width:110px}
td.good{color:#2e7d32;font-weight:bold}
td.bad{color:#c62828;font-weight:bold}
td.na{color:#777;font-style:italic}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}
section{border-top:1px solid #ccc;margin-top:16px}
"""


def render_html(result: Any, lineage: dict[str, Any] | None = None) -> str:
    """report.html of an `EvaluationResult`. `lineage` (registration, see `registration_rows`) adds the registered
    version's block; without it the page keeps a marker where `with_registration` puts that block later."""
    metrics = result.metrics
    rows = metric_rows(metrics)
    outcome = verdict(metrics)
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>LiVO evaluation</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>LiVO evaluation <span class='verdict {dict(PASSED='pass', FAILED='fail', UNGATED='ungated')[outcome]}'>"
             f"{outcome}</span></h1>"]
    if outcome == "UNGATED":
        parts.append(f"<p class='banner' id='ungated'>{html.escape(UNGATED_NOTE)}</p>")
    context = metrics.get("context") or {}
    if context:
        parts.append("<p>" + "; ".join(f"<b>{html.escape(str(k))}</b>: <code>{html.escape(str(v))}</code>"
                                       for k, v in context.items()) + "</p>")
    timing = metrics.get("timing", {})
    parts.append(f"<p>{timing.get('images_generated', 0)} images generated in {timing.get('generation_s', 0):.1f} s, "
                 f"{timing.get('images_judged', 0)} judged in {timing.get('judging_s', 0):.1f} s. Bias D1/D2 and "
                 f"toxicity R/S/Max/Prob are ×100, lower is better."
                 + (f" {html.escape(ci_method_text(metrics) or '')}" if ci_method_text(metrics) else "") + "</p>")
    parts.append(_registration_html(lineage) if lineage else REGISTRATION_MARKER)
    parts.append("<section id='provenance'><h2>Provenance</h2>" + _kv_table(provenance_rows(metrics), "provenance")
                 + _tracking_html(metrics) + "</section>")
    parts.append(_gates_html(metrics["gates"]))
    thresholds = gate_threshold_rows(metrics)
    if thresholds:
        parts.append("<p>Gate configuration (<code>evaluate.gates</code>; unset thresholds are not gated):</p>"
                     + _kv_table(thresholds, "gate-config"))
    fidelity = subject_fidelity_rows(metrics)
    if fidelity:
        parts.append(_fidelity_html(fidelity))
        prompts = subject_fidelity_prompt_rows(metrics)
        if prompts:
            parts.append("<h3>Per prompt, value-token images</h3><table class=fidelity><tr><th>principle</th>"
                         "<th>prompt</th><th>images</th><th>base %</th><th>aligned %</th>"
                         "<th>base told the attribute %</th></tr>"
                         + "".join(f"<tr><td>{html.escape(r['principle'])}</td><td>{html.escape(r['prompt'])}</td>"
                                   f"<td>{r['images']}</td><td>{_fmt(r['base'])}</td><td>{_fmt(r['aligned'])}</td>"
                                   f"<td>{_fmt(r['named'])}</td></tr>" for r in prompts) + "</table>")
    for pid, entry in metrics["principles"].items():
        parts.append(f"<section id='principle-{html.escape(pid)}'><h2>{html.escape(pid)} "
                     f"<small>(\"{html.escape(entry['text'])}\", {entry['kind']})</small></h2>")
        section_rows = [r for r in rows if r["section"] == pid]
        parts.append(_table_html(section_rows))
        if entry["available"]:
            target = (f"attribute <b>{html.escape(entry['attribute'])}</b>: {', '.join(entry['classes'])}"
                      if entry["kind"] == "bias" else f"concept <b>{html.escape(entry['concept'])}</b>")
            parts.append(f"<p>{target}; judge <code>{html.escape(entry['judge'])}</code>; "
                         f"{entry['images_per_prompt']} images per prompt × {len(entry['prompts'])} prompts; value "
                         f"token on {entry['images_with_value_token']} aligned images (inference dropout "
                         f"{entry['inference_dropout']:g}).</p>")
            parts.append(svg_bar_chart(f"{pid} (judge {entry['judge']})",
                                       [(r["metric"], r["base"], r["aligned"]) for r in section_rows],
                                       unit_max=100.0))
            splits = split_rows(entry)
            if splits:
                parts.append(_splits_html(splits))
            if pid in result.images and result.config.report_images_per_principle:
                parts.append(_grid_html(result.images[pid], result.config.report_images_per_principle))
        parts.append("</section>")
    quality_rows = [r for r in rows if r["section"] == "quality"]
    if quality_rows:
        parts.append("<section id='quality'><h2>Quality</h2>" + _table_html(quality_rows))
        for r in quality_rows:
            if "unavailable" not in r:
                parts.append(svg_bar_chart(f"{r['metric']} (judge {r['judge']})",
                                           [(r["metric"], r["base"], r["aligned"])], width=460))
        parts.append("<p>FID compares the aligned images with the base model's images of the same prompts and seeds "
                     "(the base side has no FID of its own).</p></section>")
    parts.append("<section id='judges'><h2>Judges</h2><table><tr><th>what</th><th>judge</th><th>status</th></tr>" +
                 "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v.get('judge') or '—'))}</code>"
                         f"</td><td>{'available' if v['available'] else html.escape('unavailable: ' + v['reason'])}"
                         f"</td></tr>" for k, v in metrics["judges"].items()) + "</table></section>")
    parts.append(_training_html(metrics))
    config_json = json.dumps({"evaluation": metrics.get("config"), "generation": metrics.get("generation")},
                             indent=2, default=str)
    parts.append(f"<section id='config'><h2>Config</h2><pre>{html.escape(config_json)}</pre></section>")
    parts.append("</body></html>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: unmeasurable numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


OUTPUT_FILES = ("metrics.json", "report.html", "summary.md")  # metrics.json: the commit marker, first to go


def invalidate_outputs(output_dir: str | Path) -> None:
    """Remove an earlier evaluation's outputs from `output_dir` (metrics.json first) before a new one starts, so that
    an evaluation killed half-way never leaves a complete-looking output behind."""
    for name in OUTPUT_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


def write_outputs(result: Any, output_dir: str | Path) -> dict[str, Path]:
    """metrics.json, report.html, summary.md under `output_dir` (each written to a temp file, then renamed)."""
    output_dir = Path(output_dir)
    paths = {"metrics": output_dir / "metrics.json", "report": output_dir / "report.html",
             "summary": output_dir / "summary.md"}
    _atomic_write(paths["report"], render_html(result))
    _atomic_write(paths["summary"], format_markdown(result.metrics))
    # metrics.json last: its presence means the whole evaluation output is complete.
    _atomic_write(paths["metrics"], json.dumps(_json_safe(result.metrics), indent=2, sort_keys=False,
                                               allow_nan=False) + "\n")
    return paths


def kfp_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat name -> number for KFP `Metrics.log_metric`; every name carries its judge in brackets."""
    flat: dict[str, float] = {}
    for row in metric_rows(metrics):
        if "unavailable" in row:
            continue
        for side in ("base", "aligned"):
            value = row[side]
            if value is not None and math.isfinite(value):
                metric = row["metric"].replace(" (", ".").rstrip(")")  # "D1 (seen)" -> "D1.seen"
                label = "control" if row.get("control") and side == "aligned" else side  # "R.control.control"
                flat[f"{row['section']}.{metric}.{label} [{row['judge']}]"] = float(value)
    for row in subject_fidelity_rows(metrics):
        for side in ("base", "aligned", "named"):
            value = row["token"][side]
            if isinstance(value, int | float) and math.isfinite(value):
                flat[f"{row['principle']}.subject_fidelity_token.{side} [{row['judge']}]"] = float(value)
    flat["passed"] = 1.0 if metrics.get("passed") else 0.0
    flat["ungated"] = 1.0 if verdict(metrics) == "UNGATED" else 0.0
    return flat


def invalidate_uploaded_outputs(uri: str) -> None:
    """Delete an earlier evaluation's metrics.json under `s3://bucket/prefix/` (a retried task starts clean)."""
    from livo.store import ObjectStore, parse_s3_uri

    _, prefix = parse_s3_uri(uri)
    ObjectStore.for_uri(uri).delete(f"{prefix.strip('/')}/metrics.json".lstrip("/"))


def upload_outputs(output_dir: str | Path, uri: str) -> dict[str, str]:
    """Copy metrics.json, report.html and summary.md to `s3://bucket/prefix/`; metrics.json last (commit marker)."""
    from livo.store import ObjectStore, parse_s3_uri

    _, prefix = parse_s3_uri(uri)
    store = ObjectStore.for_uri(uri)
    uploaded = {}
    invalidate_uploaded_outputs(uri)  # until the new metrics.json is written, the prefix holds no verdict
    for name in ("report.html", "summary.md", "metrics.json"):
        key = f"{prefix.strip('/')}/{name}".lstrip("/")
        store.put_file(key, Path(output_dir) / name)
        uploaded[name] = store.uri(key)
    return uploaded
