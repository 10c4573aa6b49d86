"""LiVO on an SDXL-family base model (issue 18), on the committed toy SDXL (livo/toy/weights_sdxl): the two-encoder
value encoder, the pipeline with the value token, the family checks, save/load, and training that lowers the loss and
changes only the value encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livo.errors import ConfigError
from livo.losses import compute_denoising_errors, livo_loss
from livo.modeling import (
    LiVOPipeline,
    SDXLValueEncoder,
    ValueEncoder,
    is_sdxl,
    sdxl_training_conditioning,
    tokenize_value_inputs,
    value_encoder_for,
)

STEPS = {"num_inference_steps": 4, "guidance_scale": 3.0, "height": 32, "width": 32, "batch_size": 4}


@pytest.fixture(scope="module")
def sdxl():
    from livo.toy.base_model import load_toy_sdxl_pipeline

    torch.set_num_threads(1)
    return load_toy_sdxl_pipeline()


def test_the_value_token_starts_as_the_frozen_encoders_eos_state_of_the_value_text(sdxl):
    encoder = value_encoder_for(sdxl)  # the default: candidate (b), token and pooled output
    assert isinstance(encoder, SDXLValueEncoder) and is_sdxl(sdxl) and encoder.shift_pooled
    assert encoder.hidden_size == sdxl.unet.config.cross_attention_dim == 128
    ids = tokenize_value_inputs(sdxl.tokenizer, ["gender equality"], ["a photo of a doctor"])
    eos = int((ids[0] == sdxl.tokenizer.eos_token_id).int().argmax())
    with torch.no_grad():
        token, pooled = encoder(ids)
        first = sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-2][0, eos]
        second = sdxl.text_encoder_2(ids, output_hidden_states=True)
    assert torch.equal(token[0], torch.cat([first, second.hidden_states[-2][0, eos]]))  # in the prompt's distribution
    assert torch.equal(pooled, second.text_embeds)  # and the pooled shift starts at the value text's own pooled output
    only_token = value_encoder_for(sdxl, sdxl_shift_pooled=False)  # candidate (a)
    assert not only_token.shift_pooled
    with torch.no_grad():
        assert torch.equal(only_token(ids), token)


def test_pipeline_adds_the_token_and_leaves_plain_images_bit_identical(sdxl):
    pipe = LiVOPipeline(sdxl, value_encoder_for(sdxl))
    plain = pipe.generate(["a photo of a doctor"], None, num_images_per_prompt=2, seed=3, **STEPS)
    direct = sdxl(prompt=["a photo of a doctor"] * 2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
                  num_inference_steps=4, guidance_scale=3.0, height=32, width=32).images
    for ours, theirs in zip(plain.images, direct, strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    with_token = pipe.generate(["a photo of a doctor"], "gender equality", num_images_per_prompt=2, seed=3,
                               inference_dropout=0.0, **STEPS)
    assert with_token.used_value_token == [True, True]
    assert all(image.size == (32, 32) for image in with_token.images)
    assert not np.array_equal(np.asarray(with_token.images[0]), np.asarray(plain.images[0]))  # the token is read


def test_encoding_control_is_the_token_sequence_without_the_token(sdxl):
    """SDXL's encoding control: the token path's unpadded tokens and the prompt's own pooled output (the token is the
    only change candidate (a) makes), the negative at the same length; `generate(unpadded=True)` draws from them."""
    pipe = LiVOPipeline(sdxl, value_encoder_for(sdxl, sdxl_shift_pooled=False))
    prompt = "a photo of a bloody doctor"
    tokens, negative, pooled, negative_pooled = pipe.unpadded_embeddings(prompt)
    merged, value_negative, value_pooled, _ = pipe._sdxl_value_embeddings(prompt, "no blood", None)
    assert torch.equal(tokens, merged[:, 1:]) and torch.equal(pooled, value_pooled)
    assert negative.shape == tokens.shape and negative_pooled.shape == pooled.shape
    assert tokens.shape[1] == len(sdxl.tokenizer(prompt).input_ids) < 77
    control = pipe.generate([prompt], None, seeds=[5], unpadded=True, **STEPS).images[0]
    direct = sdxl(prompt_embeds=tokens, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=negative_pooled, generator=[torch.Generator().manual_seed(5)],
                  num_inference_steps=4, guidance_scale=3.0, height=32, width=32).images[0]
    assert np.array_equal(np.asarray(control), np.asarray(direct))


def test_a_value_encoder_of_the_other_family_is_refused(sdxl):
    from livo.toy.base_model import load_toy_pipeline

    sd = load_toy_pipeline()
    with pytest.raises(ConfigError, match="SD v1.5-family value encoder .* base model is SDXL-family"):
        LiVOPipeline(sdxl, ValueEncoder.from_text_encoder(sd.text_encoder))
    with pytest.raises(ConfigError, match="SDXL value encoder .* base model has one text encoder"):
        LiVOPipeline(sd, value_encoder_for(sdxl))


def test_save_and_load_round_trip_is_exact_and_names_the_family(sdxl, tmp_path):
    from livo.registry.lineage import value_encoder_digest

    encoder = value_encoder_for(sdxl)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)
    encoder.save_pretrained(tmp_path / "ve")
    assert sorted(p.name for p in (tmp_path / "ve").iterdir()) == ["livo_value_encoder.json", "text_encoder",
                                                                    "text_encoder_2"]
    loaded = ValueEncoder.from_pretrained(tmp_path / "ve")  # the generic loader dispatches on the marker
    assert isinstance(loaded, SDXLValueEncoder)
    for (name, a), (_, b) in zip(encoder.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert value_encoder_digest(tmp_path / "ve").startswith("sha256:")
    (tmp_path / "ve" / "livo_value_encoder.json").write_text('{"family": "sd3"}')
    with pytest.raises(ConfigError, match="family 'sd3'; livo knows 'sd' and 'sdxl'"):
        ValueEncoder.from_pretrained(tmp_path / "ve")


def test_training_lowers_the_livo_loss_and_changes_only_the_value_encoder(sdxl):
    """A few AdamW steps on one batch of toy pairs (aligned: an orange doctor; violating: a blue one), SDXL's added
    conditions in every pass: the loss falls, every value-encoder tensor moves, no base weight does; fused and
    four-pass errors agree."""
    from diffusers import DDPMScheduler

    from livo.toy import renderer

    rng = np.random.default_rng(0)
    aligned = [renderer.render(renderer.sample_scene(rng, "doctor", "orange")) for _ in range(4)]
    violating = [renderer.render(renderer.sample_scene(rng, "doctor", "blue")) for _ in range(4)]

    def latents(images):
        pixels = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        with torch.no_grad():
            return sdxl.vae.encode(pixels).latent_dist.mean * sdxl.vae.config.scaling_factor

    latents_w, latents_l = latents(aligned), latents(violating)
    scheduler = DDPMScheduler.from_config(sdxl.scheduler.config)
    encoder = value_encoder_for(sdxl)
    base_before = {k: v.clone() for k, v in sdxl.unet.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents_w.shape, generator=generator)
    timesteps = torch.randint(100, 900, (4,), generator=generator)
    prompts, principles = ["a photo of a doctor"] * 4, ["gender equality"] * 4

    def loss_now(fused: bool = True):
        cond_value, cond_plain, added = sdxl_training_conditioning(
            sdxl.text_encoder, sdxl.text_encoder_2, encoder, sdxl.tokenizer, prompts, principles, 32)
        errors = compute_denoising_errors(sdxl.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise,
                                          timesteps, fused=fused, added_cond_kwargs=added)
        return livo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l), errors

    with torch.no_grad():
        (_, fused), (_, four_pass) = loss_now(True), loss_now(False)
    for name in ("theta_w", "ref_w", "theta_l", "ref_l"):
        assert torch.allclose(getattr(fused, name), getattr(four_pass, name), rtol=1e-4, atol=1e-6), name
    assert cond_shapes_ok(sdxl, encoder, prompts, principles)

    with torch.no_grad():
        first, _ = loss_now()
    for _ in range(6):
        loss, _ = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last, _ = loss_now()
    assert float(last) < 0.5 * float(first), (float(first), float(last))  # measured: 1.52 -> 0.37
    assert all(torch.equal(v, sdxl.unet.state_dict()[k]) for k, v in base_before.items())
    moved = [k for k, v in encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert any(k.startswith("text_model.") for k in moved) and any(k.startswith("text_model_2.") for k in moved)


def cond_shapes_ok(sdxl, encoder, prompts, principles) -> bool:
    cond_value, cond_plain, added = sdxl_training_conditioning(
        sdxl.text_encoder, sdxl.text_encoder_2, encoder, sdxl.tokenizer, prompts, principles, 32)
    return (tuple(cond_value.shape) == (4, 78, 128) and tuple(cond_plain.shape) == (4, 77, 128)
            and tuple(added["text_embeds"].shape) == (4, 64) and added["time_ids"][0].tolist() == [32, 32, 0, 0, 32, 32])


def test_candidate_b_shifts_the_pooled_embedding_only_in_the_value_passes(sdxl, tmp_path):
    """`shift_pooled` (candidate (b)): the value passes read the value text's pooled output (with gradient), the
    reference passes the prompt's; it round-trips through save/load and changes images with the token."""
    from diffusers import DDPMScheduler

    encoder = value_encoder_for(sdxl, sdxl_shift_pooled=True)
    prompts, principles = ["a photo of a doctor"] * 2, ["gender equality"] * 2
    cond_value, cond_plain, added = sdxl_training_conditioning(
        sdxl.text_encoder, sdxl.text_encoder_2, encoder, sdxl.tokenizer, prompts, principles, 32)
    assert added["value_text_embeds"].requires_grad and not added["text_embeds"].requires_grad
    assert not torch.allclose(added["value_text_embeds"], added["text_embeds"])
    scheduler = DDPMScheduler.from_config(sdxl.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    noise, steps = torch.randn(latents.shape, generator=generator), torch.tensor([500, 700])
    errors = compute_denoising_errors(sdxl.unet, scheduler, latents, latents, cond_value, cond_plain, noise, steps,
                                      added_cond_kwargs=added)
    errors.theta_w.sum().backward()
    assert encoder.text_model_2.text_projection.weight.grad.abs().sum() > 0  # only the pooled path reaches it
    with torch.no_grad():
        plain = compute_denoising_errors(sdxl.unet, scheduler, latents, latents, cond_plain, cond_plain, noise, steps,
                                         added_cond_kwargs={k: v for k, v in added.items() if k != "value_text_embeds"})
    assert torch.allclose(errors.ref_w, plain.ref_w) and torch.allclose(plain.theta_w, plain.ref_w)
    encoder.save_pretrained(tmp_path / "b")
    assert ValueEncoder.from_pretrained(tmp_path / "b").shift_pooled
    images = LiVOPipeline(sdxl, ValueEncoder.from_pretrained(tmp_path / "b")).generate(
        ["a photo of a doctor"], "gender equality", num_images_per_prompt=1, seed=3, inference_dropout=0.0, **STEPS)
    assert images.used_value_token == [True]
