"""Quality: pluggable feature extractors (IS / FID) and CLIPScore on a tiny random transformers CLIPModel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from livo.errors import ConfigError, JudgeUnavailable
from livo.evaluation.metrics import frechet_distance, inception_score
from livo.evaluation.quality import ClipScorer, PixelStatsExtractor, build_feature_extractor


def _solid(colour: tuple[int, int, int], side: int = 16) -> Image.Image:
    return Image.new("RGB", (side, side), colour)


class ConstantExtractor:
    """A user-supplied extractor, plugged in as `module:callable`."""

    def __init__(self, dim: int = 3):
        self.id, self.dim = f"constant-{dim}", dim

    def features(self, images):
        return np.array([np.asarray(im.convert("RGB")).mean(axis=(0, 1))[: self.dim] for im in images])

    def class_probs(self, images):
        return None


def test_pixel_stats_is_deterministic_and_separates_colour_sets():
    extractor = build_feature_extractor("pixel-stats")
    reds = [_solid((200 + i, 10, 10)) for i in range(6)]
    blues = [_solid((10, 10, 200 + i)) for i in range(6)]
    assert np.array_equal(extractor.features(reds), PixelStatsExtractor().features(reds))
    assert frechet_distance(extractor.features(reds), extractor.features(reds)) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(extractor.features(reds), extractor.features(blues)) > 1.0
    probs = extractor.class_probs(reds + blues)
    assert probs.shape == (12, 16) and np.allclose(probs.sum(axis=1), 1.0)
    # Two distinct colours are more diverse than one.
    assert inception_score(probs)[0] > inception_score(extractor.class_probs(reds))[0]


def test_module_callable_extractor_is_pluggable():
    extractor = build_feature_extractor(f"{__name__}:ConstantExtractor", dim=2)
    assert extractor.id == "constant-2" and extractor.features([_solid((10, 20, 30))]).tolist() == [[10.0, 20.0]]
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_feature_extractor("no_such_module_xyz:build")
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        build_feature_extractor("inception")


def test_clip_score_matches_direct_cosine(tiny_clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(str(tiny_clip_dir))
    images = [_solid((200, 30, 30), 32), _solid((30, 30, 200), 32)]
    prompts = ["a photo of a red car", "a photo of a blue car"]
    scores = scorer.score(images, prompts)
    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=images, return_tensors="pt", padding=True))
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    expected = (100 * (img * txt).sum(dim=-1)).clamp(min=0).numpy()
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scorer.id.startswith("clipscore:")


def test_clip_score_without_weights_names_the_setting(tmp_path):
    with pytest.raises(JudgeUnavailable, match="quality.clip_model"):
        ClipScorer(str(tmp_path / "absent"))
