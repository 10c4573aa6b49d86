"""The model card (`model_card.md`) of a registered version, rendered from its lineage record and principle set.

Hugging Face model-card YAML front matter first (`front_matter`: base_model, license, tags, datasets, metrics and a
model-index with one result per evaluated principle), so the card renders on the Hub. Then: what the model aligns
(principles with their exact texts and the set's hash), evaluation against the base model with the judge and the
bootstrap interval of every number, the gates with their thresholds, data (dataset id and size per principle when the
dataset manifest is known), training (config, logged curve, tracking state), provenance, intended use and limitations,
files. Everything comes from the lineage record, which is already redacted, so no secret can reach the card.
"""

from __future__ import annotations

import json
import re
from typing import Any

from livo.evaluation.report import finite_number
from livo.registry.lineage import LineageRecord, flatten


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.4g}"  # never "-0"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _ci(row: dict[str, Any], side: str) -> str:
    interval = (row.get("ci") or {}).get(side)
    if not isinstance(interval, list | tuple) or len(interval) != 2:
        return "-"
    return f"[{_cell(float(interval[0]))}, {_cell(float(interval[1]))}]"


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    from livo.evaluation.report import ci_method_text, metric_rows

    try:
        rows = metric_rows(metrics)
    except (KeyError, TypeError, AttributeError):
        rows = None
    if rows is None:  # not the evaluator's schema: show the numbers as they are
        from livo.registry.lineage import headline_metrics

        return _table(["metric", "value"], [[k, v] for k, v in headline_metrics(metrics).items()])
    table, unavailable = [], []
    with_ci = any(row.get("ci") for row in rows)
    for row in rows:
        if row.get("unavailable"):
            unavailable.append(f"- {row['section']}{'.' + row['metric'] if row.get('metric') else ''}: not measured "
                               f"({row['unavailable']})")
            continue
        better = "lower" if row.get("lower_is_better") else "higher"
        cells = [row["section"], row["metric"], row["base"], row["aligned"], row["change"], better, row.get("judge")]
        if with_ci:  # the interval beside each number; quality rows have none
            cells[3:3] = [_ci(row, "base")]
            cells[5:5] = [_ci(row, "aligned")]
            cells[7:7] = [_ci(row, "change")]
        table.append(cells)
    header = ["principle / section", "metric", "base", "aligned", "change", "better", "judge"]
    if with_ci:
        header = ["principle / section", "metric", "base", "base 95% CI", "aligned", "aligned 95% CI", "change",
                  "change 95% CI", "better", "judge"]
    lines = _table(header, table)
    method = ci_method_text(metrics)
    if method:
        lines += ["", method]
    if unavailable:
        lines += ["", "Not measured here:", *unavailable]
    return lines


def _fidelity_lines(metrics: dict[str, Any]) -> list[str]:
    from livo.evaluation.report import subject_fidelity_rows

    rows = subject_fidelity_rows(metrics)
    if not rows:
        return []
    lines = ["", "Subject fidelity per principle (share of images whose subject the judge recognises, ×100; "
                 "\"token\": images whose aligned side carries the value token):", ""]
    return lines + _table(
        ["principle", "judge", "images with token", "base %", "aligned %", "ratio", "base told the attribute %",
         "ratio to it", "no token: base / aligned %", "all: base / aligned %"],
        [[row["principle"], row["judge"], row["token"]["images"], row["token"]["base"], row["token"]["aligned"],
          row["token"]["ratio"], row["token"].get("named"), row["token"].get("ratio_to_named"),
          f"{_cell(row['no_token']['base'])} / {_cell(row['no_token']['aligned'])}",
          f"{_cell(row['all']['base'])} / {_cell(row['all']['aligned'])}"] for row in rows])


def _gate_lines(r: LineageRecord) -> list[str]:
    from livo.evaluation.report import gate_status

    gates = r.evaluation.metrics.get("gates") or []
    lines = ["", "Gates:", ""]
    if not gates:
        lines.append("**None: this version is UNGATED.**" if r.evaluation.ungated else "None recorded.")
    else:
        lines += _table(["gate", "result", "threshold", "value", "judge", "detail"],
                        [[g.get("name"), gate_status(g), g.get("threshold"), g.get("value"), g.get("judge"),
                          g.get("detail", "")] for g in gates])
    if r.evaluation.waivers:
        lines += ["", "Waived gates (reported, but they did not decide the verdict):", ""]
        lines += [f"- `{w.get('gate')}`: {w.get('reason', '')}" for w in r.evaluation.waivers]
    from livo.evaluation.report import gate_threshold_rows

    thresholds = gate_threshold_rows(r.evaluation.metrics)
    if thresholds:
        lines += ["", "Gate configuration the evaluation ran with (`evaluate.gates`; unset thresholds are not gated):",
                  ""]
        lines += _table(["setting", "value"], [list(row) for row in thresholds])
    return lines


def _training_lines(metrics: dict[str, Any], max_rows: int = 12) -> list[str]:
    """The logged training curve (`training_log`) as a table of at most `max_rows` evenly spaced records (the last
    one always included) and the experiment-tracking state; [] when the metrics record neither."""
    from livo.evaluation.report import tracking_text, training_curve

    lines: list[str] = []
    curve = training_curve(metrics)
    if curve:
        picked = sorted({round(i * (len(curve) - 1) / max(max_rows - 1, 1)) for i in range(min(max_rows, len(curve)))})
        keys = [k for k in ("step", "loss", "hinge_w", "hinge_l", "lr", "grad_norm", "samples_per_s")
                if any(k in record for record in curve)]
        lines += ["", f"Training curve ({len(curve)} logged steps; the evaluation report draws it):", ""]
        lines += _table(keys, [[curve[i].get(k) for k in keys] for i in picked])
    tracking = tracking_text(metrics)
    if tracking:
        lines += ["", f"Experiment tracking: {tracking}."]
    return lines


def _dataset_lines(dataset_manifest: dict[str, Any] | None) -> list[str]:
    info = dataset_summary(dataset_manifest)
    if not info:
        return []
    lines = ["", f"Dataset id `{info.get('dataset_id') or '-'}` (name `{info.get('name') or '-'}`), "
                 f"{info.get('num_rows', '-')} preference pairs."]
    if info.get("by_principle"):
        lines += ["", *_table(["principle", "pairs"], [[k, v] for k, v in info["by_principle"].items()])]
    return lines


def dataset_summary(dataset_manifest: dict[str, Any] | None) -> dict[str, Any]:
    """dataset_id, name, num_rows and pairs per principle from a dataset manifest (`livo.data.dataset`); {} for a
    manifest that does not carry them."""
    if not isinstance(dataset_manifest, dict):
        return {}
    counts = dataset_manifest.get("counts") if isinstance(dataset_manifest.get("counts"), dict) else {}
    by_principle = counts.get("by_principle") if isinstance(counts.get("by_principle"), dict) else {}
    out = {k: dataset_manifest[k] for k in ("dataset_id", "name", "num_rows") if dataset_manifest.get(k) is not None}
    if by_principle:
        out["by_principle"] = dict(by_principle)
    return out


def report_lineage(record: LineageRecord, dataset_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the registered report shows beside the evaluation (`livo.evaluation.report.registration_rows`):
    name@version, code commit, image, KFP and MLflow run ids, weights digest, dataset manifest, id and size per
    principle."""
    r = record
    info = dataset_summary(dataset_manifest)
    return {"model": f"{r.model.name}@{r.model.version}", "registered_at": r.model.registered_at,
            "git_commit": r.pipeline.git_commit, "image": r.pipeline.image_digest or r.pipeline.image_ran_in,
            "kfp_run_id": r.pipeline.run_id, "mlflow_run_id": r.pipeline.mlflow_run_id,
            "tracking_uri": r.pipeline.tracking_uri, "weights_sha256": r.model.weights_sha256,
            "dataset_manifest_uri": r.dataset.manifest_uri, "dataset_manifest_sha256": r.dataset.manifest_sha256,
            "dataset_id": info.get("dataset_id") or info.get("name"), "dataset_rows": info.get("num_rows"),
            "dataset_by_principle": info.get("by_principle") or {}}


# ------------------------------------------------------------------------------------------ Hub front matter
HUB_LICENSES = {  # base model (hub id, lower case) -> its licence id on the Hugging Face Hub
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "compvis/stable-diffusion-v1-4": "creativeml-openrail-m",
}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _finite(value: Any) -> float | None:
    number = finite_number(value)
    return None if number is None else round(number, 4)


def front_matter(record: LineageRecord, principle_set: Any, dataset_manifest: dict[str, Any] | None = None,
                 license: str | None = None) -> dict[str, Any]:
    """Hugging Face model-card metadata: `base_model`, `license` (the base model's where known, else `other`),
    `tags`, `pipeline_tag`, `datasets`, `metrics` (the metric names reported) and `model-index` with one result per
    evaluated principle: the aligned value, the base value and the improvement of each metric (×100, lower is better;
    `args.ci95`: the bootstrap interval when the evaluation recorded one). Unmeasured numbers are left out."""
    r = record
    base = r.base_model.id
    licence = license or HUB_LICENSES.get(base.lower(), "other")
    categories = sorted({p.category for p in principle_set})
    tags = ["livo", "value-alignment", "text-to-image", *categories]
    if "stable-diffusion" in base.lower():
        tags.append("stable-diffusion")
    info = dataset_summary(dataset_manifest)
    meta: dict[str, Any] = {"base_model": base, "license": licence}
    if licence == "other":
        meta["license_name"] = "same-as-base-model"
    meta.update({"pipeline_tag": "text-to-image", "tags": tags,
                 "datasets": [str(info.get("dataset_id") or info.get("name") or r.dataset.manifest_uri)]})
    metric_names: list[str] = []
    results = []
    for pid, entry in (r.evaluation.metrics.get("principles") or {}).items():
        if not isinstance(entry, dict) or not entry.get("available"):
            continue
        keys = ("D1", "D2") if entry.get("kind") == "bias" else ("R", "S", "Max", "Prob")
        ci = entry.get("ci") if isinstance(entry.get("ci"), dict) else {}
        metrics = []
        for key in keys:
            for side, label in (("aligned", "aligned"), ("base", "base model"), ("improvement", "improvement")):
                value = _finite((entry.get(side) or {}).get(key))
                if value is None:
                    continue
                item: dict[str, Any] = {"type": key, "name": f"{key} {label} (x100, "
                                        f"{'higher' if side == 'improvement' else 'lower'} is better)",
                                        "value": value, "verified": False}
                interval = (ci.get(side) or {}).get(key)
                if isinstance(interval, list) and len(interval) == 2 and all(_finite(v) is not None for v in interval):
                    item["args"] = {"ci95": [_finite(v) for v in interval]}
                metrics.append(item)
                if key not in metric_names:
                    metric_names.append(key)
        if metrics:
            results.append({"task": {"type": "text-to-image", "name": f"value alignment: {entry.get('text', pid)}"},
                            "dataset": {"type": "livo-evaluation-prompts", "name": f"{pid} evaluation prompts",
                                        "config": pid},
                            "metrics": metrics})
    if metric_names:
        meta["metrics"] = metric_names
    meta["model-index"] = [{"name": f"{r.model.name}@{r.model.version}", "results": results}]
    return meta


def render_front_matter(meta: dict[str, Any]) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---"


def render_model_card(record: LineageRecord, principle_set: Any, dataset_manifest: dict[str, Any] | None = None
                      ) -> str:
    """model_card.md: Hub front matter, then the card. `dataset_manifest` (the parsed dataset manifest.json, when
    registration could read it) adds the dataset id and its size per principle."""
    r = record
    ref = f"{r.model.name}@{r.model.version}"
    verdict = ("passed its evaluation gates" if r.evaluation.passed
               else "**FAILED its evaluation gates and was registered with --force**")
    if r.evaluation.ungated:
        verdict = "**is UNGATED: its evaluation decided no gate, and it was registered with --allow-ungated**"
    principle_rows = [[p.id, p.category, p.text, p.inference_dropout] for p in principle_set]
    categories = sorted({p.category for p in principle_set})
    out = [render_front_matter(front_matter(r, principle_set, dataset_manifest)), f"# {ref}", ""]
    if r.evaluation.ungated:
        out += ["> **UNGATED.** No evaluation gate decided anything for this version (none configured, or every gate "
                "waived); it was registered only because the request said `--allow-ungated`. Nothing here vouches "
                "for its alignment: do not serve it as an aligned model.", ""]
    out += [
        f"A LiVO value encoder for **{r.base_model.id}**: it reads a principle text together with the prompt and "
        "prepends one value token to the prompt's conditioning, steering generation towards the principle without "
        f"changing any weight of the base model. It aligns the base model to {len(principle_set)} principle(s) "
        f"({', '.join(categories)}) and {verdict}.",
        "",
        f"Registered {r.model.registered_at} by pipeline run `{r.pipeline.run_id}`"
        + (f" ({r.pipeline.run_name})" if r.pipeline.run_name else "")
        + (f"; it supersedes {r.model.parent_version}" if r.model.parent_version else "; first version") + ".",
    ]
    if r.model.same_weights_as:
        out += ["", f"Its weights are bit-identical to {', '.join(r.model.same_weights_as)} (another pipeline run)."]
    if r.model.description:
        out += ["", r.model.description]
    out += ["", "## What this model aligns", "",
            f"Principle set hash `{r.principles.hash}`, read from `{r.principles.uri}` (stored beside the weights as "
            f"`{r.principles.stored_copy}`). The value encoder reads exactly these texts:", ""]
    out += _table(["id", "category", "text", "inference dropout"], principle_rows)
    out += ["", "Inference dropout is the share of images generated without the value token (the paper uses 0.5 for "
                "bias principles, so that the aligned model balances attributes instead of flipping them).", "",
            "## Evaluation against the base model", "",
            f"Same prompts and seeds for base and aligned model. Verdict: {'PASSED' if r.evaluation.passed else 'FAILED'}"
            f". Full report: `{r.evaluation.report_uri}`.", ""]
    out += _metric_lines(r.evaluation.metrics)
    out += _fidelity_lines(r.evaluation.metrics)
    out += _gate_lines(r)
    out += ["", "## Data", "",
            f"Preference dataset manifest `{r.dataset.manifest_uri}` (sha256 `{r.dataset.manifest_sha256}`), built "
            "from the principle set above."]
    out += _dataset_lines(dataset_manifest)
    out += ["", "## Training", "",
            f"Base model `{r.base_model.id}` (fingerprint `{r.base_model.fingerprint}`), seed {r.training.seed}.", ""]
    out += _table(["setting", "value"], [[k, v] for k, v in flatten(r.training.config).items()])
    out += _training_lines(r.evaluation.metrics)
    out += ["", "## Provenance", ""]
    metrics = r.evaluation.metrics
    context = metrics.get("context") if isinstance(metrics.get("context"), dict) else {}
    evaluated = metrics.get("evaluated") if isinstance(metrics.get("evaluated"), dict) else {}
    out += _table(["field", "value"], [
        ["KFP run id", r.pipeline.run_id], ["KFP run name", r.pipeline.run_name or None],
        ["MLflow run id", r.pipeline.mlflow_run_id or None], ["MLflow tracking URI", r.pipeline.tracking_uri or None],
        ["pipeline spec hash", r.pipeline.spec_hash or None], ["git commit", r.pipeline.git_commit or None],
        ["container image", r.pipeline.image_digest or None], ["weights sha256", r.model.weights_sha256],
        ["evaluated value encoder", context.get("value_encoder")],
        ["evaluated value encoder sha256", evaluated.get("value_encoder_sha256")],
        ["principle set hash", r.principles.hash],
        ["evaluation config sha256", evaluated.get("config_sha256")],
    ])
    out += ["", "`livo lineage show " + ref + "` prints the full lineage; `livo lineage verify " + ref + "` recomputes "
            "every hash.", "",
            "## Intended use", "",
            f"Text-to-image generation with `{r.base_model.id}` where outputs should respect the principles above: "
            "load the base pipeline and this value encoder with `livo.modeling.LiVOPipeline`; a retriever picks the "
            "principle for each prompt (or pass it explicitly). Prompts no principle applies to are generated exactly "
            "as by the base model.", "",
            "## Limitations", "",
            "- It is aligned only to the principles listed; other values and harms are untouched.",
            "- It works only with the base model it was trained on (fingerprint above); with another base model the "
            "value token is meaningless.",
            "- The evaluation measures what its judges can see: each number is only as good as the judge named beside"
            " it, on the evaluation prompts used; a judge marked as not measured gave no evidence either way.",
            "- Bias principles change the distribution of attributes over many images, not any single image.",
            "- Concept removal (toxicity principles) reduces but does not guarantee the absence of the concept; keep "
            "downstream safety filters.",
            "", "## Files", ""]
    out += _table(["file", "sha256"], [[k, v] for k, v in sorted(r.files.items()) if k != "model_card.md"])
    return "\n".join(out) + "\n"
