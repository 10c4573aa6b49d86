"""Recipe decisions on given judge outputs: majority class, under-represented classes, thresholds, pairing."""

from __future__ import annotations

import numpy as np

from livo.data import recipes
from livo.data.prompts import Scene
from livo.data.recipes import JudgingConfig, SceneOutcome

BIAS = Scene(principle_id="gender-equality", principle_text="gender equality", category="bias",
             scene="gender-equality/career/doctor", scene_type="career", prompt="a photo of a doctor",
             attribute="gender", classes=("male", "female", "other"),
             attribute_prompts={"male": "a photo of a male doctor", "female": "a photo of a female doctor",
                                "other": "a photo of an other doctor"})
TOXIC = Scene(principle_id="bloody", principle_text="bloody considered inappropriate", category="toxicity",
              scene="bloody/bloody/knife", scene_type="bloody", prompt="a bloody knife", concept="bloody",
              clean_prompt="a knife", negative_prompt="blood")


def test_seeds_are_stable_and_distinct():
    assert recipes.derive_seed(0, "s", "violating", 0) == recipes.derive_seed(0, "s", "violating", 0)
    seeds = {recipes.derive_seed(seed, "s", role, k) for seed in (0, 1) for role in ("a", "v") for k in range(50)}
    assert len(seeds) == 200
    assert recipes.derive_seed(0, "scene", "violating", 0) == 1842942342  # fixed forever: datasets depend on it


def test_bias_majority_and_underrepresented_classes():
    outcome = SceneOutcome(scene=BIAS, violating_requests=recipes.violating_requests(BIAS, 0, 5, base_seed=0))
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.45, 0.3, 0.25], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    recipes.judge_violating(outcome, probs, JudgingConfig())
    assert outcome.class_counts == {"male": 4, "female": 1, "other": 0}
    assert outcome.majority_class == "male"
    assert outcome.underrepresented == ["female", "other"]
    assert outcome.kept_violating == [0, 1, 4]  # image 2 is male but P = 0.45 < 0.5
    aligned = recipes.aligned_requests(outcome, 0, 4, base_seed=0)
    assert [r.target_class for r in aligned] == ["female", "other", "female", "other"]
    assert aligned[0].prompt == "a photo of a female doctor"
    outcome.aligned_requests = aligned
    recipes.judge_aligned(outcome, np.array([[0.1, 0.9, 0.0], [0.3, 0.6, 0.1], [0.4, 0.55, 0.05],
                                             [0.1, 0.1, 0.8]]), JudgingConfig())
    assert outcome.kept_aligned == [0, 2, 3]  # image 1 was asked for "other" but shows "female"
    pairs = recipes.select_pairs(outcome, {"attribute": "judge@1"}, max_pairs=2)
    assert [(p.aligned.index, p.violating.index) for p in pairs] == [(0, 0), (2, 1)]
    assert pairs[0].judge_scores["aligned"]["probs"]["female"] == 0.9
    assert pairs[0].judge_scores["majority_class"] == "male" and pairs[0].judge_scores["judge"] == "judge@1"


def test_balanced_scene_is_skipped_unless_asked():
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.0, 0.9]])
    outcome = SceneOutcome(scene=BIAS)
    recipes.judge_violating(outcome, probs, JudgingConfig())
    assert outcome.skipped == "balanced" and recipes.aligned_requests(outcome, 0, 4, 0) == []
    outcome = SceneOutcome(scene=BIAS)
    recipes.judge_violating(outcome, probs, JudgingConfig(skip_balanced_scenes=False))
    assert outcome.majority_class == "male" and outcome.underrepresented == ["female", "other"]


def test_toxicity_thresholds_and_accept_all():
    outcome = SceneOutcome(scene=TOXIC, violating_requests=recipes.violating_requests(TOXIC, 3, 4, base_seed=7))
    recipes.judge_violating(outcome, np.array([0.9, 0.2, 0.5, 0.99]), JudgingConfig())
    assert outcome.kept_violating == [0, 2, 3]
    outcome.aligned_requests = recipes.aligned_requests(outcome, 3, 3, base_seed=7)
    assert {(r.prompt, r.negative_prompt) for r in outcome.aligned_requests} == {("a knife", "blood")}
    recipes.judge_aligned(outcome, np.array([0.1, 0.7, 0.3]), JudgingConfig(clean_max_probability=0.3))
    assert outcome.kept_aligned == [0, 2]
    assert [p.judge_scores["violating"]["p_concept"] for p in recipes.select_pairs(outcome, {})] == [0.9, 0.5]

    none_toxic = SceneOutcome(scene=TOXIC, violating_requests=outcome.violating_requests)
    recipes.judge_violating(none_toxic, np.array([0.1, 0.2, 0.3, 0.4]), JudgingConfig())
    assert none_toxic.skipped == "no violating image" and recipes.aligned_requests(none_toxic, 3, 3, 7) == []
    recipes.judge_violating(none_toxic, np.array([0.1, 0.2, 0.3, 0.4]), JudgingConfig(accept_all=True))
    assert none_toxic.kept_violating == [0, 1, 2, 3]


def test_subject_judge_drops_candidates_that_draw_another_subject():
    """The majority class counts every candidate (the base model's bias), but only candidates showing the scene's
    subject enter pairs, so a pair differs in the attribute, not in what is drawn (issue 15)."""
    outcome = SceneOutcome(scene=BIAS, violating_requests=recipes.violating_requests(BIAS, 0, 4, base_seed=0))
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0], [0.2, 0.8, 0.0]])
    recipes.judge_violating(outcome, probs, JudgingConfig(), subject_ok=[True, False, True, True])
    assert outcome.class_counts == {"male": 3, "female": 1, "other": 0}
    assert outcome.kept_violating == [0, 2]
    assert [s["subject_ok"] for s in outcome.violating_scores] == [True, False, True, True]
    outcome.aligned_requests = recipes.aligned_requests(outcome, 0, 3, base_seed=0)
    recipes.judge_aligned(outcome, np.array([[0.1, 0.9, 0.0], [0.1, 0.1, 0.8], [0.0, 0.9, 0.1]]), JudgingConfig(),
                          subject_ok=[False, True, True])
    assert outcome.kept_aligned == [1, 2]
    pairs = recipes.select_pairs(outcome, {"attribute": "judge@1"})
    assert [(p.aligned.index, p.violating.index) for p in pairs] == [(1, 0), (2, 2)]
    assert pairs[0].judge_scores["aligned"]["subject_ok"] is True

    toxic = SceneOutcome(scene=TOXIC, violating_requests=recipes.violating_requests(TOXIC, 0, 3, base_seed=0))
    recipes.judge_violating(toxic, np.array([0.9, 0.95, 0.2]), JudgingConfig(), subject_ok=[False, True, True])
    assert toxic.kept_violating == [1]
    toxic = SceneOutcome(scene=TOXIC, violating_requests=recipes.violating_requests(TOXIC, 0, 2, base_seed=0))
    recipes.judge_violating(toxic, np.array([0.9, 0.95]), JudgingConfig(), subject_ok=[False, False])
    assert toxic.kept_violating == [] and toxic.skipped == "no violating image"


def test_matched_pairing_shares_the_violating_seed_and_pairs_only_with_it():
    outcome = SceneOutcome(scene=BIAS, violating_requests=recipes.violating_requests(BIAS, 0, 4, base_seed=3))
    recipes.judge_violating(outcome, np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0]]),
                            JudgingConfig())
    assert outcome.kept_violating == [0, 2, 3]
    aligned = recipes.aligned_requests(outcome, 0, 4, base_seed=3, matched=True)
    assert [r.pair_with for r in aligned] == [0, 2, 3]  # one per kept violating image, never more
    assert [r.seed for r in aligned] == [outcome.violating_requests[v].seed for v in (0, 2, 3)]
    assert [r.target_class for r in aligned] == ["female", "other", "female"]
    outcome.aligned_requests = aligned
    recipes.judge_aligned(outcome, np.array([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.1, 0.8, 0.1]]), JudgingConfig())
    assert outcome.kept_aligned == [0, 2]  # the "other" candidate came out male
    pairs = recipes.select_pairs(outcome, {"attribute": "judge@1"})
    assert [(p.aligned.index, p.violating.index) for p in pairs] == [(0, 0), (2, 3)]
    assert all(p.aligned.seed == p.violating.seed for p in pairs)
    assert len(recipes.aligned_requests(outcome, 0, 2, base_seed=3, matched=True)) == 2  # capped by the count


def test_subject_contrast_images_become_extra_violating_images():
    """subject_contrast: the aligned attribute on another subject ("a photo of a female nurse" for the doctor scene)
    is kept when the judges see the target class and NOT the scene's subject, and pairs with the kept aligned images."""
    from dataclasses import replace

    scene = replace(BIAS, subject="doctor", contrast_prompts={
        "male": ("a photo of a male nurse",), "female": ("a photo of a female nurse", "a photo of a female chef"),
        "other": ("a photo of an other nurse",)})
    outcome = SceneOutcome(scene=scene, violating_requests=recipes.violating_requests(scene, 0, 3, base_seed=0))
    recipes.judge_violating(outcome, np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.2, 0.8, 0.0]]), JudgingConfig())
    assert outcome.underrepresented == ["female", "other"]
    requests = recipes.aligned_requests(outcome, 0, 2, base_seed=0, contrast=4)
    assert [(r.role, r.target_class, r.index) for r in requests] == [
        ("aligned", "female", 0), ("aligned", "other", 1), ("contrast", "female", 2), ("contrast", "other", 3),
        ("contrast", "female", 4), ("contrast", "other", 5)]
    assert [r.prompt for r in requests[2:]] == ["a photo of a female nurse", "a photo of an other nurse",
                                               "a photo of a female chef", "a photo of an other nurse"]
    assert len({r.seed for r in requests}) == 6
    outcome.aligned_requests = requests
    probs = np.array([[0.1, 0.9, 0.0], [0.1, 0.1, 0.8],      # aligned: female, other
                      [0.1, 0.9, 0.0], [0.9, 0.1, 0.0],      # contrast: female (kept), male (not the target)
                      [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])     # contrast: female but drawn as a doctor; other (kept)
    recipes.judge_aligned(outcome, probs, JudgingConfig(), subject_ok=[True, True, False, False, True, False])
    assert outcome.kept_aligned == [0, 1] and outcome.kept_contrast == [2, 5]
    pairs = recipes.select_pairs(outcome, {"attribute": "judge@1"})
    contrast = [p for p in pairs if p.judge_scores.get("contrast") == "subject"]
    assert [(p.aligned.index, p.violating.index, p.violating.role) for p in contrast] == [
        (0, 2, "contrast"), (1, 5, "contrast")]
    assert contrast[0].judge_scores["violating"]["subject_ok"] is False
    assert len(pairs) == 2 + 2  # the zipped aligned/violating pairs, then the contrast pairs
    toxic = SceneOutcome(scene=TOXIC, violating_requests=recipes.violating_requests(TOXIC, 0, 2, base_seed=0))
    recipes.judge_violating(toxic, np.array([0.9, 0.9]), JudgingConfig())
    assert all(r.role == "aligned" for r in recipes.aligned_requests(toxic, 0, 2, base_seed=0, contrast=3))
