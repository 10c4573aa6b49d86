"""The model card (`model_card.md`) of a registered version, rendered from its lineage record and principle set.

Sections: what the model aligns (principles with their exact texts and the set's hash), evaluation against the base
model with the judge of every number, data, training, provenance, intended use and limitations, files. Everything
comes from the lineage record, which is already redacted, so no secret can reach the card.
"""

from __future__ import annotations

import json
from typing import Any

from livo.registry.lineage import LineageRecord, flatten


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    from livo.evaluation.report import metric_rows

    try:
        rows = metric_rows(metrics)
    except (KeyError, TypeError, AttributeError):
        rows = None
    if rows is None:  # not the evaluator's schema: show the numbers as they are
        from livo.registry.lineage import headline_metrics

        return _table(["metric", "value"], [[k, v] for k, v in headline_metrics(metrics).items()])
    table, unavailable = [], []
    for row in rows:
        if row.get("unavailable"):
            unavailable.append(f"- {row['section']}{'.' + row['metric'] if row.get('metric') else ''}: not measured "
                               f"({row['unavailable']})")
            continue
        better = "lower" if row.get("lower_is_better") else "higher"
        table.append([row["section"], row["metric"], row["base"], row["aligned"], row["change"], better,
                      row.get("judge")])
    lines = _table(["principle / section", "metric", "base", "aligned", "change", "better", "judge"], table)
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
        ["principle", "judge", "images with token", "base %", "aligned %", "ratio", "no token: base / aligned %",
         "all: base / aligned %"],
        [[row["principle"], row["judge"], row["token"]["images"], row["token"]["base"], row["token"]["aligned"],
          row["token"]["ratio"], f"{_cell(row['no_token']['base'])} / {_cell(row['no_token']['aligned'])}",
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
    return lines


def render_model_card(record: LineageRecord, principle_set: Any) -> str:
    r = record
    ref = f"{r.model.name}@{r.model.version}"
    verdict = ("passed its evaluation gates" if r.evaluation.passed
               else "**FAILED its evaluation gates and was registered with --force**")
    if r.evaluation.ungated:
        verdict = "**is UNGATED: its evaluation decided no gate, and it was registered with --allow-ungated**"
    principle_rows = [[p.id, p.category, p.text, p.inference_dropout] for p in principle_set]
    categories = sorted({p.category for p in principle_set})
    out = [f"# {ref}", ""]
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
            "from the principle set above.", "",
            "## Training", "",
            f"Base model `{r.base_model.id}` (fingerprint `{r.base_model.fingerprint}`), seed {r.training.seed}.", ""]
    out += _table(["setting", "value"], [[k, v] for k, v in flatten(r.training.config).items()])
    out += ["", "## Provenance", ""]
    out += _table(["field", "value"], [
        ["pipeline run id", r.pipeline.run_id], ["pipeline run name", r.pipeline.run_name or None],
        ["pipeline spec hash", r.pipeline.spec_hash or None], ["git commit", r.pipeline.git_commit or None],
        ["container image", r.pipeline.image_digest or None], ["weights sha256", r.model.weights_sha256],
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
