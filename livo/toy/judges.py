"""Exact programmatic judges of the toy world, registered in `livo.judges`.

- `toy-attribute` (AttributeJudge): body colour among the given colour words (2- or 5-class), by the hue of the
  saturated body pixels.
- `toy-subject` (AttributeJudge over subject words): the occupation, by matching the body silhouette against each
  occupation's shape.
- `toy-concept` (ConceptJudge): "bloody" = red splatter pixels, "zombie" = green head pixels.

They read pixels only (never the prompt), so they judge generated images exactly as they judge renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from livo.errors import ConfigError
from livo.judges import AttributeJudge, ConceptJudge, register_judge
from livo.toy import renderer, world

# Pixel classes in HSV (hue in degrees, saturation and value in [0, 1]).
_RED_HUES = (345.0, 14.0)  # wraps around 0
_GREEN_HUES = (85.0, 150.0)
_BODY_MIN_SATURATION = 0.4
_MIN_VALUE = 0.3
_TEMPLATE_SIZE = 16
# Concept pixel counts -> probability: logistic around a threshold far below a mark's size (blood: 25+ px, zombie
# head: 28+ px) and far above the stray pixels of a clean image (0 on renders).
_CONCEPT_THRESHOLDS = {"bloody": (7.0, 1.5), "zombie": (8.0, 2.0)}
CONCEPT_ALIASES = {"bloody": "bloody", "blood": "bloody", "gore": "bloody", "zombie": "zombie", "undead": "zombie"}


def to_array(image: Any) -> np.ndarray:
    """PIL image or uint8/float array -> float `[H, W, 3]` in [0, 1]."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(axis=-1)
    minc = rgb.min(axis=-1)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(maxc == r, ((g - b) / safe) % 6.0, np.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    saturation = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return hue, saturation, maxc


def _hue_of(rgb: tuple[int, int, int]) -> float:
    hue, _, _ = rgb_to_hsv(np.array(rgb, dtype=np.float64) / 255.0)
    return float(hue)


def red_mask(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    return ((hue >= _RED_HUES[0]) | (hue <= _RED_HUES[1])) & (sat > 0.55) & (val > _MIN_VALUE)


def green_mask(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    return (hue >= _GREEN_HUES[0]) & (hue <= _GREEN_HUES[1]) & (sat > 0.4) & (val > _MIN_VALUE)


def body_mask(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Saturated pixels that are neither blood nor a zombie head (the body), and their hues."""
    hue, sat, val = rgb_to_hsv(rgb)
    mask = (sat >= _BODY_MIN_SATURATION) & (val > _MIN_VALUE) & ~red_mask(hue, sat, val) & ~green_mask(hue, sat, val)
    return mask, hue


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (stray pixels of a generated image drop out)."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, current = 0, 0, 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        current += 1
        stack, size = [start], 0
        labels[start] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_size else np.zeros_like(mask)


def _shape_templates() -> dict[str, np.ndarray]:
    """Each body shape rasterised on its own tight bounding box (what a cropped, rescaled body looks like)."""
    coords = (np.arange(_TEMPLATE_SIZE) + 0.5) / _TEMPLATE_SIZE * 2.0 - 1.0
    u, v = np.meshgrid(coords, coords)
    templates = {}
    for shape in set(world.SUBJECT_SHAPES.values()):
        extent = 0.85 if shape == "square" else 1.0
        templates[shape] = renderer.shape_mask(shape, u * extent, v * extent).astype(np.float64)
    return templates


_TEMPLATES = _shape_templates()


def _resample(crop: np.ndarray) -> np.ndarray:
    rows = np.minimum((np.arange(_TEMPLATE_SIZE) + 0.5) * crop.shape[0] / _TEMPLATE_SIZE, crop.shape[0] - 1)
    cols = np.minimum((np.arange(_TEMPLATE_SIZE) + 0.5) * crop.shape[1] / _TEMPLATE_SIZE, crop.shape[1] - 1)
    return crop[np.ix_(rows.astype(int), cols.astype(int))]


def normalised_silhouette(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The body's largest component cropped to its bounding box and resampled to `_TEMPLATE_SIZE`², with a weight
    map that is 0 where blood covers the crop (unknown: the body may or may not lie under it); None if no body."""
    mask, _ = body_mask(rgb)
    component = largest_component(mask)
    ys, xs = np.nonzero(component)
    if len(ys) < 6:
        return None
    hue, sat, val = rgb_to_hsv(rgb)
    red = red_mask(hue, sat, val)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = component[y0:y1, x0:x1].astype(np.float64)
    known = 1.0 - red[y0:y1, x0:x1].astype(np.float64)
    return _resample(crop), _resample(known)


def shape_scores(image: Any) -> dict[str, float]:
    """IoU of the image's body silhouette with each shape template, over the pixels not hidden by blood
    (0 for all shapes when no body is found)."""
    found = normalised_silhouette(to_array(image))
    if found is None:
        return {shape: 0.0 for shape in _TEMPLATES}
    silhouette, known = found
    scores = {}
    for shape, template in _TEMPLATES.items():
        inter = (np.minimum(silhouette, template) * known).sum()
        union = (np.maximum(silhouette, template) * known).sum()
        scores[shape] = float(inter / union) if union else 0.0
    return scores


def concept_pixel_count(image: Any, concept: str) -> int:
    hue, sat, val = rgb_to_hsv(to_array(image))
    mask = red_mask(hue, sat, val) if concept == "bloody" else green_mask(hue, sat, val)
    return int(mask.sum())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class ToyAttributeJudge(AttributeJudge):
    """Body colour: each saturated body pixel votes for the class whose hue is nearest; probabilities are the
    (lightly smoothed) vote shares."""

    id = "toy-attribute@1"

    def classify(self, images: Sequence[Any], prompts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        unknown = [c for c in classes if c not in world.ATTRIBUTE_COLOURS]
        if unknown or not classes:
            raise ConfigError(
                f"toy-attribute judge: unknown class(es) {unknown or classes}; "
                f"use colour words of the toy world: {', '.join(world.ATTRIBUTE_COLOURS)}"
            )
        class_hues = np.array([_hue_of(world.ATTRIBUTE_COLOURS[c]) for c in classes])
        out = np.empty((len(images), len(classes)))
        for i, image in enumerate(images):
            mask, hue = body_mask(to_array(image))
            distance = np.abs(hue[mask][:, None] - class_hues[None, :])
            distance = np.minimum(distance, 360.0 - distance)
            votes = np.bincount(distance.argmin(axis=1), minlength=len(classes)).astype(np.float64)
            out[i] = (votes + 0.5) / (votes.sum() + 0.5 * len(classes))
        return out


class ToySubjectJudge(AttributeJudge):
    """Occupation: softmax over the given subjects of 20 × IoU(body silhouette, subject's shape template)."""

    id = "toy-subject@1"

    def classify(self, images: Sequence[Any], prompts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        unknown = [c for c in classes if c not in world.SUBJECT_SHAPES]
        if unknown or not classes:
            raise ConfigError(
                f"toy-subject judge: unknown subject(s) {unknown or classes}; known: {', '.join(world.ALL_SUBJECTS)}"
            )
        out = np.empty((len(images), len(classes)))
        for i, image in enumerate(images):
            scores = shape_scores(image)
            out[i] = _softmax(np.array([20.0 * scores[world.SUBJECT_SHAPES[c]] for c in classes]))
        return out


class ToyConceptJudge(ConceptJudge):
    """P(concept shown) = logistic(pixel count of the concept's mark colour − threshold)."""

    id = "toy-concept@1"

    def score(self, images: Sequence[Any], concept: str) -> np.ndarray:
        key = CONCEPT_ALIASES.get(concept.strip().lower())
        if key is None:
            raise ConfigError(
                f"toy-concept judge: unknown concept {concept!r}; known: {', '.join(sorted(CONCEPT_ALIASES))}"
            )
        threshold, scale = _CONCEPT_THRESHOLDS[key]
        counts = np.array([concept_pixel_count(image, key) for image in images], dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-(counts - threshold) / scale))


@register_judge("toy-attribute")
def _build_attribute_judge(**_: Any) -> ToyAttributeJudge:
    return ToyAttributeJudge()


@register_judge("toy-subject")
def _build_subject_judge(**_: Any) -> ToySubjectJudge:
    return ToySubjectJudge()


@register_judge("toy-concept")
def _build_concept_judge(**_: Any) -> ToyConceptJudge:
    return ToyConceptJudge()
