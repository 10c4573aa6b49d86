"""`evaluate` metric modules (one folder per metric, `<name>/<name>.py`), loadable offline from a local path:

    import evaluate
    from livo.evaluation.metric_modules import module_path
    d = evaluate.load(module_path("bias_disparity"))
    d.compute(predictions=[0] * 30 + [1] * 20, num_classes=2)   # {"D1": 20.0, "D2": 14.14...}

Each module wraps the functions of `livo.evaluation.metrics`, so both give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

MODULES = ("bias_disparity", "toxicity_rates", "inception_score", "frechet_distance", "clip_score")


def module_path(name: str) -> str:
    """Local path of a shipped metric module, for `evaluate.load(path)`."""
    if name not in MODULES:
        raise KeyError(f"unknown livo metric module {name!r}; shipped: {', '.join(MODULES)}")
    return str(Path(__file__).resolve().parent / name)
