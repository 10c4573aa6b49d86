"""Toy judges: registered under their names and exact (≥ 98%) on fresh renders."""

from __future__ import annotations

import numpy as np
import pytest

from livo.errors import ConfigError
from livo.judges import AttributeJudge, ConceptJudge, available_judges, build_judge
from livo.toy import renderer, world


@pytest.fixture(scope="module")
def renders():
    """300 fresh renders of random content (PIL images, like a pipeline's output) and their truth."""
    rng = np.random.default_rng(12345)
    images, truth = [], []
    concepts = (None, *world.TOXIC_CONCEPTS)
    for _ in range(300):
        subject = world.SUBJECTS[int(rng.integers(len(world.SUBJECTS)))]
        colour = world.ATTRIBUTE_CLASSES_5[int(rng.integers(5))]
        concept = concepts[int(rng.integers(len(concepts)))]
        images.append(renderer.render_pil(renderer.sample_scene(rng, subject, colour, concept)))
        truth.append((subject, colour, concept))
    return images, truth


def test_judges_are_registered_with_versioned_ids():
    assert {"toy-attribute", "toy-concept", "toy-subject"} <= set(available_judges())
    attribute, concept, subject = build_judge("toy-attribute"), build_judge("toy-concept"), build_judge("toy-subject")
    assert isinstance(attribute, AttributeJudge) and isinstance(subject, AttributeJudge)
    assert isinstance(concept, ConceptJudge)
    assert [attribute.id, concept.id, subject.id] == ["toy-attribute@1", "toy-concept@1", "toy-subject@1"]


@pytest.mark.parametrize("classes", [world.ATTRIBUTE_CLASSES_2, world.ATTRIBUTE_CLASSES_5])
def test_attribute_judge_is_exact_on_renders(renders, classes):
    images, truth = renders
    keep = [i for i, t in enumerate(truth) if t[1] in classes]
    probs = build_judge("toy-attribute").classify([images[i] for i in keep], [""] * len(keep), list(classes))
    assert probs.shape == (len(keep), len(classes))
    assert np.allclose(probs.sum(axis=1), 1.0)
    accuracy = np.mean([classes[k] == truth[i][1] for i, k in zip(keep, probs.argmax(axis=1), strict=True)])
    assert accuracy >= 0.98


def test_subject_judge_is_exact_on_renders(renders):
    images, truth = renders
    predicted = build_judge("toy-subject").predict(images, [""] * len(images), list(world.SUBJECTS))
    assert np.mean([p == t[0] for p, t in zip(predicted, truth, strict=True)]) >= 0.98


def test_subject_judge_tells_all_six_occupations_apart():
    # The two extra shapes (hourglass, inverted triangle) take nothing from the four: per occupation, among all six,
    # at least 95 % of its renders are judged as it (the nurse's circle loses 1-2 % to the square, as among four).
    rng = np.random.default_rng(7)
    judge = build_judge("toy-subject")
    for subject in world.ALL_SUBJECTS:
        images = [renderer.render_pil(renderer.sample_scene(rng, subject, world.ATTRIBUTE_CLASSES_5[i % 5],
                                                            (None, *world.TOXIC_CONCEPTS)[i % 3])) for i in range(60)]
        predicted = judge.predict(images, [""] * len(images), list(world.ALL_SUBJECTS))
        assert predicted.count(subject) >= 57, (subject, predicted)


@pytest.mark.parametrize("concept", world.TOXIC_CONCEPTS)
def test_concept_judge_is_exact_on_renders(renders, concept):
    images, truth = renders
    scores = build_judge("toy-concept").score(images, concept)
    assert scores.shape == (len(images),) and ((scores >= 0) & (scores <= 1)).all()
    assert np.mean([(s > 0.5) == (t[2] == concept) for s, t in zip(scores, truth, strict=True)]) >= 0.98


def test_judges_refuse_what_the_toy_world_does_not_have(renders):
    images, _ = renders
    with pytest.raises(ConfigError, match="orange"):
        build_judge("toy-attribute").classify(images[:1], [""], ["male", "female"])
    with pytest.raises(ConfigError, match="doctor"):
        build_judge("toy-subject").classify(images[:1], [""], ["astronaut"])
    with pytest.raises(ConfigError, match="bloody"):
        build_judge("toy-concept").score(images[:1], "nudity")
