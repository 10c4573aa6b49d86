"""Image-quality measurement: pluggable feature extractors for IS / FID, and CLIPScore on a transformers CLIPModel.

A feature extractor has an `id`, `features(images) -> [N, D]` (for FID) and `class_probs(images) -> [N, C]` (for IS).
Shipped extractors:

- ``pixel-stats`` (default, offline, no weights): colour histograms and a downsampled-pixel layout of each image;
  class probabilities are a fixed seeded soft clustering of those features. Numbers from it compare a candidate
  with its base model on the same prompts; they are NOT comparable with Inception-based IS/FID from papers.
- ``clip``: image embeddings of a CLIPModel (``model`` = local directory or hub id) for FID ("FID-CLIP"); it has no
  classifier head, so IS is reported unavailable with it.
- ``module:callable``: any importable factory returning such an object, e.g. an Inception-v3 extractor in
  production where its weights are reachable (``quality.feature_extractor=mypkg.inception:build``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from livo.errors import ConfigError, JudgeUnavailable


class FeatureExtractor(Protocol):
    id: str

    def features(self, images: Sequence[Any]) -> np.ndarray: ...

    def class_probs(self, images: Sequence[Any]) -> np.ndarray | None: ...


class PixelStatsExtractor:
    """Deterministic offline features: 8-bin per-channel histograms + an 8×8 RGB thumbnail (216 dims)."""

    id = "pixel-stats-v1"

    def __init__(self, num_clusters: int = 16, temperature: float = 0.25, seed: int = 0):
        self.num_clusters, self.temperature = num_clusters, temperature
        self._projection = np.random.default_rng(seed).standard_normal((8 * 3 + 8 * 8 * 3, num_clusters))

    def features(self, images: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        rows = []
        for image in images:
            rgb = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float64) / 255.0
            hist = [np.histogram(rgb[:, :, c], bins=8, range=(0.0, 1.0))[0] / rgb[:, :, c].size for c in range(3)]
            thumb = rgb.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)).ravel()
            rows.append(np.concatenate([*hist, thumb]))
        return np.stack(rows)

    def class_probs(self, images: Sequence[Any]) -> np.ndarray:
        feats = self.features(images)
        logits = (feats - 0.5) @ self._projection / (self.temperature * np.sqrt(feats.shape[1]))
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


class ClipFeatureExtractor:
    """CLIP image embeddings as FID features (no class head: `class_probs` returns None, IS is unavailable)."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 16):
        from livo.evaluation.judges import ClipZeroShotJudge

        self._clip = ClipZeroShotJudge(model=model, device=device, batch_size=batch_size)
        self.id = self._clip.id.replace("clip-zero-shot", "clip-features")

    def features(self, images: Sequence[Any]) -> np.ndarray:
        return self._clip.image_embeddings(images)

    def class_probs(self, images: Sequence[Any]) -> None:
        return None


EXTRACTORS: dict[str, Callable[..., Any]] = {"pixel-stats": PixelStatsExtractor, "clip": ClipFeatureExtractor}


def build_feature_extractor(name: str, **options: Any) -> FeatureExtractor:
    """A registered extractor by name, or `package.module:factory` for a user-supplied one."""
    if name in EXTRACTORS:
        return EXTRACTORS[name](**options)
    if ":" in name:
        module_name, attr = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"feature extractor {name!r} cannot be imported ({exc}); give `module:callable` of an "
                              f"importable factory") from exc
        extractor = factory(**options)
        if not hasattr(extractor, "features") or not hasattr(extractor, "id"):
            raise ConfigError(f"feature extractor {name!r} returned {type(extractor).__name__}, which lacks "
                              f"`id` and `features(images)`")
        return extractor
    raise ConfigError(f"unknown feature extractor {name!r}; use one of {sorted(EXTRACTORS)} or `module:callable`")


class ClipScorer:
    """CLIPScore = 100 · max(cos(image, prompt), 0) with a transformers CLIPModel (computed directly, no torchmetrics:
    its CLIPScore breaks on transformers 5 output objects)."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 16):
        from livo.evaluation.judges import ClipZeroShotJudge

        try:
            self._clip = ClipZeroShotJudge(model=model, device=device, batch_size=batch_size)
        except JudgeUnavailable as exc:
            raise JudgeUnavailable(str(exc).replace("judges.options.clip-zero-shot.model", "quality.clip_model")
                                   .replace("judge clip-zero-shot", "CLIPScore model")) from exc
        self.id = self._clip.id.replace("clip-zero-shot", "clipscore")

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        from livo.evaluation.metrics import clip_score_from_embeddings

        unique = sorted(set(prompts))
        text = dict(zip(unique, self._clip.text_embeddings(unique), strict=True))
        return clip_score_from_embeddings(self._clip.image_embeddings(images), np.stack([text[p] for p in prompts]))
