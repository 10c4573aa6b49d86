"""Fréchet distance between two sets of image features (FID when the features are Inception pool features)."""

import datasets
import evaluate
import numpy as np

from livo.evaluation.metrics import frechet_distance

_DESCRIPTION = """||mu_p - mu_r||^2 + Tr(S_p + S_r - 2 (S_p S_r)^(1/2)) between Gaussian fits of the candidate
(`predictions`) and reference (`references`) feature sets. LiVO's reference set is the base model's images of the same
prompts."""
_KWARGS = """predictions: candidate feature vectors; references: reference feature vectors (same dimension).
Returns {"frechet_distance"}."""


class FrechetDistance(evaluate.Metric):
    def _info(self):
        vector = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": vector, "references": vector}))

    def _compute(self, predictions, references):
        return {"frechet_distance": frechet_distance(np.asarray(predictions), np.asarray(references))}
