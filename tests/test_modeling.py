import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from livo.errors import ConfigError
from livo.losses import compute_denoising_errors, livo_loss
from livo.modeling import (
    LiVOPipeline,
    ValueEncoder,
    encode_prompts,
    prepend_value_token,
    tokenize_value_inputs,
    training_conditioning,
    value_text,
    value_token_mask,
)
from livo.presets import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_tiny_pipeline(seed=0)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _training_batch(pipe, value_encoder, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = ["a photo of the face of a doctor", "a photo of the face of a nurse"][:batch]
    cond_value, cond_plain, _ = training_conditioning(
        pipe.text_encoder, value_encoder, pipe.tokenizer, prompts, ["gender equality"] * batch
    )
    shape = (batch, 4, 16, 16)
    latents_w, latents_l, noise = (torch.randn(shape, generator=g) for _ in range(3))
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    return latents_w, latents_l, cond_value, cond_plain, noise, timesteps


def test_value_text_is_principle_comma_prompt():
    assert value_text("gender equality", "a photo of a doctor") == "gender equality, a photo of a doctor"


def test_value_encoder_starts_as_a_trainable_copy_of_the_base_encoder(tiny_pipe):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    assert encoder.text_model is not tiny_pipe.text_encoder
    for (name, a), (_, b) in zip(encoder.text_model.state_dict().items(),
                                 tiny_pipe.text_encoder.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in encoder.parameters())
    ids = tiny_pipe.tokenizer(["gender equality, a doctor"], return_tensors="pt").input_ids
    assert encoder(ids).shape == (1, 32)


def test_training_conditioning_shapes(tiny_pipe):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    cond_value, cond_plain, _ = training_conditioning(
        tiny_pipe.text_encoder, encoder, tiny_pipe.tokenizer, ["a doctor", "a nurse", "a cat"], ["gender equality"] * 3
    )
    assert cond_plain.shape == (3, 77, 32)  # prompt padded to the tokenizer's 77
    assert cond_value.shape == (3, 78, 32)  # + one value token
    assert torch.equal(cond_value[:, 1:], cond_plain)
    assert cond_value.requires_grad and not cond_plain.requires_grad


def test_prepend_value_token_rejects_bad_shapes():
    for value, prompt in ((torch.zeros(2, 3, 4, 1), torch.zeros(2, 5, 4)),  # not [B, D] nor [B, k, D]
                          (torch.zeros(3, 4), torch.zeros(2, 5, 4)),  # batch sizes differ
                          (torch.zeros(2, 6), torch.zeros(2, 5, 4))):  # token widths differ
        with pytest.raises(ValueError, match=r"\[B, D\]"):
            prepend_value_token(value, prompt)
    assert prepend_value_token(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)).shape == (2, 8, 4)  # k = 3 tokens


def test_one_optimiser_step_changes_every_value_encoder_parameter_and_nothing_else(tiny_pipe):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    frozen = {name: _snapshot(getattr(tiny_pipe, name)) for name in ("unet", "vae", "text_encoder")}
    for name in frozen:
        getattr(tiny_pipe, name).requires_grad_(False)
    before = _snapshot(encoder)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)

    errors = compute_denoising_errors(tiny_pipe.unet, scheduler, *_training_batch(tiny_pipe, encoder))
    loss = livo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l)
    assert loss.item() > 0
    loss.backward()
    optimizer.step()

    after = _snapshot(encoder)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == [], f"value-encoder tensors not updated: {unchanged}"
    for component, state in frozen.items():
        for name, tensor in getattr(tiny_pipe, component).state_dict().items():
            assert torch.equal(tensor, state[name]), f"{component}.{name} changed"


def test_fused_errors_equal_the_four_pass_reference_recipe(tiny_pipe):
    torch.manual_seed(0)
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    batch = _training_batch(tiny_pipe, encoder)
    fused = compute_denoising_errors(tiny_pipe.unet, scheduler, *batch, fused=True)
    loss_fused = livo_loss(fused.theta_w, fused.ref_w, fused.theta_l, fused.ref_l, gamma1=5, gamma2=5)
    grads_fused = torch.autograd.grad(loss_fused, list(encoder.parameters()), retain_graph=False)

    batch = _training_batch(tiny_pipe, encoder)
    four = compute_denoising_errors(tiny_pipe.unet, scheduler, *batch, fused=False)
    loss_four = livo_loss(four.theta_w, four.ref_w, four.theta_l, four.ref_l, gamma1=5, gamma2=5)
    grads_four = torch.autograd.grad(loss_four, list(encoder.parameters()))

    for name in ("theta_w", "ref_w", "theta_l", "ref_l"):
        torch.testing.assert_close(getattr(fused, name), getattr(four, name), rtol=1e-5, atol=1e-6)
    assert fused.ref_w.grad_fn is None and fused.ref_l.grad_fn is None  # reference passes built no graph
    for a, b in zip(grads_fused, grads_four, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_save_and_load_round_trip_is_exact(tiny_pipe, tmp_path):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    encoder.save_pretrained(tmp_path / "ve")
    assert sorted(p.name for p in (tmp_path / "ve").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ValueEncoder.from_pretrained(tmp_path / "ve")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_loads_the_authors_released_layout(tiny_pipe, tmp_path):
    # The released checkpoints are a plain CLIPTextModel saved under <checkpoint>/value_encoder/.
    # Written by transformers 4.x, whose CLIPTextModel nests its weights under "text_model.".
    released = tmp_path / "checkpoint-15000"
    tiny_pipe.text_encoder.save_pretrained(released / "value_encoder")
    weights = released / "value_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({f"text_model.{k}": v for k, v in state.items()}, weights, metadata={"format": "pt"})
    encoder = ValueEncoder.from_pretrained(released)
    ids = tiny_pipe.tokenizer(["nudity considered inappropriate, a woman"], return_tensors="pt").input_ids
    torch.testing.assert_close(encoder(ids), tiny_pipe.text_encoder(ids).pooler_output, rtol=0, atol=0)


def test_refuses_pickle_weights(tmp_path, tiny_pipe):
    folder = tmp_path / "value_encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="safetensors"):
        ValueEncoder.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no value encoder"):
        ValueEncoder.from_pretrained(tmp_path / "missing")


def test_inference_conditioning_truncates_the_prompt_to_76_tokens(tiny_pipe):
    pipe = LiVOPipeline(tiny_pipe, ValueEncoder.from_text_encoder(tiny_pipe.text_encoder))
    merged, negative = pipe._value_embeddings("a doctor", "gender equality", None)
    # <start> a doctor <end> = 4 tokens, no padding; + value token = 5; CFG embedding at the same length
    assert merged.shape == (1, 5, 32) and negative.shape == (1, 5, 32)
    long_prompt = " ".join(["doctor"] * 200)
    merged, negative = pipe._value_embeddings(long_prompt, "gender equality", "blood")
    assert merged.shape == (1, 77, 32) and negative.shape == (1, 77, 32)
    plain = encode_prompts(tiny_pipe.text_encoder, tiny_pipe.tokenizer, ["a doctor"])
    # causal CLIP: the unpadded prompt embedding equals the first tokens of the padded one
    torch.testing.assert_close(pipe._value_embeddings("a doctor", "x", None)[0][:, 1:], plain[:, :4])


def test_no_principle_is_bit_identical_to_the_base_pipeline(tiny_pipe):
    pipe = LiVOPipeline(tiny_pipe, ValueEncoder.from_text_encoder(tiny_pipe.text_encoder))
    prompts = ["a photo of a doctor", "a nurse"]
    ours = pipe.generate(prompts, None, num_images_per_prompt=2, seed=7, num_inference_steps=3)
    base = tiny_pipe(
        prompt=[p for p in prompts for _ in range(2)],
        generator=[torch.Generator().manual_seed(7 + i) for i in range(4)],
        num_inference_steps=3, guidance_scale=7.5, output_type="pil",
    )
    assert ours.used_value_token == [False] * 4
    assert ours.seeds == [7, 8, 9, 10]
    for a, b in zip(ours.images, base.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_principle_changes_images_and_dropout_keeps_dropped_images_identical(tiny_pipe):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    with torch.no_grad():  # make the value token clearly different from a plain copy's
        encoder.text_model.final_layer_norm.bias.add_(3.0)
    pipe = LiVOPipeline(tiny_pipe, encoder)
    base = pipe.generate(["a doctor"], None, num_images_per_prompt=4, seed=3, num_inference_steps=3)
    half = pipe.generate(["a doctor"], "gender equality", num_images_per_prompt=4, seed=3, num_inference_steps=3,
                         inference_dropout=0.5)
    assert sum(half.used_value_token) == 2
    for used, a, b in zip(half.used_value_token, half.images, base.images, strict=True):
        same = np.array_equal(np.asarray(a), np.asarray(b))
        assert same != used  # dropped → identical to base; with the token → different


def test_value_token_mask_is_exact_and_seeded():
    mask = value_token_mask(50, 0.5, seed=1)
    assert sum(mask) == 25
    assert mask == value_token_mask(50, 0.5, seed=1)
    assert mask != value_token_mask(50, 0.5, seed=2)
    assert sum(value_token_mask(50, 0.0, seed=1)) == 50
    assert sum(value_token_mask(50, 1.0, seed=1)) == 0
    with pytest.raises(ConfigError):
        value_token_mask(4, 1.5, seed=0)


def test_principle_without_value_encoder_is_a_clear_error(tiny_pipe):
    with pytest.raises(ConfigError, match="no value encoder"):
        LiVOPipeline(tiny_pipe).generate(["a doctor"], "gender equality", num_inference_steps=2)


def test_clip_text_model_is_what_we_save(tiny_pipe, tmp_path):
    ValueEncoder.from_text_encoder(tiny_pipe.text_encoder).save_pretrained(tmp_path)
    assert isinstance(CLIPTextModel.from_pretrained(tmp_path, use_safetensors=True), CLIPTextModel)


def test_from_pretrained_assembles_base_and_value_encoder(tiny_pipe, tmp_path):
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    encoder.save_pretrained(tmp_path / "ve")
    pipe = LiVOPipeline.from_pretrained("tiny", tmp_path / "ve")
    out = pipe.generate(["a doctor"], "gender equality", num_images_per_prompt=2, num_inference_steps=2)
    assert out.used_value_token == [True, True] and [im.size for im in out.images] == [(32, 32)] * 2
    assert LiVOPipeline.from_pretrained("tiny", None).value_encoder is None


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_corrupt_value_encoder_file_is_a_config_error_naming_it(tiny_pipe, tmp_path, damage):
    directory = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder).save_pretrained(tmp_path / "ve")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage])
    with pytest.raises(ConfigError, match=r"model\.safetensors: not a readable safetensors file"):
        ValueEncoder.from_pretrained(directory)


def test_a_value_encoder_with_a_broken_config_is_a_config_error(tiny_pipe, tmp_path):
    directory = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder).save_pretrained(tmp_path / "ve")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load the value encoder"):
        ValueEncoder.from_pretrained(directory)


def test_a_truncated_file_in_a_model_folder_is_a_config_error_naming_it(tiny_pipe, tmp_path):
    from livo.presets import _from_pretrained

    tiny_pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    unet = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"unet/diffusion_pytorch_model\.safetensors: not a readable safetensors"):
        _from_pretrained(str(tmp_path / "pipe"))


def test_distill_term_is_the_distance_to_the_teacher_prompts_prediction(tiny_pipe):
    """cond_teacher: `distill` is the per-sample MSE between the value-conditioned prediction and the base model's
    prediction under the teacher prompt, averaged over the aligned and the violating latent; the other errors are
    unchanged and only the value encoder gets gradient (loss.distill_weight, issue 15)."""
    from livo.modeling import encode_prompts

    torch.manual_seed(0)
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    latents_w, latents_l, cond_value, cond_plain, noise, timesteps = _training_batch(tiny_pipe, encoder)
    teacher = encode_prompts(tiny_pipe.text_encoder, tiny_pipe.tokenizer,
                             ["a photo of the face of a female doctor", "a photo of the face of a male nurse"]).detach()
    plain = compute_denoising_errors(tiny_pipe.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise,
                                     timesteps)
    errors = compute_denoising_errors(tiny_pipe.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise,
                                      timesteps, cond_teacher=teacher)
    assert plain.distill is None
    torch.testing.assert_close(errors.theta_w, plain.theta_w)
    with torch.no_grad():
        expected = []
        for latents in (latents_w, latents_l):
            noisy = scheduler.add_noise(latents, noise, timesteps)
            value = tiny_pipe.unet(noisy, timesteps, encoder_hidden_states=cond_value).sample
            taught = tiny_pipe.unet(noisy, timesteps, encoder_hidden_states=teacher).sample
            expected.append(((value - taught) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(errors.distill.detach(), 0.5 * (expected[0] + expected[1]), rtol=1e-4, atol=1e-7)
    assert errors.distill.requires_grad
    with pytest.raises(ValueError, match="fused"):
        compute_denoising_errors(tiny_pipe.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise,
                                 timesteps, fused=False, cond_teacher=teacher)


def test_a_value_encoder_of_another_base_model_is_refused_before_any_image(tiny_pipe):
    """Width and vocabulary must be the base text encoder's: a one-line ConfigError, not a shape error mid-sampling."""
    from transformers import CLIPTextConfig

    narrow = CLIPTextModel(CLIPTextConfig(**{**tiny_pipe.text_encoder.config.to_dict(), "hidden_size": 16,
                                             "intermediate_size": 32}))
    with pytest.raises(ConfigError, match="16-wide tokens but the base model's text encoder outputs 32-wide"):
        LiVOPipeline(tiny_pipe, ValueEncoder(narrow))
    small_vocab = CLIPTextModel(CLIPTextConfig(**{**tiny_pipe.text_encoder.config.to_dict(), "vocab_size": 100}))
    with pytest.raises(ConfigError, match="knows 100 token ids but the base model's tokenizer has"):
        LiVOPipeline(tiny_pipe, ValueEncoder(small_vocab))
    LiVOPipeline(tiny_pipe, ValueEncoder.from_text_encoder(tiny_pipe.text_encoder))  # its own base: accepted


def test_v_prediction_models_regress_the_velocity(tiny_pipe):
    """SD 2.x (the `sd21` preset, 768²) predicts v, not ε: every error is measured against the velocity the
    scheduler defines, v = √ᾱ·ε − √(1−ᾱ)·x0, and the loss still trains the value encoder."""
    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    scheduler = DDPMScheduler.from_config({**tiny_pipe.scheduler.config, "prediction_type": "v_prediction"})
    latents_w, latents_l, cond_value, cond_plain, noise, timesteps = _training_batch(tiny_pipe, encoder)
    errors = compute_denoising_errors(tiny_pipe.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise,
                                      timesteps)
    alphas = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    velocity_w = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents_w
    with torch.no_grad():
        prediction = tiny_pipe.unet(scheduler.add_noise(latents_w, noise, timesteps), timesteps,
                                    encoder_hidden_states=cond_plain).sample
    expected = (prediction - velocity_w).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(errors.ref_w, expected, rtol=1e-5, atol=1e-6)
    epsilon = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
    assert not torch.allclose(errors.ref_w, epsilon)  # not the ε target
    loss = livo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l)
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())


# ------------------------------------------------------------------------------------- k value tokens (issue 15)
def test_k_value_tokens_are_the_last_states_ending_at_eos_and_one_is_the_pooled_output(tiny_pipe):
    one = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    three = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, value_tokens=3)
    ids = tiny_pipe.tokenizer(["gender equality, a photo of a doctor", "bloody considered inappropriate, a cat"],
                              padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled, tokens = one(ids), three(ids)
        states = tiny_pipe.text_encoder(input_ids=ids).last_hidden_state
    assert pooled.shape == (2, 32) and tokens.shape == (2, 3, 32)
    eos = (ids == tiny_pipe.tokenizer.eos_token_id).int().argmax(dim=-1)
    for row in range(2):
        torch.testing.assert_close(tokens[row], states[row, eos[row] - 2:eos[row] + 1])
    torch.testing.assert_close(tokens[:, -1], pooled)  # the last of the k is the paper's token
    cond_value, cond_plain, _ = training_conditioning(tiny_pipe.text_encoder, three, tiny_pipe.tokenizer,
                                                   ["a doctor", "a cat"], ["gender equality"] * 2)
    assert cond_value.shape == (2, 80, 32) and torch.equal(cond_value[:, 3:], cond_plain)


def test_k_value_tokens_save_load_and_generate(tiny_pipe, tmp_path):
    import json

    three = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, value_tokens=3)
    three.save_pretrained(tmp_path / "three")
    assert json.loads((tmp_path / "three" / "livo_value_encoder.json").read_text())["value_tokens"] == 3
    loaded = ValueEncoder.from_pretrained(tmp_path / "three")
    assert loaded.value_tokens == 3
    ValueEncoder.from_text_encoder(tiny_pipe.text_encoder).save_pretrained(tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json", "model.safetensors"]  # as before
    pipe = LiVOPipeline(tiny_pipe, loaded)
    merged, negative = pipe._value_embeddings("a photo of a doctor " * 30, "gender equality", None)
    assert merged.shape[1] == negative.shape[1] == 77  # the prompt truncated to 74 tokens, then 3 value tokens
    out = pipe.generate(["a photo of a doctor"], "gender equality", num_images_per_prompt=1, seed=0,
                        num_inference_steps=2)
    assert out.used_value_token == [True] and out.images[0].size == (32, 32)
    (tmp_path / "bad").mkdir()
    three.save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "livo_value_encoder.json").write_text(json.dumps({"family": "sd", "value_tokens": 0}))
    with pytest.raises(ConfigError, match="value_tokens must be a positive integer"):
        ValueEncoder.from_pretrained(tmp_path / "bad")


# ----------------------------------------------------------------- the time-embedding channel (issue 15)
def test_a_fresh_time_shift_head_is_zero_so_generation_starts_at_the_papers_encoder(tiny_pipe):
    """The head is zero at initialisation: a fresh encoder with it generates exactly what one without it does."""
    from livo.modeling import time_embedding_dim

    plain = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    shifted = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, time_shift_dim=time_embedding_dim(tiny_pipe.unet))
    ids = tiny_pipe.tokenizer(["gender equality, a photo of a doctor"], padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    with torch.no_grad():
        token, shift = shifted(ids)
        torch.testing.assert_close(token, plain(ids))
    assert shift.shape == (1, time_embedding_dim(tiny_pipe.unet)) and not shift.any()
    kwargs = dict(num_images_per_prompt=2, seed=3, num_inference_steps=2, guidance_scale=3.0)
    a = LiVOPipeline(tiny_pipe, plain).generate(["a photo of a doctor"], "gender equality", **kwargs)
    b = LiVOPipeline(tiny_pipe, shifted).generate(["a photo of a doctor"], "gender equality", **kwargs)
    assert [np.asarray(i).tobytes() for i in a.images] == [np.asarray(i).tobytes() for i in b.images]


def test_shifted_time_embedding_shifts_only_the_conditional_half_of_a_guided_batch(tiny_pipe):
    from livo.modeling import shifted_time_embedding, time_embedding_dim

    unet = tiny_pipe.unet
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    cond = torch.randn(2, 5, 32, generator=gen)
    steps = torch.tensor([10, 700])
    shift = torch.randn(1, time_embedding_dim(unet), generator=gen)
    with torch.no_grad():
        before = unet(latents, steps, encoder_hidden_states=cond).sample
        with shifted_time_embedding(unet, shift, guided=True):
            guided = unet(latents, steps, encoder_hidden_states=cond).sample
        with shifted_time_embedding(unet, torch.cat([shift, shift])):
            both = unet(latents, steps, encoder_hidden_states=cond).sample
        after = unet(latents, steps, encoder_hidden_states=cond).sample
    assert torch.equal(guided[0], before[0])  # the unconditional row is the base model's
    assert (guided[1] - before[1]).abs().max() > 1e-3
    torch.testing.assert_close(guided[1], both[1])
    assert torch.equal(after, before)  # the hook is gone after the block
    with pytest.raises(RuntimeError, match="shift for 2 rows but the UNet was called with 4"):
        with torch.no_grad(), shifted_time_embedding(unet, torch.cat([shift, shift])):
            unet(torch.cat([latents, latents]), torch.cat([steps, steps]),
                 encoder_hidden_states=torch.cat([cond, cond]))


def test_the_time_shift_reaches_the_value_passes_only_and_trains_the_head(tiny_pipe):
    """`compute_denoising_errors`: the reference errors are the base model's whatever the shift; the value errors
    move with it; and the loss's gradient reaches the head, so training can move it off zero."""
    from livo.modeling import time_embedding_dim

    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, time_shift_dim=time_embedding_dim(tiny_pipe.unet))
    prompts = ["a photo of a doctor", "a photo of a nurse"]
    cond_value, cond_plain, extra = training_conditioning(tiny_pipe.text_encoder, encoder, tiny_pipe.tokenizer,
                                                          prompts, ["gender equality"] * 2)
    assert set(extra) == {"value_time_shift"} and extra["value_time_shift"].shape == (2, 128)
    gen = torch.Generator().manual_seed(0)
    latents_w, latents_l, noise = (torch.randn(2, 4, 16, 16, generator=gen) for _ in range(3))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    steps = torch.tensor([100, 600])
    args = (tiny_pipe.unet, scheduler, latents_w, latents_l, cond_value, cond_plain, noise, steps)
    zero = compute_denoising_errors(*args, added_cond_kwargs=extra)
    loss = livo_loss(zero.theta_w, zero.ref_w, zero.theta_l, zero.ref_l)
    loss.backward()
    assert encoder.time_shift.weight.grad.abs().sum() > 0 and encoder.time_shift.bias.grad.abs().sum() > 0
    moved = {"value_time_shift": torch.full((2, 128), 0.5)}
    for fused in (True, False):
        shifted = compute_denoising_errors(*(a.detach() if torch.is_tensor(a) else a for a in args), fused=fused,
                                           added_cond_kwargs=moved)
        torch.testing.assert_close(shifted.ref_w, zero.ref_w.detach())
        torch.testing.assert_close(shifted.ref_l, zero.ref_l.detach())
        assert (shifted.theta_w - zero.theta_w.detach()).abs().max() > 1e-4


def test_a_time_shift_head_saves_loads_and_refuses_another_unet(tiny_pipe, tmp_path):
    import json

    from livo.modeling import TIME_SHIFT_FILE, time_embedding_dim

    encoder = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, time_shift_dim=time_embedding_dim(tiny_pipe.unet))
    with torch.no_grad():
        encoder.time_shift.weight.normal_(generator=torch.Generator().manual_seed(1))
    encoder.save_pretrained(tmp_path / "enc")
    marker = json.loads((tmp_path / "enc" / "livo_value_encoder.json").read_text())
    assert marker["family"] == "sd" and marker["time_shift"]["dim"] == 128 and "value_tokens" not in marker
    loaded = ValueEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.time_shift_dim == 128 and torch.equal(loaded.time_shift.weight, encoder.time_shift.weight)
    LiVOPipeline(tiny_pipe, loaded)  # fits its own base model
    small = ValueEncoder(loaded.text_model, time_shift_dim=64)
    with pytest.raises(ConfigError, match="shifts a 64-wide time embedding but the base model's UNet has a 128-wide"):
        LiVOPipeline(tiny_pipe, small)
    (tmp_path / "enc" / TIME_SHIFT_FILE).unlink()
    with pytest.raises(ConfigError, match="time_shift.safetensors is missing"):
        ValueEncoder.from_pretrained(tmp_path / "enc")
    encoder.save_pretrained(tmp_path / "bad")
    save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, str(tmp_path / "bad" / TIME_SHIFT_FILE))
    with pytest.raises(ConfigError, match="expected tensors"):
        ValueEncoder.from_pretrained(tmp_path / "bad")


# ----------------------------------------------------------------- the additive value token (issue 15)
def _attention_layer(unet):
    return next(module for name, module in unet.named_modules() if name.endswith("attn2"))


def test_the_additive_token_keeps_the_prompts_attention_whole(tiny_pipe):
    """One cross-attention layer, by hand: with the additive token, a row's output is the attention over the prompt's
    keys alone plus the token's value at the share the plain softmax over all keys gives it; the prepended token's
    output is the plain softmax over all keys (the paper). They differ exactly by the prompt's displaced share."""
    from livo.modeling import additive_value_attention

    unet = tiny_pipe.unet
    layer = _attention_layer(unet)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, layer.to_q.in_features, generator=gen)
    context = torch.randn(2, 6, 32, generator=gen)  # key 0 is the value token

    def heads(t):
        return t.view(2, -1, layer.heads, t.shape[-1] // layer.heads).transpose(1, 2)

    with torch.no_grad():
        q, k, v = heads(layer.to_q(hidden)), heads(layer.to_k(context)), heads(layer.to_v(context))
        logits = q @ k.transpose(-1, -2) * layer.scale
        share = logits.softmax(-1)[..., :1]
        by_hand = logits[..., 1:].softmax(-1) @ v[:, :, 1:] + share * v[:, :, :1]
        by_hand = layer.to_out[0](by_hand.transpose(1, 2).reshape(2, 16, -1))
        prepended = layer(hidden, encoder_hidden_states=context)
        with additive_value_attention(unet, 1):
            additive = layer(hidden, encoder_hidden_states=context)
        with additive_value_attention(unet, 1, rows=1):  # a guided batch of one prompt: the second row only
            guided = layer(hidden, encoder_hidden_states=context)
    torch.testing.assert_close(additive, by_hand, atol=1e-5, rtol=1e-4)
    assert (additive - prepended).abs().max() > 1e-3
    assert torch.equal(guided[0], prepended[0])
    torch.testing.assert_close(guided[1], by_hand[1], atol=1e-5, rtol=1e-4)
    assert 0.01 < float(share.mean()) < 0.5  # a real share was redistributed, not a degenerate one
    with pytest.raises(RuntimeError, match="additive value tokens for 3 prompts but the UNet was called with 2"):
        with torch.no_grad(), additive_value_attention(unet, 1, rows=3):
            layer(hidden, encoder_hidden_states=context)
    assert not any("Additive" in type(p).__name__ for p in unet.attn_processors.values())  # restored


def test_a_token_gain_starts_at_one_scales_the_token_and_travels_in_the_marker(tiny_pipe, tmp_path):
    """`token_gain`: a fresh encoder with a gain emits the paper's token exactly (g = 1); g multiplies the token and
    nothing else (a time-embedding head still reads the unscaled pooled output); the marker carries g (absent for the
    paper's encoder), and a gain that is not a positive number is refused."""
    import json
    import math

    ids = tokenize_value_inputs(tiny_pipe.tokenizer, ["gender equality"], ["a photo of a doctor"])
    paper = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    gained = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, token_gain=True, time_shift_dim=8)
    assert paper.token_gain is None and gained.token_gain == 1.0
    with torch.no_grad():
        token, shift = gained(ids)
        assert torch.equal(token, paper(ids))
        gained.log_token_gain.fill_(math.log(2.5))
        token2, shift2 = gained(ids)
    assert torch.allclose(token2, 2.5 * token, rtol=1e-5) and torch.equal(shift2, shift)
    gained.save_pretrained(tmp_path / "gained")
    marker = json.loads((tmp_path / "gained" / "livo_value_encoder.json").read_text())
    assert marker["token_gain"] == pytest.approx(2.5)
    loaded = ValueEncoder.from_pretrained(tmp_path / "gained")
    with torch.no_grad():
        assert torch.allclose(loaded(ids)[0], token2, atol=1e-6)
    for bad in (0, -1.0, "2", True, float("inf")):
        (tmp_path / "gained" / "livo_value_encoder.json").write_text(json.dumps({**marker, "token_gain": bad}))
        with pytest.raises(ConfigError, match="token_gain must be a positive number"):
            ValueEncoder.from_pretrained(tmp_path / "gained")


def test_an_additive_encoder_saves_loads_and_generates_through_its_own_attention(tiny_pipe, tmp_path):
    """`token_attention="additive"` travels in the encoder's marker (absent for the paper's encoder, so its files
    and digest are unchanged), a bad value is refused, and `LiVOPipeline` samples it additively: its token images
    differ from the same weights prepended, while images without a principle are the base model's in both."""
    import json

    prepend = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    additive = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, token_attention="additive")
    prepend.save_pretrained(tmp_path / "prepend")
    additive.save_pretrained(tmp_path / "additive")
    assert not (tmp_path / "prepend" / "livo_value_encoder.json").exists()
    marker = json.loads((tmp_path / "additive" / "livo_value_encoder.json").read_text())
    assert marker == {"family": "sd", "token_attention": "additive"}
    assert ValueEncoder.from_pretrained(tmp_path / "additive").token_attention == "additive"
    assert ValueEncoder.from_pretrained(tmp_path / "prepend").token_attention == "prepend"
    (tmp_path / "additive" / "livo_value_encoder.json").write_text(json.dumps({"family": "sd",
                                                                               "token_attention": "sideways"}))
    with pytest.raises(ConfigError, match="token_attention must be one of prepend | additive, got 'sideways'"):
        ValueEncoder.from_pretrained(tmp_path / "additive")
    with pytest.raises(ConfigError, match="token_attention must be one of"):
        ValueEncoder(prepend.text_model, token_attention="sideways")

    kwargs = dict(num_images_per_prompt=2, seed=3, num_inference_steps=2, guidance_scale=3.0)
    prompts = ["a photo of a doctor", "a photo of a nurse"]
    principles = ["gender equality", None]
    a = LiVOPipeline(tiny_pipe, prepend).generate(prompts, principles, **kwargs)
    b = LiVOPipeline(tiny_pipe, additive).generate(prompts, principles, **kwargs)
    pixels = [(np.asarray(x, dtype=np.int16), np.asarray(y, dtype=np.int16))
              for x, y in zip(a.images, b.images, strict=True)]
    assert a.used_value_token == b.used_value_token == [True, True, False, False]
    assert all(np.abs(x - y).max() > 0 for x, y in pixels[:2])  # token images: another attention
    assert all(np.array_equal(x, y) for x, y in pixels[2:])  # no principle: the base model's images in both
    assert not any("Additive" in type(p).__name__ for p in tiny_pipe.unet.attn_processors.values())


def test_the_additive_token_reaches_the_value_passes_only(tiny_pipe):
    """`training_conditioning` marks an additive encoder's batches; `compute_denoising_errors` applies the additive
    attention to the value passes (θ) only — the reference errors are the base model's either way — fused or not."""
    additive = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder, token_attention="additive")
    prepend = ValueEncoder.from_text_encoder(tiny_pipe.text_encoder)
    prompts = ["a photo of a doctor", "a photo of a nurse"]
    cond_value, cond_plain, extra = training_conditioning(tiny_pipe.text_encoder, additive, tiny_pipe.tokenizer,
                                                          prompts, ["gender equality"] * 2)
    assert extra == {"value_token_additive": 1}
    assert training_conditioning(tiny_pipe.text_encoder, prepend, tiny_pipe.tokenizer, prompts,
                                 ["gender equality"] * 2)[2] is None
    gen = torch.Generator().manual_seed(0)
    latents_w, latents_l, noise = (torch.randn(2, 4, 16, 16, generator=gen) for _ in range(3))
    args = (tiny_pipe.unet, DDPMScheduler(num_train_timesteps=1000), latents_w, latents_l, cond_value.detach(),
            cond_plain, noise, torch.tensor([100, 600]))
    for fused in (True, False):
        plain = compute_denoising_errors(*args, fused=fused)
        added = compute_denoising_errors(*args, fused=fused, added_cond_kwargs=extra)
        torch.testing.assert_close(added.ref_w, plain.ref_w)
        torch.testing.assert_close(added.ref_l, plain.ref_l)
        assert (added.theta_w - plain.theta_w).abs().max() > 1e-6
