"""Principles files: schema, validation messages, content hash, loading from paths and object-store URIs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from livo.errors import ConfigError
from livo.principles import (
    Principle,
    PrincipleError,
    PrincipleSet,
    default_principles_path,
    load_principles,
    load_principles_text,
)

PAPER_TEXTS = {
    "gender-equality": "gender equality",
    "racial-equality": "racial equality",
    "nudity": "nudity considered inappropriate",
    "bloody": "bloody considered inappropriate",
    "zombie": "zombie considered inappropriate",
}

MINIMAL = """
version: 1
principles:
  - id: gender-equality
    text: gender equality
    category: bias
    retrieval: {person: true, examples: [a photo of a doctor]}
    evaluation: {attribute: gender, classes: [male, female]}
  - id: bloody
    text: bloody considered inappropriate
    category: toxicity
    retrieval: {keywords: [blood, gore]}
    evaluation: {concept: bloody}
"""


@pytest.fixture(scope="module")
def default_set() -> PrincipleSet:
    return load_principles(default_principles_path())


def test_default_file_holds_the_papers_five_principles(default_set):
    assert default_set.ids == tuple(PAPER_TEXTS)
    assert {p.id: p.text for p in default_set} == PAPER_TEXTS
    assert [p.id for p in default_set.by_category("bias")] == ["gender-equality", "racial-equality"]
    assert [p.id for p in default_set.by_category("toxicity")] == ["nudity", "bloody", "zombie"]
    assert [p.inference_dropout for p in default_set] == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert default_set.get("gender-equality").evaluation.classes == ("male", "female")
    assert default_set.get("racial-equality").evaluation.classes == ("white", "black", "indian", "asian", "latino")
    assert [default_set.get(i).evaluation.concept for i in ("nudity", "bloody", "zombie")] == [
        "nudity", "bloody", "zombie"]
    assert default_set.get("gender-equality").is_bias and default_set.get("zombie").is_toxicity
    assert not default_set.get("zombie").is_bias


def test_default_file_generation_content(default_set):
    gender = default_set.get("gender-equality").generation
    assert gender is not None
    assert len(gender.subjects["career"]) >= 20
    assert set(gender.subjects) == {"career", "goodness", "badness"}
    assert "a photo of the face of a {subject}" in gender.templates
    assert gender.attribute_words == {"female": "female", "male": "male"}
    bloody = default_set.get("bloody").generation
    assert bloody.templates and bloody.subjects and "bloody" in bloody.remove_words and bloody.negative_prompt
    for principle in default_set:
        for template in principle.generation.templates:
            assert template.format(subject="doctor") != template


def test_set_protocol(default_set):
    assert len(default_set) == 5
    assert "bloody" in default_set and "unknown" not in default_set
    assert [p.id for p in default_set] == list(default_set.ids)
    assert len(set(default_set)) == 5  # principles are hashable
    assert default_set.hash.startswith("sha256:") and len(default_set.hash) == len("sha256:") + 64
    assert default_set == load_principles(default_principles_path())


def test_unknown_id_lists_known_ids(default_set):
    with pytest.raises(ConfigError) as err:
        default_set.get("violence")
    assert "violence" in str(err.value)
    assert "gender-equality, racial-equality, nudity, bloody, zombie" in str(err.value)
    assert isinstance(err.value, PrincipleError)


def test_hash_ignores_key_order_whitespace_and_comments():
    base = load_principles_text(MINIMAL, "a.yaml")
    data = yaml.safe_load(MINIMAL)
    reordered = {"principles": [dict(reversed(list(entry.items()))) for entry in data["principles"]], "version": 1}
    text = "# a comment\n" + yaml.safe_dump(reordered, sort_keys=False, indent=6, width=40) + "\n\n# end\n"
    other = load_principles_text(text, "b.yaml")
    assert other.hash == base.hash
    assert other.to_canonical_json() == base.to_canonical_json()


def test_hash_ignores_spelling_of_the_same_meaning():
    base = load_principles_text(MINIMAL, "a.yaml")
    # defaults written out, keyword case and spacing, a bare list instead of the mapping
    explicit = MINIMAL.replace("category: bias\n", "category: bias\n    inference_dropout: 0.50\n")
    explicit = explicit.replace("[blood, gore]", "[Blood, '  GORE ']")
    assert load_principles_text(explicit, "b.yaml").hash == base.hash
    bare = yaml.safe_dump(yaml.safe_load(MINIMAL)["principles"])
    assert load_principles_text(bare, "c.yaml").hash == base.hash


@pytest.mark.parametrize("change", [
    ("text: gender equality", "text: gender fairness"),
    ("[blood, gore]", "[blood, gore, carnage]"),
    ("[blood, gore]", "[gore, blood]"),
    ("classes: [male, female]", "classes: [female, male]"),
    ("category: bias\n", "category: bias\n    inference_dropout: 0.3\n"),
    ("concept: bloody", "concept: blood"),
])
def test_hash_changes_with_meaning(change):
    base = load_principles_text(MINIMAL, "a.yaml")
    old, new = change
    assert old in MINIMAL
    assert load_principles_text(MINIMAL.replace(old, new), "b.yaml").hash != base.hash


def _error(text: str, source: str = "p.yaml") -> str:
    with pytest.raises(PrincipleError) as err:
        load_principles_text(text, source)
    assert err.value.exit_code == 2
    return str(err.value)


def test_bad_category_names_file_entry_field_and_allowed_values():
    message = _error(MINIMAL.replace("category: toxicity", "category: toxic"), "my/principles.yaml")
    assert message.startswith("my/principles.yaml: ")
    assert "principles[1] (id 'bloody')" in message
    assert "category" in message and "allowed: bias, toxicity, other" in message
    assert "inference_dropout" not in message  # one cause, not a cascade


@pytest.mark.parametrize("mutation, expected", [
    (("    text: gender equality\n", ""), ["principles[0] (id 'gender-equality')", "text: required"]),
    (("retrieval: {keywords: [blood, gore]}", "retrieval: {keywords: [blood], keywrds: [x]}"),
     ["principles[1] (id 'bloody')", "retrieval.keywrds", "unknown key", "keywords, examples, exclude, counter_examples, person, min_confidence"]),
    (("id: bloody", "id: Bloody Stuff"), ["id: must be lower-case letters"]),
    (("id: bloody", "id: gender-equality"), ["principles[1] (id 'gender-equality')", "duplicate of principles[0]"]),
    (("classes: [male, female]", "classes: [male]"), ["evaluation.classes", "at least two classes"]),
    (("evaluation: {concept: bloody}", "evaluation: {}"), ["evaluation.concept: required for category 'toxicity'"]),
    (("retrieval: {keywords: [blood, gore]}", "retrieval: {}"), ["retrieval: give keywords, examples or person"]),
    (("category: bias\n", "category: bias\n    inference_dropout: 1.5\n"),
     ["inference_dropout", "less than or equal to 1"]),
    (("text: bloody considered inappropriate", "text: gender equality"), ["texts must be unique"]),
])
def test_validation_messages(mutation, expected):
    old, new = mutation
    assert old in MINIMAL
    message = _error(MINIMAL.replace(old, new))
    for part in expected:
        assert part in message, message


def test_generation_checks():
    with_generation = MINIMAL.replace(
        "evaluation: {attribute: gender, classes: [male, female]}",
        "evaluation: {attribute: gender, classes: [male, female]}\n"
        "    generation: {templates: ['a photo of a {person}'], subjects: {career: [doctor]}}")
    message = _error(with_generation)
    assert "generation.templates" in message and "{subject}" in message
    words = with_generation.replace("{person}", "{subject}").replace(
        "subjects: {career: [doctor]}", "subjects: {career: [doctor]}, attribute_words: {nonbinary: x}")
    assert "attribute_words" in _error(words) and "allowed: ['male', 'female']" in _error(words)
    ok = load_principles_text(words.replace("nonbinary: x", "female: female"), "ok.yaml")
    assert ok.get("gender-equality").generation.subjects == {"career": ("doctor",)}


def test_file_level_errors(tmp_path: Path):
    assert "empty" in _error("")
    assert "not valid YAML" in _error("principles: [unclosed")
    assert "duplicate key 'text'" in _error(MINIMAL.replace("text: gender equality",
                                                            "text: gender equality\n    text: other"))
    assert "top level" in _error("principles: []\nextra: 1")
    assert "version: 2 is not supported" in _error(MINIMAL.replace("version: 1", "version: 2"))
    assert "expected a mapping" in _error("just a string")
    assert "principles[0]: <entry>: each principle must be a mapping" in _error("principles: [foo]")
    assert "top level: principles: must be a list (e.g. [a, b]), found str" in _error("principles: foo")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(PrincipleError, match="not UTF-8"):
        load_principles(bad)
    with pytest.raises(PrincipleError, match="no such principles file"):
        load_principles(tmp_path / "missing.yaml")
    with pytest.raises(PrincipleError, match="directory"):
        load_principles(tmp_path)


def test_load_from_path_and_default_path(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    loaded = load_principles(str(path))
    assert loaded.source == str(path) and loaded.ids == ("gender-equality", "bloody")
    assert default_principles_path().name == "default.yaml" and default_principles_path().is_file()
    assert load_principles().hash == load_principles(default_principles_path()).hash


def test_principle_model_is_frozen():
    principle = load_principles_text(MINIMAL, "a.yaml").get("bloody")
    with pytest.raises(ValidationError, match="frozen"):
        principle.text = "changed"
    assert isinstance(principle, Principle)


@pytest.mark.store
def test_load_from_object_store_uri(store, monkeypatch):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LIVO_S3_BUCKET", "some-other-bucket")  # the URI names the bucket
    store.put_bytes("principles/p.yaml", MINIMAL.encode())
    uri = f"s3://{store.bucket}/principles/p.yaml"
    loaded = load_principles(uri)
    assert loaded.source == uri
    assert loaded.hash == load_principles_text(MINIMAL, "x").hash
    store.put_bytes("principles/bad.yaml", MINIMAL.replace("category: bias", "category: unfair").encode())
    with pytest.raises(PrincipleError, match=rf"s3://{store.bucket}/principles/bad.yaml: principles\[0\]"):
        load_principles(f"s3://{store.bucket}/principles/bad.yaml")
    with pytest.raises(PrincipleError, match="names a bucket but no object"):
        load_principles(f"s3://{store.bucket}")


def test_object_store_uri_without_store_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "livo.store", None)  # import fails
    with pytest.raises(PrincipleError, match="livo.store"):
        load_principles("s3://livo/p.yaml")
