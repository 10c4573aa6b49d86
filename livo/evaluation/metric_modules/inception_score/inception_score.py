"""Inception Score from per-image class probabilities of any classifier (feature extractor pluggable)."""

import datasets
import evaluate
import numpy as np

from livo.evaluation.metrics import inception_score

_DESCRIPTION = """IS = exp(E_x KL(p(y|x) || p(y))) over per-image class probabilities; mean and std over `splits`."""
_KWARGS = """predictions: one probability vector per image. splits (default 1). Returns {"inception_score",
"inception_score_std"}."""


class InceptionScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": datasets.Sequence(
                                       datasets.Value("float64"))}))

    def _compute(self, predictions, splits=1):
        mean, std = inception_score(np.asarray(predictions, dtype=np.float64), splits=splits)
        return {"inception_score": mean, "inception_score_std": std}
