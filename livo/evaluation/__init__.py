"""Evaluation: the paper's bias / toxicity / quality protocol, judges, metrics, gates and reports.

- `livo.evaluation.config`: `EvaluationConfig` (prompts, images per prompt, judges, quality, gates).
- `livo.evaluation.protocol`: `plan_evaluation` -> `load_judges` -> `run_evaluation` (base vs candidate).
- `livo.evaluation.metrics`: D1/D2, R/S/Max/Prob, IS, FID, CLIPScore as plain functions.
- `livo.evaluation.judges`: paper judges (clip-zero-shot, llava-yes-no) and offline ones (nudenet, age-gender).
- `livo.evaluation.quality`: feature extractors for IS/FID, CLIPScore on a transformers CLIPModel.
- `livo.evaluation.gates`: `passed` from `GateConfig`.
- `livo.evaluation.report`: metrics.json, HTML report, Markdown summary, `format_summary_table`.
- `livo/evaluation/metric_modules/`: the same metrics as `evaluate` modules, loadable offline from a local path.

Import the submodules; this package's `__init__` imports nothing (so no submodule import can loop through it).
"""

