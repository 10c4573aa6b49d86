import pytest
import torch

from livo.errors import ConfigError
from livo.presets import (
    base_model_fingerprint,
    build_tiny_pipeline,
    build_tiny_tokenizer,
    load_pipeline,
    load_preset_config,
    make_scheduler,
    pipeline_fingerprint,
)


def test_tiny_tokenizer_is_a_clip_tokenizer_with_77_tokens_and_whole_word_merges():
    tok = build_tiny_tokenizer()
    assert tok.model_max_length == 77
    ids = tok("gender equality, a photo of the face of a doctor").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "gender</w>", "equality</w>", ",</w>", "a</w>", "photo</w>", "of</w>", "the</w>",
        "face</w>", "of</w>", "a</w>", "doctor</w>", "<|endoftext|>",
    ]
    # unknown words and any script still tokenize (byte fallback), and padding uses the end token like SD's
    assert len(tok("Zürich 東京 🙂").input_ids) > 3
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == tok.eos_token_id


def test_tiny_pipeline_is_deterministic_and_generates_32px_images():
    a, b = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0)
    assert pipeline_fingerprint(a) == pipeline_fingerprint(b)
    assert pipeline_fingerprint(a) != pipeline_fingerprint(build_tiny_pipeline(seed=1))
    out = a(prompt=["a doctor"], generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="pil")
    assert out.images[0].size == (32, 32)
    assert a.text_encoder.config.eos_token_id == a.tokenizer.eos_token_id  # pooling picks the real end token


def test_tiny_pipeline_round_trips_through_save_pretrained(tmp_path):
    pipe = build_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = load_pipeline(str(tmp_path / "model"))
    assert pipeline_fingerprint(loaded) == pipeline_fingerprint(pipe)


def test_a_folder_stored_in_fp16_loads_in_float32_unless_a_dtype_is_asked(tmp_path):
    """SD weights are usually shared in fp16; loaded as stored, the CPU path (float32 latents, no cast) failed with
    'mat1 and mat2 must have the same dtype'. The folder loads in float32 and runs; a dtype asked for is honoured."""
    pipe = build_tiny_pipeline()
    pipe.to(dtype=torch.float16).save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = load_pipeline(str(tmp_path / "model"))
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(loaded, name).dtype == torch.float32, name
    out = loaded(prompt=["a doctor"], generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                 output_type="pil")
    assert out.images[0].size == (32, 32)
    half = load_pipeline(str(tmp_path / "model"), dtype="float16")
    assert half.unet.dtype == torch.float16
    # The dataset's generator hash and training's check name the same model whatever dtype generation ran in:
    # a cast pipeline is fingerprinted as `load_pipeline(source)` gives it (float32).
    assert pipeline_fingerprint(half) != pipeline_fingerprint(loaded)
    assert base_model_fingerprint(half, str(tmp_path / "model")) == pipeline_fingerprint(loaded)
    assert base_model_fingerprint(loaded, "not-loaded-again") == pipeline_fingerprint(loaded)


def test_load_pipeline_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="model_index.json"):
        load_pipeline(str(tmp_path))
    with pytest.raises(ConfigError, match="neither a preset"):
        load_pipeline("no-such-preset")
    # ... and before anything loads: the door's check of a run's model refuses a missing folder and a typo.
    from livo.presets import check_model_settings

    for source in (str(tmp_path / "missing"), "./runs/six-base", "no-such-preset"):
        with pytest.raises(ConfigError, match="neither a preset"):
            check_model_settings(source, resolution=32)


def test_preset_configs_load_and_unknown_ones_fail():
    tiny = load_preset_config("tiny")
    assert tiny.model.source == "tiny" and tiny.generation.resolution == 32
    sd15 = load_preset_config("sd15")
    assert (sd15.generation.num_inference_steps, sd15.generation.guidance_scale) == (25, 7.5)  # paper protocol
    assert load_preset_config("tiny", ["generation.num_inference_steps=2"]).generation.num_inference_steps == 2
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset_config("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        load_preset_config("tiny", ["generation.stepz=2"])


def test_schedulers_never_clip_samples():
    assert make_scheduler("ddim").config.clip_sample is False
    assert make_scheduler("dpmsolver++").config.algorithm_type == "dpmsolver++"
    with pytest.raises(ConfigError):
        make_scheduler("euler-magic")


@pytest.mark.parametrize("name", ["toy", "toy-six"])
def test_toy_presets_split_their_prompts_by_what_the_preference_data_shows(name):
    """A prompt is `seen` exactly when its subject is in the principle's preference data (issue 15): the toy shows the
    doctor and the nurse, toy-six also the pilot and the dancer; the engineer and the teacher stay unseen in both. And
    each split holds both stereotypes, so a token that debiases one stereotype only cannot pass a split's ceiling."""
    from livo.principles import load_principles
    from livo.toy import world

    preset = load_preset_config(name)
    principles = {p.id: p for p in load_principles(preset.principles_path()).principles}
    for pid, prompts in preset.evaluate["prompts"].items():
        shown = {s for group in principles[pid].generation.subjects.values() for s in group}
        assert {p["subject"] for p in prompts if p["split"] == "unseen"} == {"engineer", "teacher"}, pid
        for prompt in prompts:
            assert world.parse_caption(prompt["text"])["subject"] == prompt["subject"], prompt
            assert (prompt["split"] == "seen") == (prompt["subject"] in shown), (pid, prompt)
        for split in ("seen", "unseen"):
            stereotypes = {world.STEREOTYPE[p["subject"]] for p in prompts if p["split"] == split}
            assert stereotypes == {"orange", "blue"}, (pid, split)
    assert len(shown) == (2 if name == "toy" else 4)
