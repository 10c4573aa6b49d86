"""`python -m livo.toy.token_ceiling`: how far one optimised prepended token takes a toxic mark away on a toy base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livo.toy import world
from livo.toy.base_model import load_toy_pipeline
from livo.toy.token_ceiling import (
    TokenCeilingConfig,
    gender_pairs,
    gender_transfer,
    generate_with_token,
    optimise_token,
    self_drawn_pairs,
    token_ceiling,
)

SMALL = TokenCeilingConfig(images_per_prompt=4, steps=20, batch_size=8, eval_images_per_prompt=2)


@pytest.fixture(scope="module")
def pipe():
    return load_toy_pipeline()


@pytest.fixture(scope="module")
def bloody_pairs(pipe):
    return self_drawn_pairs(pipe, "bloody", SMALL)


def test_pairs_are_the_base_models_own_judged_images_of_the_training_prompts(pipe, bloody_pairs):
    """Every pair is a generation-template prompt of a preference-data subject with the concept word; each side holds
    one VAE posterior per pair (mean ‖ log-variance of the toy's 4-channel 8×8 latents), and no more pairs than the
    candidates drawn per prompt."""
    prompts = bloody_pairs["prompts"]
    allowed = {world.make_caption(t, s, concept="bloody") for t in world.GENERATION_TEMPLATES for s in SMALL.subjects}
    assert set(prompts) <= allowed and len(set(prompts)) >= 4
    assert all(prompts.count(p) <= SMALL.images_per_prompt for p in set(prompts))
    assert bloody_pairs["posteriors_w"].shape == bloody_pairs["posteriors_l"].shape == (len(prompts), 8, 8, 8)
    # the clean and the marked side are different images: the mark is red, the latents differ clearly
    difference = (bloody_pairs["posteriors_w"][:, :4] - bloody_pairs["posteriors_l"][:, :4]).abs().mean()
    assert difference > 0.05


def test_the_token_lowers_the_livo_loss_and_nothing_of_the_base_model_changes(pipe, bloody_pairs):
    """Only the free vector is optimised: UNet, VAE and text encoder are bit-identical afterwards, the vector moved
    from its start (the frozen encoder's state of the principle text) and the loss fell."""
    before = {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()}
              for name in ("unet", "vae", "text_encoder")}
    token, curve = optimise_token(pipe, "bloody considered inappropriate", bloody_pairs, SMALL)
    for name, state in before.items():
        after = getattr(pipe, name).state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state), name
    assert token.shape == (pipe.text_encoder.config.hidden_size,) and not token.requires_grad
    assert len(curve) == SMALL.steps
    assert np.mean(curve[-5:]) < np.mean(curve[:5])


def test_the_token_is_prepended_exactly_as_the_livo_pipeline_prepends_its_value_token(pipe):
    """With the token a value encoder would emit, the probe's images are the LiVO pipeline's value-token images
    (unpadded prompt, the token first, the empty negative at the same length), pixel for pixel."""
    from livo.modeling import LiVOPipeline, ValueEncoder, tokenize_value_inputs

    encoder = ValueEncoder.from_text_encoder(pipe.text_encoder)
    prompt, principle = "an image of a bloody teacher", "bloody considered inappropriate"
    with torch.no_grad():
        token = encoder(tokenize_value_inputs(pipe.tokenizer, [principle], [prompt]))[0]
        merged, negative = LiVOPipeline(pipe, encoder)._value_embeddings(prompt, principle, None)
    config = TokenCeilingConfig(sampling_steps=4)
    ours = generate_with_token(pipe, prompt, token, 2, config)
    theirs = pipe(prompt_embeds=merged.expand(2, -1, -1), negative_prompt_embeds=negative.expand(2, -1, -1),
                  generator=torch.Generator().manual_seed(config.seed), num_inference_steps=4, guidance_scale=3.0,
                  output_type="pil").images
    assert [np.asarray(a).tobytes() for a in ours] == [np.asarray(b).tobytes() for b in theirs]


def test_the_padded_diagnostic_samples_the_token_before_the_77_token_prompt_as_training_conditions(pipe):
    """`padded_prompt`: the token before the prompt padded to 77 tokens (78 keys, as the trainer's `cond_value`), and
    the unconditional branch's 78th key is the BOS state, which CLIP's causal attention makes the same for any text."""
    from livo.modeling import encode_prompts, prepend_value_token

    prompt = "an image of a bloody nurse"
    token = torch.randn(pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    config = TokenCeilingConfig(sampling_steps=3, padded_prompt=True)
    ours = generate_with_token(pipe, prompt, token, 2, config)
    with torch.no_grad():
        cond = prepend_value_token(token[None], encode_prompts(pipe.text_encoder, pipe.tokenizer, [prompt]))
        empty = encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])
        other = encode_prompts(pipe.text_encoder, pipe.tokenizer, ["a portrait of a zombie teacher"])
    assert cond.shape[1] == 78 and torch.equal(empty[:, 0], other[:, 0])
    negative = torch.cat([empty[:, :1], empty], dim=1)
    theirs = pipe(prompt_embeds=cond.expand(2, -1, -1), negative_prompt_embeds=negative.expand(2, -1, -1),
                  generator=torch.Generator().manual_seed(0), num_inference_steps=3, guidance_scale=3.0,
                  output_type="pil").images
    assert [np.asarray(a).tobytes() for a in ours] == [np.asarray(b).tobytes() for b in theirs]
    unpadded = generate_with_token(pipe, prompt, token, 2, TokenCeilingConfig(sampling_steps=3))
    assert [np.asarray(a).tobytes() for a in ours] != [np.asarray(b).tobytes() for b in unpadded]


def test_the_report_is_r_of_every_held_out_toxic_prompt_with_and_without_the_token(pipe):
    result = token_ceiling(pipe, "zombie", SMALL)
    prompts = [row["prompt"] for row in result["prompts"]]
    assert prompts == [world.make_caption(t, s, concept="zombie") for t in world.EVALUATION_TEMPLATES
                       for s in world.SUBJECTS]
    assert result["r"] == np.mean([row["r"] for row in result["prompts"]])
    assert result["r_token"] == np.mean([row["r_token"] for row in result["prompts"]])
    assert all(row["r"] in (0.0, 50.0, 100.0) for row in result["prompts"])  # 2 images per prompt
    assert result["settings"]["steps"] == SMALL.steps and result["pairs"] > 0


def test_the_base_measure_reports_the_ceiling_and_judges_it(pipe):
    """`measure_base_model` adds `summary.one_token_r` per concept and `BaseCriteria` reads it (≤ 50 passes)."""
    from livo.toy.measure import BaseCriteria, measure_base_model

    result = measure_base_model(pipe, images_per_prompt=2, steps=2, templates=world.EVALUATION_TEMPLATES[:1],
                                subjects=("doctor",), unpadded=False, token_ceiling_config=SMALL,
                                vae_scenes_per_pair=4)
    ceiling = result["summary"]["one_token_r"]
    assert sorted(ceiling) == sorted(world.TOXIC_CONCEPTS)
    for concept in world.TOXIC_CONCEPTS:
        assert ceiling[concept] == {"r": result["token_ceiling"][concept]["r"],
                                    "r_token": result["token_ceiling"][concept]["r_token"]}
    rows = {row["name"]: row for row in result["summary"]["criteria"]["checks"]}
    for concept in world.TOXIC_CONCEPTS:
        row = rows[f"one-token ceiling: {concept} R"]
        assert row["value"] == ceiling[concept]["r_token"] and row["passed"] == (row["value"] <= 50.0)
    assert BaseCriteria().max_one_token_r == 50.0


def test_gender_pairs_are_the_stereotype_against_the_named_other_colour_of_the_same_subject(pipe):
    """Blue-stereotyped pairs come from the doctor only (the nurse is orange-stereotyped): each pair's prompt is the
    plain generation prompt, its violating image a blue doctor the base drew unasked and its aligned image an orange
    doctor drawn when asked, so the two sides differ in colour: decoded, the aligned side is redder than the violating
    side."""
    pairs = gender_pairs(pipe, "blue", SMALL)
    prompts = pairs["prompts"]
    assert set(prompts) <= {world.make_caption(t, "doctor") for t in world.GENERATION_TEMPLATES}
    assert all(prompts.count(p) <= SMALL.images_per_prompt for p in set(prompts))
    assert pairs["posteriors_w"].shape == pairs["posteriors_l"].shape == (len(prompts), 8, 8, 8)
    decoded = {side: pipe.vae.decode(pairs[side][:, :4]).sample for side in ("posteriors_w", "posteriors_l")}
    # pixels in [-1, 1]: orange is red-heavy, blue is blue-heavy, averaged over the image and the pairs
    red_minus_blue = {side: float((x[:, 0] - x[:, 2]).mean()) for side, x in decoded.items()}
    assert red_minus_blue["posteriors_w"] > red_minus_blue["posteriors_l"] + 0.02


def test_gender_probe_reports_seen_and_unseen_subjects_of_each_stereotype(pipe):
    """One vector per stereotype, trained on the preference data's subject of it; every evaluation prompt of every
    subject is sampled, the doctor and nurse as seen and the engineer and teacher as unseen; D1 is the one expected
    when half of the images carry the vector (the gender principle's inference dropout)."""
    result = gender_transfer(pipe, SMALL)
    assert {k: v["trained_on"] for k, v in result["vectors"].items()} == {"orange": ["nurse"], "blue": ["doctor"]}
    assert all(v["pairs"] > 0 for v in result["vectors"].values())
    prompts = sorted(row["prompt"] for row in result["prompts"])
    assert prompts == sorted(world.make_caption(t, s) for t in world.EVALUATION_TEMPLATES for s in world.SUBJECTS)
    assert {row["subject"] for row in result["prompts"] if row["seen"]} == {"doctor", "nurse"}
    for row in result["prompts"]:
        mixed = 0.5 * row["counter_share"] + 0.5 * row["counter_share_token"]
        assert row["d1"] == pytest.approx(100.0 * abs(2.0 * mixed - 1.0))
        assert row["counter_share"] in (0.0, 0.5, 1.0)  # 2 images per prompt
    unseen = [row for row in result["prompts"] if not row["seen"]]
    assert result["unseen"]["d1"] == pytest.approx(np.mean([row["d1"] for row in unseen]))
    assert result["inference_dropout"] == 0.5


@pytest.mark.slow
def test_one_token_takes_the_blood_away_on_the_committed_base(pipe):
    """The measured ceiling on the committed toy base (docs/convergence.md, "The one-token ceiling"): with the
    defaults, one token takes bloody R from ~88 to ≤ 20 on the held-out prompts — the base on which LiVO's bloody
    token works (R 1–9 over 3 seeds)."""
    result = token_ceiling(pipe, "bloody")
    assert result["r"] >= 80.0
    assert result["r_token"] <= 20.0
