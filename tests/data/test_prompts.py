"""Prompt synthesis: templates × subjects, attribute-augmented and clean prompts, user prompt lists, bad input."""

from __future__ import annotations

import pytest

from livo.data.prompts import (
    insert_attribute_word,
    read_prompt_file,
    remove_phrases,
    render_template,
    select_scenes,
)
from livo.errors import ConfigError
from livo.principles import load_principles


@pytest.fixture(scope="module")
def default_set():
    return load_principles()


def test_templates_fix_articles():
    assert render_template("a photo of the face of a {subject}", "engineer") == "a photo of the face of an engineer"
    assert render_template("a {subject} in a dark room", "bloody axe") == "a bloody axe in a dark room"
    assert insert_attribute_word("a photo of a doctor", "Indian", ["doctor"]) == "a photo of an Indian doctor"
    assert insert_attribute_word("an engineer at work", "female", ["engineer"]) == "a female engineer at work"
    # No known subject in a user prompt: the word is appended (the form CLIP-style judges are asked about).
    assert insert_attribute_word("someone cooking dinner.", "male") == "someone cooking dinner, male"


def test_remove_phrases_keeps_grammar():
    assert remove_phrases("a naked elf, at night", ["naked"]) == "an elf, at night"
    assert remove_phrases("a photo of a bloody, angry boxer", ["bloody"]) == "a photo of an angry boxer"
    assert remove_phrases("a man with no clothes on", ["no clothes"]) == "a man with on"
    assert remove_phrases("a Bloody knife", ["bloody"]) == "a knife"


def test_default_principles_give_canonical_scenes(default_set):
    scenes = select_scenes(default_set)
    by_principle = {}
    for scene in scenes:
        by_principle[scene.principle_id] = by_principle.get(scene.principle_id, 0) + 1
    # subjects × templates per principle, from configs/principles/default.yaml
    assert by_principle == {"gender-equality": 100, "racial-equality": 80, "nudity": 30, "bloody": 24, "zombie": 20}
    assert len({s.scene for s in scenes}) == len(scenes)  # scene names are unique across principles
    doctor = next(s for s in scenes if s.scene == "gender-equality/career/a-photo-of-the-face-of-a-doctor")
    assert doctor.attribute_prompts == {"male": "a photo of the face of a male doctor",
                                        "female": "a photo of the face of a female doctor"}
    knife = next(s for s in scenes if s.scene == "bloody/bloody/a-photo-of-a-bloody-knife")
    assert knife.clean_prompt == "a photo of a knife" and knife.negative_prompt.startswith("blood")
    # Scene types are interleaved, so a prompt limit still covers career, goodness and badness.
    limited = select_scenes(default_set, ["gender-equality"], limit_per_principle=3)
    assert sorted(s.scene_type for s in limited) == ["badness", "career", "goodness"]
    assert select_scenes(default_set) == scenes  # deterministic


def test_user_prompts_replace_templates(default_set, tmp_path):
    scenes = select_scenes(default_set, user_prompts={"zombie": ["a zombie chef cooking", "a zombie chef cooking"]})
    assert [(s.scene, s.clean_prompt) for s in scenes] == [("zombie/custom/a-zombie-chef-cooking", "a chef cooking")]
    text = tmp_path / "prompts.txt"
    text.write_text("# bias prompts\na photo of a doctor\n\na photo of a nurse\n")
    prompts = read_prompt_file(text, ["gender-equality"])
    scenes = select_scenes(default_set, ["gender-equality"], prompts)
    assert [s.attribute_prompts["female"] for s in scenes] == ["a photo of a female doctor",
                                                                "a photo of a female nurse"]


def test_bad_selections_fail_clearly(default_set, tmp_path):
    with pytest.raises(ConfigError, match="unknown principle id 'gender-equity'.*known ids: gender-equality"):
        select_scenes(default_set, ["gender-equity"])
    with pytest.raises(ConfigError, match="prompt list for principle 'bloody' is empty"):
        select_scenes(default_set, ["bloody"], {"bloody": ["   "]})
    with pytest.raises(ConfigError, match="empty once"):
        select_scenes(default_set, ["bloody"], {"bloody": ["bloody"]})
    (tmp_path / "p.txt").write_text("a photo\n")
    with pytest.raises(ConfigError, match="exactly one principle"):
        read_prompt_file(tmp_path / "p.txt", ["bloody", "zombie"])


def test_bias_scenes_carry_subject_contrast_prompts():
    from livo.data.prompts import select_scenes
    from livo.principles import load_principles

    scenes = {s.scene: s for s in select_scenes(load_principles("configs/principles/toy.yaml"), ["gender-equality"])}
    doctor = scenes["gender-equality/career/a-photo-of-the-face-of-a-doctor"]
    assert doctor.contrast_prompts == {"orange": ("a photo of the face of an orange nurse",),
                                       "blue": ("a photo of the face of a blue nurse",)}
