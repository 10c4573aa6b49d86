"""CLIPScore from paired image and text embeddings of a CLIP model (computed directly, no torchmetrics)."""

import datasets
import evaluate
import numpy as np

from livo.evaluation.metrics import clip_score_from_embeddings

_DESCRIPTION = """CLIPScore = 100 * max(cos(image embedding, text embedding), 0), averaged over the pairs."""
_KWARGS = """predictions: image embeddings; references: the embeddings of each image's prompt.
Returns {"clip_score": mean, "clip_scores": per pair}."""


class ClipScore(evaluate.Metric):
    def _info(self):
        vector = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"predictions": vector, "references": vector}))

    def _compute(self, predictions, references):
        scores = clip_score_from_embeddings(np.asarray(predictions), np.asarray(references))
        return {"clip_score": float(scores.mean()), "clip_scores": scores.tolist()}
