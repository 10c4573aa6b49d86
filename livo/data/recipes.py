"""Recipes: which images to generate for a scene and which (aligned, violating) pairs the judges confirm.

Generation runs in two phases per shard (see `livo.data.generate`):

1. *violating candidates*: `candidates_per_scene` base-model images of the plain prompt, judged;
2. *aligned candidates*, only for scenes with at least one confirmed violating image, judged:
   - **bias**: the scene's majority class is the class the judge sees most often among the candidates; violating
     images are the candidates judged as that class (P ≥ `min_class_probability`). Classes seen less often than the
     majority are under-represented; the aligned candidates cycle over them, each made from the attribute-augmented
     prompt ("a photo of the face of a female doctor") and kept when judged as that class (P ≥
     `min_class_probability`). A scene whose classes are all equally frequent shows no bias and is skipped
     (`skip_balanced_scenes`).
   - **toxicity**: violating images are candidates with P(concept) ≥ `toxic_min_probability`; aligned candidates are
     made from the clean prompt (concept words removed) with the principle's negative prompt and kept when
     P(concept) ≤ `clean_max_probability`.

Pairs zip the kept aligned and violating images in generation order (each image used once), at most
`max_pairs_per_scene`. Every kept pair stores the judge scores of both images and of the scene.

Seeds are derived from (base seed, scene, role, class, index) by hashing, so an image's seed — and with it the image —
does not depend on sharding, batch composition of other scenes, or which other scenes are selected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from livo.config import LivoConfig
from livo.data.prompts import Scene

VIOLATING = "violating"
ALIGNED = "aligned"
CONTRAST = "contrast"  # bias: the aligned attribute on another subject (a violating image of the subject, not the value)


class JudgingConfig(LivoConfig):
    """Which judges confirm pairs, and how sure they must be. Judge names come from the preset when left empty."""

    attribute: str | None = Field(None, description="attribute judge name (bias principles), e.g. toy-attribute")
    concept: str | None = Field(None, description="concept judge name (toxicity principles), e.g. toy-concept")
    subject: str | None = Field(
        None, description="optional subject judge (e.g. toy-subject): a candidate is kept only when this judge "
                          "recognises the scene's subject, so the two images of a pair differ in what the principle "
                          "is about, not in what is drawn. None = subjects are not checked")
    subject_classes: list[str] = Field(
        default_factory=list, description="the subjects the subject judge chooses among; empty = the subjects of the "
                                          "generated scenes")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="judge name -> build options")
    min_class_probability: float = Field(
        0.5, ge=0.0, le=1.0,
        description="bias: an image counts as class c when c is the judge's top class and P(c) >= this")
    toxic_min_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="toxicity: a violating image needs P(concept) >= this")
    clean_max_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="toxicity: an aligned image needs P(concept) <= this")
    skip_balanced_scenes: bool = Field(
        True, description="bias: skip scenes in which no class is seen less often than the majority class")
    accept_all: bool = Field(
        False,
        description="keep every candidate whatever the judges say (scores are still computed and stored). For the "
                    "`tiny` preset, whose random-weight images no judge can read; never for real data.")


def derive_seed(base_seed: int, *parts: object) -> int:
    """A 32-bit seed from the base seed and the image's identity (stable across Python versions and machines)."""
    material = "|".join([str(base_seed), *map(str, parts)]).encode("utf-8")
    return int.from_bytes(hashlib.sha256(material).digest()[:4], "big")


@dataclass(frozen=True)
class ImageRequest:
    """One image to generate. `key` identifies it within its scene: (role, class or '', index)."""

    scene_index: int
    role: str
    target_class: str
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    pair_with: int | None = None  # matched pairing: the violating candidate whose seed (initial noise) this shares


@dataclass
class SceneOutcome:
    """What the judges made of one scene: kept images (indices into its requests) and the verdict."""

    scene: Scene
    violating_requests: list[ImageRequest] = field(default_factory=list)
    violating_scores: list[dict[str, Any]] = field(default_factory=list)
    kept_violating: list[int] = field(default_factory=list)
    majority_class: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    underrepresented: list[str] = field(default_factory=list)
    aligned_requests: list[ImageRequest] = field(default_factory=list)
    aligned_scores: list[dict[str, Any]] = field(default_factory=list)
    kept_aligned: list[int] = field(default_factory=list)
    kept_contrast: list[int] = field(default_factory=list)  # indices into aligned_requests (role CONTRAST)
    skipped: str | None = None  # why no aligned candidates were generated


def violating_requests(scene: Scene, scene_index: int, count: int, base_seed: int) -> list[ImageRequest]:
    return [
        ImageRequest(scene_index, VIOLATING, "", k, scene.prompt, "", derive_seed(base_seed, scene.scene, VIOLATING, k))
        for k in range(count)
    ]


def majority_class(probs: Any, classes: Sequence[str]) -> tuple[dict[str, int], str, list[str]]:
    """`(counts, majority, under-represented)` of images judged `probs` (`[N, K]`): each image counts for its most
    probable class; the majority is the most counted class (ties: the higher mean probability, then the earlier
    class, so it is deterministic); the under-represented classes are those counted less often (possibly none). The
    bias recipe's aligned images cycle over them, and so does evaluation's named reference."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    counts = {c: 0 for c in classes}
    for verdict in _class_verdicts(probs, classes):
        counts[verdict["class"]] += 1
    mean_probs = probs.mean(axis=0) if len(probs) else np.zeros(len(classes))
    order = sorted(range(len(classes)), key=lambda i: (-counts[classes[i]], -mean_probs[i], i))
    majority = classes[order[0]]
    return counts, majority, [c for c in classes if counts[c] < counts[majority]]


def _class_verdicts(probs: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for row in np.asarray(probs, dtype=np.float64):
        top = int(row.argmax())
        out.append({"class": classes[top], "probs": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)}})
    return out


def _subject_filter(kept: list[int], scores: list[dict[str, Any]], subject_ok: Sequence[bool] | None,
                    config: JudgingConfig) -> list[int]:
    """`kept` without the candidates whose subject the subject judge did not recognise (scores record the verdict)."""
    if subject_ok is None:
        return kept
    for score, ok in zip(scores, subject_ok, strict=True):
        score["subject_ok"] = bool(ok)
    return kept if config.accept_all else [i for i in kept if subject_ok[i]]


def judge_violating(outcome: SceneOutcome, judge_output: np.ndarray, config: JudgingConfig,
                    subject_ok: Sequence[bool] | None = None) -> None:
    """Record the violating candidates' scores and decide the majority class (bias) / toxic images (toxicity). The
    majority class counts every candidate (it measures the base model's bias); `subject_ok` (the subject judge's
    verdict per candidate, when one is configured) only decides which candidates can be used in pairs."""
    scene = outcome.scene
    if scene.category == "bias":
        verdicts = _class_verdicts(judge_output, scene.classes)
        outcome.violating_scores = verdicts
        counts, majority, outcome.underrepresented = majority_class(judge_output, scene.classes)
        outcome.class_counts = counts
        outcome.majority_class = majority
        if config.accept_all:
            outcome.kept_violating = list(range(len(verdicts)))
            if not outcome.underrepresented:
                outcome.underrepresented = [c for c in scene.classes if c != majority]
            return
        outcome.kept_violating = [
            i for i, v in enumerate(verdicts)
            if v["class"] == majority and v["probs"][majority] >= config.min_class_probability
        ]
        if not outcome.underrepresented:
            if config.skip_balanced_scenes:
                outcome.skipped = "balanced"
                outcome.kept_violating = []
            else:
                outcome.underrepresented = [c for c in scene.classes if c != majority]
    else:
        probs = [float(p) for p in np.asarray(judge_output, dtype=np.float64).reshape(-1)]
        outcome.violating_scores = [{"p_concept": round(p, 6)} for p in probs]
        outcome.kept_violating = [
            i for i, p in enumerate(probs) if config.accept_all or p >= config.toxic_min_probability
        ]
    if outcome.skipped is None:
        outcome.kept_violating = _subject_filter(outcome.kept_violating, outcome.violating_scores, subject_ok, config)
    if not outcome.kept_violating and outcome.skipped is None:
        outcome.skipped = "no violating image"


def aligned_requests(outcome: SceneOutcome, scene_index: int, count: int, base_seed: int,
                     matched: bool = False, contrast: int = 0) -> list[ImageRequest]:
    """The aligned candidates of a scene (see `_aligned_only`), then `contrast` subject-contrast candidates for a bias
    scene with other subjects: the under-represented class's attribute on another subject of the scene type ("an
    orange nurse" for the doctor scene). Kept ones become extra violating images of the scene: they teach the value
    token to change the attribute and not the subject (docs/data.md, "Subject contrast")."""
    requests = _aligned_only(outcome, scene_index, count, base_seed, matched)
    scene = outcome.scene
    if not requests or not contrast or scene.category != "bias" or not scene.contrast_prompts:
        return requests
    for k in range(contrast):
        target = outcome.underrepresented[k % len(outcome.underrepresented)]
        options = scene.contrast_prompts[target]
        prompt = options[(k // len(outcome.underrepresented)) % len(options)]
        requests.append(ImageRequest(scene_index, CONTRAST, target, len(requests), prompt, "",
                                     derive_seed(base_seed, scene.scene, CONTRAST, target, k)))
    return requests


def _aligned_only(outcome: SceneOutcome, scene_index: int, count: int, base_seed: int,
                  matched: bool = False) -> list[ImageRequest]:
    """The aligned candidates of a scene that has violating images (none otherwise).

    `matched`: one aligned candidate per kept violating image, generated from the same seed (the same initial noise),
    so that the two images of a pair differ in what the prompt changes (the attribute, the mark) and not in pose,
    place or shape; `select_pairs` then pairs each with its own violating image."""
    scene = outcome.scene
    if outcome.skipped is not None or not outcome.kept_violating:
        return []
    requests = []
    for k, v_idx in enumerate(outcome.kept_violating[:count] if matched else [None] * count):
        target, prompt, negative = _aligned_prompt(outcome, k)
        seed = (outcome.violating_requests[v_idx].seed if matched
                else derive_seed(base_seed, scene.scene, ALIGNED, target, k))
        requests.append(ImageRequest(scene_index, ALIGNED, target, k, prompt, negative, seed, pair_with=v_idx))
    return requests


def _aligned_prompt(outcome: SceneOutcome, k: int) -> tuple[str, str, str]:
    """(target class, prompt, negative prompt) of a scene's k-th aligned candidate: bias cycles over the
    under-represented classes' augmented prompts; toxicity uses the clean prompt and the negative prompt."""
    scene = outcome.scene
    if scene.category == "bias":
        target = outcome.underrepresented[k % len(outcome.underrepresented)]
        return target, scene.attribute_prompts[target], ""
    return "", scene.clean_prompt or scene.prompt, scene.negative_prompt or ""


def judge_aligned(outcome: SceneOutcome, judge_output: np.ndarray, config: JudgingConfig,
                  subject_ok: Sequence[bool] | None = None) -> None:
    scene = outcome.scene
    if scene.category == "bias":
        verdicts = _class_verdicts(judge_output, scene.classes)
        outcome.aligned_scores = verdicts
        shows_target = [
            i for i, (request, verdict) in enumerate(zip(outcome.aligned_requests, verdicts, strict=True))
            if config.accept_all or (verdict["class"] == request.target_class
                                     and verdict["probs"][request.target_class] >= config.min_class_probability)
        ]
        contrast = [i for i in shows_target if outcome.aligned_requests[i].role == CONTRAST]
        outcome.kept_aligned = [i for i in shows_target if outcome.aligned_requests[i].role != CONTRAST]
        if subject_ok is not None:  # a contrast image must show another subject than the scene's
            contrast = [i for i in contrast if config.accept_all or not subject_ok[i]]
        outcome.kept_contrast = contrast
    else:
        probs = [float(p) for p in np.asarray(judge_output, dtype=np.float64).reshape(-1)]
        outcome.aligned_scores = [{"p_concept": round(p, 6)} for p in probs]
        outcome.kept_aligned = [
            i for i, p in enumerate(probs) if config.accept_all or p <= config.clean_max_probability
        ]
    outcome.kept_aligned = _subject_filter(outcome.kept_aligned, outcome.aligned_scores, subject_ok, config)


@dataclass(frozen=True)
class PairSelection:
    aligned: ImageRequest
    violating: ImageRequest
    judge_scores: dict[str, Any]


def select_pairs(outcome: SceneOutcome, judge_ids: dict[str, str], max_pairs: int | None = None
                 ) -> list[PairSelection]:
    """Zip kept aligned and kept violating images (generation order, each image once); matched aligned candidates
    (`pair_with`) are paired with their own violating image only."""
    scene = outcome.scene
    if outcome.aligned_requests and outcome.aligned_requests[0].pair_with is not None:
        matches = [(a, outcome.aligned_requests[a].pair_with) for a in outcome.kept_aligned
                   if outcome.aligned_requests[a].pair_with in outcome.kept_violating]
    else:
        count = min(len(outcome.kept_aligned), len(outcome.kept_violating))
        matches = list(zip(outcome.kept_aligned[:count], outcome.kept_violating[:count], strict=True))
    if max_pairs is not None:
        matches = matches[:max_pairs]
    kind = "attribute" if scene.category == "bias" else "concept"
    # Subject-contrast images are the violating side of extra pairs, each with a kept aligned image in turn.
    extra = [(outcome.kept_aligned[j % len(outcome.kept_aligned)], c_idx)
             for j, c_idx in enumerate(outcome.kept_contrast)] if outcome.kept_aligned else []
    pairs = []
    for a_idx, v_idx, is_contrast in [(a, v, False) for a, v in matches] + [(a, c, True) for a, c in extra]:
        aligned = outcome.aligned_requests[a_idx]
        violating = outcome.aligned_requests[v_idx] if is_contrast else outcome.violating_requests[v_idx]
        scores: dict[str, Any] = {
            "judge": judge_ids.get(kind),
            "aligned": outcome.aligned_scores[a_idx],
            "violating": outcome.aligned_scores[v_idx] if is_contrast else outcome.violating_scores[v_idx],
        }
        if is_contrast:
            scores["contrast"] = "subject"  # same attribute as the aligned image, another subject
        if scene.category == "bias":
            scores.update(attribute=scene.attribute, target_class=aligned.target_class,
                          majority_class=outcome.majority_class, scene_class_counts=outcome.class_counts)
        else:
            scores.update(concept=scene.concept)
        pairs.append(PairSelection(aligned, violating, scores))
    return pairs
