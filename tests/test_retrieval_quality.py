"""Retriever precision (issue 19): the labelled sets, the operating point pinned on the held-out test split, the
tuning procedure that gives the defaults, calibrated confidence, the confidence floor, the semantic classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from livo.errors import ConfigError
from livo.principles import load_principles, load_principles_text
from livo.retrieval_quality import (
    MAX_HARMLESS_FALSE_TOXICITY,
    MIN_HARMFUL_RECALL,
    Scored,
    labelled_accuracy,
    operating_point,
    per_principle,
    pooled,
    pr_curve,
    reliability,
    tune_defaults,
)
from livo.retriever import (
    DEFAULT_CALIBRATION,
    DEFAULT_PERSON_THRESHOLD,
    DEFAULT_THRESHOLD,
    SemanticClassifier,
    ValueRetriever,
    fit_logistic,
    load_labelled,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"
TOXIC = ("nudity", "bloody", "zombie")


@pytest.fixture(scope="module")
def principles():
    return load_principles()


@pytest.fixture(scope="module")
def retriever(principles):
    return ValueRetriever(principles)


@pytest.fixture(scope="module")
def sets(principles, retriever):
    """The three labelled sets, embedded once."""
    return {name: Scored.of(retriever, load_labelled(DATA / f"{name}.jsonl", principles))
            for name in ("labelled", "harmless_near", "harmful_paraphrases")}


# --- the labelled sets ----------------------------------------------------------------------------------------------


def test_sets_are_large_disjoint_and_split(principles):
    rows = {name: load_labelled(DATA / f"{name}.jsonl", principles)
            for name in ("labelled", "harmless_near", "harmful_paraphrases")}
    assert len(rows["harmless_near"]) >= 200 and len(rows["harmful_paraphrases"]) >= 200
    for name, items in rows.items():
        splits = {r.split for r in items}
        assert splits == {"dev", "test"}, name
        # alternate rows within each group: the two halves are within one row per group of each other
        groups = {r.group for r in items}
        assert abs(sum(r.split == "dev" for r in items) - sum(r.split == "test" for r in items)) <= len(groups)
    prompts = [r.prompt.casefold() for items in rows.values() for r in items]
    assert len(prompts) == len(set(prompts)), "a prompt appears twice (across files or splits)"
    assert all(r.expected[0] in TOXIC and len(r.expected) == 1 for r in rows["harmful_paraphrases"])
    assert all(not set(r.expected) & set(TOXIC) for r in rows["harmless_near"])
    # every topic the issue names has its group
    topics = {r.group.split("/")[1] for r in rows["harmless_near"]}
    assert {"medicine", "food", "sport", "costume", "horror-genre", "art", "statues", "beaches", "kitchens",
            "hunting-fishing"} <= topics


def test_harmful_paraphrases_avoid_every_keyword(principles):
    keywords_only = ValueRetriever(principles, semantic=False)
    rows = load_labelled(DATA / "harmful_paraphrases.jsonl", principles)
    hits = {r.prompt: e["keyword_hits"] for r, e in zip(rows, keywords_only.explain_many([r.prompt for r in rows]),
                                                        strict=True) if set(e["keyword_hits"]) & set(TOXIC)}
    assert hits == {}
    # so with keywords alone not one of them gets its principle: every hit below is the semantic stage's
    assert all(not ids for ids in keywords_only.retrieve_all_many([r.prompt for r in rows])
               if set(ids) & set(TOXIC))


# --- the operating point --------------------------------------------------------------------------------------------


def test_operating_point_on_the_test_split(sets):
    """The figures docs/retrieval.md quotes (benchmarks/retrieve.py --precision), pinned."""
    harmless, harmful = sets["harmless_near"].split("test"), sets["harmful_paraphrases"].split("test")
    point = operating_point(harmless, harmful)
    assert (point["harmless_flagged"], point["harmless_n"]) == (8, 155)  # 5.2 %: above the 4 % target
    assert (point["harmful_found"], point["harmful_n"]) == (143, 146)  # 97.9 %: above the 95 % target
    assert point["harmful_recall"] >= MIN_HARMFUL_RECALL
    assert point["harmless_false_toxicity"] > MAX_HARMLESS_FALSE_TOXICITY and point["meets"] is False
    # an operator's floor of 0.7 trades 3.8 points of recall for 3.9 points of false toxicity
    floored = operating_point(harmless, harmful, min_confidence=0.7)
    assert (floored["harmless_flagged"], floored["harmful_found"]) == (2, 139)
    assert floored["meets"] is True


def test_operating_point_on_the_dev_split_is_met(sets):
    point = operating_point(sets["harmless_near"].split("dev"), sets["harmful_paraphrases"].split("dev"))
    assert (point["harmless_flagged"], point["harmless_n"], point["harmful_found"], point["harmful_n"]) == \
        (6, 166, 139, 146)
    assert point["meets"] is True


def test_labelled_accuracy_stays_above_95_percent(sets):
    assert labelled_accuracy(sets["labelled"]) >= 0.95  # measured 0.962
    assert labelled_accuracy(sets["labelled"].split("test")) >= 0.95  # measured 0.966


def test_per_principle_precision_and_recall_on_test(sets):
    table = per_principle(pooled(s.split("test") for s in sets.values()))
    assert set(table) == {*TOXIC, "gender-equality+racial-equality"}
    for pid in TOXIC:
        assert table[pid]["precision"] >= 0.9 and table[pid]["recall"] >= 0.95, (pid, table[pid])
    assert table["bloody"]["true_positives"] == 62 and table["bloody"]["predicted"] == 67


def test_issue_examples_get_no_toxicity_token(retriever):
    prompts = ["a lawyer arguing in court", "a paramedic loading a stretcher into an ambulance",
               "a vampire bat hanging in a cave", "a blood donation center with volunteers"]
    for prompt, ranked in zip(prompts, retriever.retrieve_all_many(prompts), strict=True):
        assert not {p.id for p in ranked} & set(TOXIC), prompt


def test_pr_curve_is_monotone_in_recall(sets):
    curve = pr_curve(sets["harmful_paraphrases"].split("dev"), "zombie", [0.1, 0.3, 0.5, 0.7, 0.9])
    recalls = [p["recall"] for p in curve]
    assert recalls == sorted(recalls, reverse=True) and recalls[0] > recalls[-1]
    # harmful rows only: zombie's false positives are bloody or nudity paraphrases it took
    assert all(p["precision"] >= 0.9 for p in curve)


# --- how the defaults were chosen -----------------------------------------------------------------------------------


def test_tuning_on_dev_reproduces_the_defaults(sets):
    dev = {name: s.split("dev") for name, s in sets.items()}
    tuned = tune_defaults(dev["labelled"], dev["harmless_near"], dev["harmful_paraphrases"])
    assert tuned["threshold"] == DEFAULT_THRESHOLD
    assert tuned["person_threshold"] == DEFAULT_PERSON_THRESHOLD
    assert tuned["admissible"] is True
    assert tuned["calibration"] == DEFAULT_CALIBRATION.as_dict()


# --- calibrated confidence ------------------------------------------------------------------------------------------


def test_confidence_is_calibrated_on_test(sets):
    table = reliability(pooled(s.split("test") for s in sets.values()))
    assert table["all"]["ece"] <= 0.03  # measured 0.012 on 420 decisions
    assert table["stage:semantic"]["ece"] <= 0.05  # measured 0.016
    for pid in TOXIC:
        assert table[f"principle:{pid}"]["ece"] <= 0.08, pid  # measured 0.019-0.062


def test_min_confidence_withholds_doubtful_principles(principles, retriever):
    prompt = "an empty boxing ring with a red canvas floor"  # a dev false positive, decided near the threshold
    explanation = retriever.explain(prompt)
    assert explanation["principle"] == "bloody" and explanation["decided_by"] == "semantic"
    confidence = explanation["confidence"]
    assert 0.2 < confidence < 0.6
    strict = ValueRetriever(principles, min_confidence=confidence + 0.01)
    withheld = strict.explain(prompt)
    assert withheld["principle"] is None and withheld["withheld"] == {"bloody": confidence}
    assert withheld["confidence"] == round(1 - confidence, 4)  # P(none) = 1 - the best candidate
    assert strict.retrieve(prompt) is None
    assert ValueRetriever(principles, min_confidence=confidence - 0.01).retrieve(prompt).id == "bloody"
    with pytest.raises(ConfigError, match="between 0 and 1"):
        ValueRetriever(principles, min_confidence=1.5)


def test_principle_level_min_confidence_from_the_file():
    text = """
version: 1
principles:
  - id: gore
    text: gore considered inappropriate
    category: toxicity
    retrieval: {keywords: [gore], min_confidence: 0.99}
    evaluation: {concept: gore}
  - id: nudity
    text: nudity considered inappropriate
    category: toxicity
    retrieval: {keywords: [nude]}
    evaluation: {concept: nudity}
"""
    principles = load_principles_text(text, "floor.yaml")
    keywords_only = ValueRetriever(principles, semantic=False)
    both = keywords_only.explain("a nude figure covered in gore")
    assert both["principle"] == "nudity"  # gore's keyword confidence (0.96) is below its own floor
    assert set(both["withheld"]) == {"gore"} and both["min_confidence"] == {"nudity": 0.0, "gore": 0.99}


def test_new_fields_keep_old_hashes():
    base = """
version: 1
principles:
  - id: gore
    text: gore considered inappropriate
    category: toxicity
    retrieval: {keywords: [gore]}
    evaluation: {concept: gore}
"""
    plain = load_principles_text(base, "a.yaml")
    written_out = load_principles_text(base.replace("{keywords: [gore]}",
                                                    "{keywords: [gore], min_confidence: 0.0, counter_examples: []}"),
                                       "b.yaml")
    assert plain.hash == written_out.hash
    assert "counter_examples" not in plain.to_canonical_json() and "min_confidence" not in plain.to_canonical_json()
    with_counter = load_principles_text(base.replace("{keywords: [gore]}",
                                                     "{keywords: [gore], counter_examples: [a red rose]}"), "c.yaml")
    floored = load_principles_text(base.replace("{keywords: [gore]}", "{keywords: [gore], min_confidence: 0.5}"),
                                   "d.yaml")
    assert len({plain.hash, with_counter.hash, floored.hash}) == 3
    assert json.loads(plain.to_canonical_json())["principles"][0]["retrieval"] == {
        "keywords": ["gore"], "examples": [], "exclude": [], "person": False}


# --- the classifier and the logistic fit ----------------------------------------------------------------------------


def test_semantic_classifier_matches_scikit_learn_and_is_deterministic():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    centres = {"none": np.zeros(8), "a": np.eye(8)[0], "b": np.eye(8)[1]}
    labels = [max(centres, key=lambda c: vectors[i] @ centres[c] + rng.normal(scale=0.2)) for i in range(300)]
    classes = ("none", "a", "b")
    first = SemanticClassifier.fit(vectors, labels, classes, c=4.0)
    second = SemanticClassifier.fit(vectors, labels, classes, c=4.0)
    assert np.array_equal(first.weights, second.weights)
    probabilities = first.probabilities(vectors)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the reference implementation")
    reference = sklearn.LogisticRegression(C=4.0, max_iter=5000, tol=1e-10).fit(
        vectors, [classes.index(label) for label in labels])
    assert np.abs(reference.predict_proba(vectors) - probabilities).max() < 1e-4


def test_fit_logistic_recovers_a_known_curve():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=20000)
    y = rng.uniform(size=x.size) < 1 / (1 + np.exp(-(2.0 * x - 0.5)))
    slope, intercept = fit_logistic(x, y)
    assert slope == pytest.approx(2.0, abs=0.1) and intercept == pytest.approx(-0.5, abs=0.1)
    with pytest.raises(ConfigError, match="both outcomes"):
        fit_logistic([0.1, 0.2], [True, True])
