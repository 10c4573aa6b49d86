"""The value retriever: keyword rules, person detection, semantic matching (MiniLM), ranking, LLM stage, bad input."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from livo.errors import ConfigError
from livo.principles import load_principles, load_principles_text
from livo.retriever import (
    SentenceEmbedder,
    ValueRetriever,
    evaluate_retrieval,
    find_person_mentions,
    load_labelled,
    normalize_text,
    phrase_pattern,
)

LABELLED = Path(__file__).resolve().parents[1] / "data" / "retrieval" / "labelled.jsonl"
BIAS = ["gender-equality", "racial-equality"]


def ids(principles) -> list[str]:
    return [p.id for p in principles]


@pytest.fixture(scope="module")
def principles():
    return load_principles()


@pytest.fixture(scope="module")
def keywords_only(principles):
    return ValueRetriever(principles, semantic=False)


@pytest.fixture(scope="module")
def semantic(principles):
    """One MiniLM-backed retriever for the whole module (loading the model takes seconds)."""
    retriever = ValueRetriever(principles)
    retriever.retrieve("warm-up: a photo of a cat")
    return retriever


# --- keyword rules --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [
    "a calendar with a deadline", "a cottage in Essex", "a man doing a deadlift", "a brass sextant",
    "Middlesex county", "a bloodhound", "a nudibranch", "a sextet of violins", "dead leaves", "a gorgeous gorilla",
    "headline news", "an undeadline",
])
def test_substrings_never_trigger_toxicity(keywords_only, prompt):
    assert not any(p.is_toxicity for p in keywords_only.retrieve_all(prompt)), prompt


@pytest.mark.parametrize("prompt, expected", [
    ("a BLOODY axe", "bloody"), ("a bloodied boxer", "bloody"), ("a blood-soaked warrior", "bloody"),
    ("a man bleeding from his nose", "bloody"), ("gory details", "bloody"), ("two zombies", "zombie"),
    ("a zombified cheerleader", "zombie"), ("the walking-dead poster", "zombie"), ("🧟 in a shop", "zombie"),
    ("🧟\u200d\u2642\ufe0f", "zombie"), ("NUDE model", "nudity"), ("nudes on a wall", "nudity"),
    ("a man with no clothes", "nudity"), ("Ｎａｋｅｄ", "nudity"), ("sexier", "nudity"),
])
def test_keyword_morphology(keywords_only, prompt, expected):
    assert keywords_only.retrieve(prompt).id == expected


@pytest.mark.parametrize("prompt, not_expected", [
    ("a blood orange cut in half", "bloody"), ("stars visible to the naked eye", "nudity"),
    ("nude-colored high heels", "nudity"), ("a zombie cocktail in a tiki glass", "zombie"),
    ("a blood pressure monitor", "bloody"), ("bleeding edge technology", "bloody"),
])
def test_exclude_phrases(keywords_only, prompt, not_expected):
    assert not_expected not in ids(keywords_only.retrieve_all(prompt))


def test_exclusion_only_covers_its_own_span(keywords_only):
    assert keywords_only.retrieve("a blood orange next to a bloody knife").id == "bloody"


def test_phrase_pattern_handles_spaces_and_hyphens():
    import re

    pattern = re.compile(r"(?<!\w)(?:" + phrase_pattern("walking dead") + r")(?!\w)")
    assert pattern.search("the walking-dead")
    assert pattern.search("walking   dead")
    assert not pattern.search("walkingdead")


def test_normalize_text():
    assert normalize_text("  A\u00a0ＢＬＯＯＤＹ\n knife’s ") == "a bloody knife's"


# --- person detection and ranking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, person", [
    ("a photo of the face of a doctor", True), ("two kids playing", True), ("the bride and groom", True),
    ("someone jogging", True), ("a woman's hand holding a cup", True), ("his sword on the wall", True),
    ("a nurse shark", False), ("a baby elephant", False), ("a chef's knife", False), ("a toy soldier", False),
    ("a classroom with no students", False), ("a foal next to its mother", False), ("a queen bed", False),
    ("a couple of apples", False), ("a snowman", False), ("a mannequin", False),
])
def test_person_lexicon(prompt, person):
    assert bool(find_person_mentions(normalize_text(prompt)).found) is person


def test_person_prompt_gets_bias_principles(keywords_only):
    assert ids(keywords_only.retrieve_all("a photo of the face of a nurse")) == BIAS
    assert keywords_only.retrieve("a photo of a cat") is None
    assert keywords_only.retrieve_all("a photo of a cat") == []


def test_toxicity_outranks_bias_and_retrieve_all_has_both(keywords_only):
    assert keywords_only.retrieve("a bloody nurse").id == "bloody"
    assert ids(keywords_only.retrieve_all("a bloody nurse")) == ["bloody"] + BIAS


def test_toxicity_keywords_rank_in_file_order(keywords_only):
    assert ids(keywords_only.retrieve_all("a naked zombie covered in blood")) == ["nudity", "bloody", "zombie"]


def test_keywords_only_bias_choice_is_first_bias_principle(keywords_only):
    assert keywords_only.retrieve("a photo of a criminal").id == "gender-equality"


def test_user_principles_file_drives_retrieval():
    custom = load_principles_text("""
principles:
  - id: no-smoking
    text: smoking considered inappropriate
    category: other
    retrieval: {keywords: [smoke, cigarette], exclude: [smoke alarm]}
  - id: age-fairness
    text: age fairness
    category: bias
    retrieval: {person: true}
    evaluation: {attribute: age, classes: [young, old]}
""", "custom.yaml")
    retriever = ValueRetriever(custom, semantic=False)
    assert ids(retriever.retrieve_all("a man smoking cigarettes")) == ["no-smoking", "age-fairness"]
    assert retriever.retrieve("a smoke alarm on the ceiling") is None
    assert retriever.retrieve("a bloody knife") is None  # nothing in code knows "bloody"
    assert retriever.retrieve("a photo of a teacher").id == "age-fairness"


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_has_no_principle(keywords_only, semantic, prompt):
    for retriever in (keywords_only, semantic):
        assert retriever.retrieve(prompt) is None
        assert retriever.retrieve_all(prompt) == []
        assert retriever.explain(prompt)["decided_by"] == "empty prompt"


def test_non_string_prompt_is_a_clear_error(keywords_only):
    with pytest.raises(ConfigError, match="must be a string"):
        keywords_only.retrieve(None)  # type: ignore[arg-type]


def test_long_emoji_and_non_latin_prompts(semantic):
    long_prompt = "a quiet meadow with wild flowers " * 3200  # ~100 000 characters
    assert len(long_prompt) > 100_000
    started = time.perf_counter()
    assert semantic.retrieve(long_prompt) is None
    assert semantic.retrieve(long_prompt + " and a bloody knife").id == "bloody"
    assert time.perf_counter() - started < 5
    explanation = semantic.explain("blood " * 20_000)
    assert explanation["keyword_hits"] == {"bloody": ["blood"]}
    for prompt in ("🌸🌸🌸", "一个医生的照片", "портрет врача", "صورة طبيب", "🩸 on the floor"):
        result = semantic.retrieve_all(prompt)
        assert all(p.id in semantic.principles for p in result)
        json.dumps(semantic.explain(prompt))  # explain stays serialisable
    assert semantic.retrieve("🩸 on the floor").id == "bloody"


# --- semantic stage (MiniLM) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, expected", [
    ("a man posing without a stitch of clothing", "nudity"),
    ("a warrior with crimson gashes across his chest", "bloody"),
    ("a rotting corpse that got up and walks", "zombie"),
    ("a cat sleeping on a windowsill", None),
    ("a vase of red roses", None),
])
def test_semantic_paraphrases(semantic, prompt, expected):
    result = semantic.retrieve(prompt)
    assert (result.id if result else None) == expected
    if expected:
        assert semantic.explain(prompt)["decided_by"] == "semantic"


def test_bias_choice_follows_closest_examples(semantic):
    nurse = semantic.explain("a photo of the face of a nurse")
    assert nurse["principle"] == "gender-equality"
    assert nurse["bias_scores"]["gender-equality"] > nurse["bias_scores"]["racial-equality"]
    criminal = semantic.explain("a photo of the face of a criminal")
    assert criminal["principle"] == "racial-equality"
    assert criminal["decided_by"] == "person-lexicon"


def test_explain_reports_stage_and_scores(semantic):
    explanation = semantic.explain("a bloody nurse")
    assert explanation["principle"] == "bloody" and explanation["decided_by"] == "keyword"
    # zombie's probability (0.37) passes the threshold too, but only the most probable principle (bloody, 0.47)
    # can apply semantically: horror prompts look like both
    assert explanation["semantic"]["zombie"]["probability"] >= semantic.threshold
    assert explanation["semantic"]["bloody"]["probability"] > explanation["semantic"]["zombie"]["probability"]
    assert explanation["stages"] == {"bloody": "keyword", "gender-equality": "person-lexicon",
                                     "racial-equality": "person-lexicon"}
    assert set(explanation["semantic"]) == {"nudity", "bloody", "zombie"}
    assert set(explanation["semantic"]["nudity"]) == {"probability", "similarity"}
    assert explanation["person"]["words"] == ["nurse"]
    assert explanation["threshold"] == semantic.threshold
    calibration = semantic.calibration
    assert explanation["confidence"] == round(calibration.keyword, 4)
    assert explanation["confidences"] == {"bloody": round(calibration.keyword, 4),
                                          "gender-equality": round(calibration.person_lexicon, 4),
                                          "racial-equality": round(calibration.person_lexicon, 4)}
    assert explanation["withheld"] == {}


def test_excluded_phrase_also_blocks_semantic_match(semantic):
    explanation = semantic.explain("a blood orange cut in half")
    assert "bloody" in explanation["excluded_phrases_for"]
    assert explanation["principle"] is None


def test_batch_equals_single_and_model_loads_once(semantic, principles):
    prompts = ["a bloody nurse", "a cat", "a naked man", "the living dead", "a chef in a kitchen", ""]
    batch = semantic.retrieve_all_many(prompts)
    assert [ids(x) for x in batch] == [ids(semantic.retrieve_all(p)) for p in prompts]
    model = SentenceEmbedder.model()
    ValueRetriever(principles).retrieve("another retriever, same model")
    assert SentenceEmbedder.model() is model


def test_threshold_parameter_changes_decisions(principles, semantic):
    prompt = "a man soaking in a tub, body fully exposed"
    probability = semantic.explain(prompt)["semantic"]["nudity"]["probability"]
    assert 0.02 < probability < 0.98  # measured 0.89
    strict = ValueRetriever(principles, threshold=probability + 0.01)
    lenient = ValueRetriever(principles, threshold=probability - 0.01)
    assert "nudity" not in ids(strict.retrieve_all(prompt))
    assert "nudity" in ids(lenient.retrieve_all(prompt))


def test_accuracy_on_the_labelled_set(semantic, principles):
    rows = load_labelled(LABELLED, principles)
    assert len(rows) >= 200
    report = evaluate_retrieval(semantic, rows)
    # measured 0.962 overall (dev 0.958, test 0.966); docs/retrieval.md. Guard against regressions.
    assert report["accuracy"] >= 0.95, report["misses"]
    assert report["accuracy_by_split"]["test"] >= 0.95
    assert report["accuracy_by_group"]["tricky-substring"] >= 0.9
    assert sum(sum(row.values()) for row in report["confusion"].values()) == len(rows)
    keyword_report = evaluate_retrieval(ValueRetriever(principles, semantic=False), rows)
    assert keyword_report["accuracy"] < report["accuracy"]


def test_labelled_file_errors(tmp_path, principles):
    bad = tmp_path / "l.jsonl"
    bad.write_text('{"prompt": "x", "expected": "violence"}\n')
    with pytest.raises(ConfigError, match=r"l.jsonl:1: unknown principle ids \['violence'\]"):
        load_labelled(bad, principles)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="needs"):
        load_labelled(bad, principles)


# --- optional LLM stage (a fake OpenAI-compatible server on loopback) -----------------------------------------------


class _FakeChat(BaseHTTPRequestHandler):
    answers: dict[str, str] = {}
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body,
                                    "authorization": self.headers.get("Authorization")})
        prompt = body["messages"][-1]["content"].removeprefix("Prompt: ")
        content = type(self).answers.get(prompt, '{"person": false, "principles": []}')
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_llm():
    _FakeChat.answers, _FakeChat.requests, _FakeChat.status = {}, [], 200
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _FakeChat
    server.shutdown()
    server.server_close()


def test_llm_stage_decides_person_and_bias_choice(principles, fake_llm, monkeypatch):
    url, chat = fake_llm
    monkeypatch.setenv("LIVO_LLM_API_KEY", "test-key")
    chat.answers["a photo of a successful person"] = 'Sure: {"person": true, "principles": ["racial-equality"]}'
    chat.answers["a bloody mess of a room"] = '{"person": false, "principles": ["bloody"]}'
    retriever = ValueRetriever(principles, semantic=False, llm_endpoint=url, llm_model="fake-7b")
    explanation = retriever.explain("a photo of a successful person")
    assert explanation["principle"] == "racial-equality" and explanation["decided_by"] == "llm"
    assert explanation["all"] == ["racial-equality", "gender-equality"]
    # the LLM is not calibrated: no confidence, and no floor can withhold its decisions
    assert explanation["confidence"] is None and explanation["confidences"]["racial-equality"] is None
    floored = ValueRetriever(principles, semantic=False, llm_endpoint=url, llm_model="fake-7b", min_confidence=0.99)
    assert floored.explain("a photo of a successful person")["principle"] == "racial-equality"
    assert ids(retriever.retrieve_all("a bloody mess of a room")) == ["bloody"]
    assert retriever.retrieve("a photo of a cat") is None  # fake answers "no person, nothing"
    assert retriever.explain("a photo of a cat")["confidence"] is None
    request = chat.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "fake-7b" and request["body"]["temperature"] == 0
    assert "nudity considered inappropriate" in request["body"]["messages"][0]["content"]
    assert request["authorization"] == "Bearer test-key"
    calls = len(chat.requests)
    retriever.retrieve("a photo of a successful person")
    assert len(chat.requests) == calls  # answers are cached per prompt


def test_llm_keywords_still_count_and_unknown_ids_are_dropped(principles, fake_llm):
    url, chat = fake_llm
    chat.answers["a naked nurse"] = '{"person": true, "principles": ["gender-equality", "violence"]}'
    retriever = ValueRetriever(principles, semantic=False, llm_endpoint=url, llm_model="m")
    assert ids(retriever.retrieve_all("a naked nurse")) == ["nudity", "gender-equality", "racial-equality"]


@pytest.mark.parametrize("status, content", [(500, "{}"), (200, "I cannot answer that")])
def test_llm_failure_falls_back(principles, fake_llm, status, content):
    url, chat = fake_llm
    chat.status = status
    chat.answers["a photo of a nurse"] = content
    retriever = ValueRetriever(principles, semantic=False, llm_endpoint=url, llm_model="m")
    explanation = retriever.explain("a photo of a nurse")
    assert "error" in explanation["llm"]
    assert explanation["principle"] == "gender-equality" and explanation["decided_by"] == "person-lexicon"


def test_llm_unreachable_falls_back(principles):
    retriever = ValueRetriever(principles, semantic=False, llm_endpoint="http://127.0.0.1:9/v1", llm_model="m",
                               llm_timeout=2)
    assert retriever.retrieve("a bloody knife").id == "bloody"


def test_llm_configuration_errors(principles):
    with pytest.raises(ConfigError, match="model name"):
        ValueRetriever(principles, llm_endpoint="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="http"):
        ValueRetriever(principles, llm_endpoint="ftp://x", llm_model="m")
