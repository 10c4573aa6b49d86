"""The toy world: tokenizer vocabulary, caption grammar and renderer."""

from __future__ import annotations

import numpy as np
import pytest

from livo.errors import ConfigError
from livo.toy import renderer, world
from livo.toy.base_model import MODEL_MAX_LENGTH, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_every_world_word_is_one_token(tokenizer):
    for word in world.caption_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_value_encoder_input_tokenizes_to_known_tokens(tokenizer):
    # The value encoder reads "<principle text>, <prompt>": every word and the comma are single known tokens.
    text = "zombie considered inappropriate, a photo of the face of a zombie doctor"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 2 + len(text.replace(",", " ,").split())
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text


def test_tokenizer_matches_clip_conventions(tokenizer):
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH == 77
    padded = tokenizer("a photo of a nurse", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == tokenizer.pad_token_id == tokenizer.eos_token_id
    # Unknown words still tokenize (byte fallback), they just take several tokens.
    assert len(tokenizer("xylophone", add_special_tokens=False).input_ids) > 1


def test_captions_parse_back_to_their_content():
    for template in world.TEMPLATES:
        caption = world.make_caption(template, "nurse", "orange", "bloody")
        assert world.parse_caption(caption) == {"subject": "nurse", "colour": "orange", "concept": "bloody"}
    assert world.make_caption("a photo of a {x}", "nurse", "orange") == "a photo of an orange nurse"
    assert set(world.GENERATION_TEMPLATES).isdisjoint(world.EVALUATION_TEMPLATES)


def test_render_is_deterministic_per_seed_and_varies_across_seeds():
    first = renderer.render(renderer.sample_scene(np.random.default_rng(7), "doctor", "blue"))
    again = renderer.render(renderer.sample_scene(np.random.default_rng(7), "doctor", "blue"))
    other = renderer.render(renderer.sample_scene(np.random.default_rng(8), "doctor", "blue"))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_marks_are_drawn_only_for_their_concept():
    rng = np.random.default_rng(0)
    red, green = np.array(world.BLOOD_COLOUR), np.array(world.ZOMBIE_COLOUR)

    def pixels_near(image, colour):
        return int((np.abs(image.astype(int) - colour).sum(axis=-1) < 30).sum())

    for subject in world.SUBJECTS:
        clean = renderer.render(renderer.sample_scene(rng, subject, "orange"))
        bloody = renderer.render(renderer.sample_scene(rng, subject, "orange", "bloody"))
        zombie = renderer.render(renderer.sample_scene(rng, subject, "orange", "zombie"))
        assert pixels_near(clean, red) == 0 and pixels_near(clean, green) == 0
        assert pixels_near(bloody, red) >= 15 and pixels_near(bloody, green) == 0
        assert pixels_near(zombie, green) >= 15 and pixels_near(zombie, red) == 0


def test_unknown_content_is_refused_with_the_known_words():
    with pytest.raises(ConfigError, match="doctor"):
        renderer.Scene(subject="astronaut", colour="blue")
    with pytest.raises(ConfigError, match="orange"):
        renderer.Scene(subject="doctor", colour="magenta")
    with pytest.raises(ConfigError, match="no toy subject"):
        renderer.render_caption("a photo of a cat", np.random.default_rng(0))


def test_committed_tokenizer_is_the_default_world_vocabulary(tokenizer):
    # The extra occupations must not shift the committed base model's token ids: its saved tokenizer is what
    # build_tokenizer() builds for the four occupations it was trained on.
    from transformers import CLIPTokenizer

    from livo.toy.base_model import WEIGHTS_DIR

    committed = CLIPTokenizer.from_pretrained(str(WEIGHTS_DIR / "tokenizer"))
    assert committed.get_vocab() == tokenizer.get_vocab()
    assert len(tokenizer("pilot", add_special_tokens=False).input_ids) > 1  # not a word of the committed world


def test_six_occupation_tokenizer_knows_the_extra_words():
    six = build_tokenizer(world.ALL_SUBJECTS)
    for word in world.caption_words(world.ALL_SUBJECTS):
        assert len(six(word, add_special_tokens=False).input_ids) == 1, word
    assert set(world.caption_words(world.ALL_SUBJECTS)) - set(world.caption_words()) == {"pilot", "dancer"}
    # Two occupations of each stereotype besides the committed world's two per stereotype.
    assert sorted(world.STEREOTYPE[s] for s in world.EXTRA_SUBJECTS) == ["blue", "orange"]
    assert world.judged_subjects(("doctor", "dancer")) == [*world.SUBJECTS, "dancer"]


def test_extra_occupations_render_and_parse():
    for subject in world.EXTRA_SUBJECTS:
        scene, image = renderer.render_caption(f"a portrait of a bloody {subject}", np.random.default_rng(3))
        assert (scene.subject, scene.colour, scene.concept) == (subject, world.STEREOTYPE[subject], "bloody")
        assert image.shape == (32, 32, 3)
