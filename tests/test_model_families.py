"""Base-model families (issue 18): which diffusers class loads a source, what `model_facts` reads without loading
weights, the checks at the door, the SDXL VAE's fp32 encode, and the SDXL-size random model's parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from livo.errors import ConfigError
from livo.presets import (
    SD21_HUB_ID,
    SDXL_HUB_ID,
    ModelFacts,
    check_model_settings,
    load_pipeline,
    load_preset_config,
    model_facts,
    pipeline_fingerprint,
)


@pytest.fixture(scope="module")
def toy_sdxl_folder(tmp_path_factory):
    pipe = load_pipeline("toy-sdxl")
    folder = tmp_path_factory.mktemp("toy-sdxl") / "model"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder, pipeline_fingerprint(pipe)


def test_a_saved_sdxl_folder_loads_as_an_sdxl_pipeline_with_the_same_weights(toy_sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    folder, fingerprint = toy_sdxl_folder
    loaded = load_pipeline(str(folder))
    assert type(loaded) is StableDiffusionXLPipeline
    assert pipeline_fingerprint(loaded) == fingerprint  # text_encoder_2 included
    assert model_facts(str(folder)) == ModelFacts("sdxl", 4)


def test_named_models_follow_their_environment_variable(toy_sdxl_folder, monkeypatch):
    folder, fingerprint = toy_sdxl_folder
    monkeypatch.delenv("LIVO_SDXL_PATH", raising=False)
    assert model_facts("sdxl") == ModelFacts("sdxl", 8)  # the hub id, known without fetching anything
    assert model_facts("sd21") == model_facts(SD21_HUB_ID) == ModelFacts("sd", 8)
    assert model_facts(SDXL_HUB_ID) == ModelFacts("sdxl", 8)
    assert model_facts("someone/unknown-model") == ModelFacts()  # known only once loaded
    monkeypatch.setenv("LIVO_SDXL_PATH", str(folder))
    assert model_facts("sdxl") == ModelFacts("sdxl", 4)
    assert pipeline_fingerprint(load_pipeline("sdxl")) == fingerprint


def test_built_in_sources_facts_match_the_models_they_build():
    from livo.presets import vae_scale_factor

    for source in ("tiny", "toy", "toy-sdxl"):
        pipe = load_pipeline(source)
        facts = model_facts(source)
        assert facts.vae_scale_factor == vae_scale_factor(pipe.vae)
        assert facts.family == ("sdxl" if hasattr(pipe, "text_encoder_2") else "sd")


def test_a_pipeline_class_livo_does_not_align_is_refused_before_loading(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    for call in (lambda: load_pipeline(str(folder)), lambda: model_facts(str(folder))):
        with pytest.raises(ConfigError, match="is a FluxPipeline; livo aligns StableDiffusionPipeline and "
                                              "StableDiffusionXLPipeline"):
            call()


def test_the_door_refuses_a_resolution_the_vae_cannot_encode_and_distillation_on_sdxl():
    with pytest.raises(ConfigError, match=r"resolution=1020 is not a multiple of 8, the VAE factor of sdxl .* use "
                                          r"1016 or 1024"):
        check_model_settings("sdxl", resolution=1020)
    with pytest.raises(ConfigError, match=r"multiple of 4, .*; use 4$"):
        check_model_settings("toy-sdxl", resolution=2)
    with pytest.raises(ConfigError, match="distill_weight is not supported on SDXL"):
        check_model_settings("toy-sdxl", sd_only=["loss.distill_weight"])
    assert check_model_settings("sdxl", resolution=1024) == ModelFacts("sdxl", 8)
    assert check_model_settings("toy", resolution=32, sd_only=["loss.distill_weight"]).family == "sd"
    check_model_settings("someone/unknown-model", resolution=1001)  # unknown: checked once loaded


def test_sdxl_and_sd21_presets_follow_their_model_cards():
    sdxl = load_preset_config("sdxl")
    assert (sdxl.model.source, sdxl.generation.resolution) == ("sdxl", 1024)
    assert (sdxl.generation.scheduler, sdxl.generation.num_inference_steps, sdxl.generation.guidance_scale) == (
        "as-is", 50, 5.0)  # StableDiffusionXLPipeline's defaults on the repository's Euler scheduler
    assert sdxl.train["resolution"] == 1024 and sdxl.train["gradient_checkpointing"] is True
    sd21 = load_preset_config("sd21")
    assert (sd21.model.source, sd21.generation.resolution, sd21.generation.guidance_scale) == ("sd21", 768, 7.5)
    for preset in (sdxl, sd21):
        assert preset.evaluate["gates"]["max_bias"] == 40  # gated on every principle, like sd15


def test_the_sdxl_vae_encodes_in_fp32_and_goes_back_to_fp16():
    from livo.data.generate import vae_upcast_for_sdxl

    sdxl = load_pipeline("toy-sdxl", dtype="float16")
    assert sdxl.vae.config.force_upcast
    with vae_upcast_for_sdxl(sdxl):
        assert sdxl.vae.dtype == torch.float32
    assert sdxl.vae.dtype == torch.float16
    sd = load_pipeline("toy", dtype="float16")  # the SD family keeps its VAE as it is (its path stays bit-identical)
    with vae_upcast_for_sdxl(sd):
        assert sd.vae.dtype == torch.float16


def test_sdxl_random_has_sdxl_base_sizes():
    """Parameter counts of stabilityai/stable-diffusion-xl-base-1.0 (UNet, both text towers, VAE), built on the meta
    device (no memory): `benchmarks/train_step.py --preset sdxl-random` times the real sizes on a GPU."""
    from livo.presets import build_sdxl_random_pipeline

    with torch.device("meta"):
        pipe = build_sdxl_random_pipeline()
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
              for name in ("unet", "text_encoder", "text_encoder_2", "vae")}
    assert counts == {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                      "vae": 83_653_863}
    assert model_facts("sdxl-random") == ModelFacts("sdxl", 8)


def test_random_presets_are_built_where_they_run():
    """`load_pipeline("sd15-random", device=...)` initialises the weights on that device (a GPU lease should not pay
    for a host-side initialisation and copy), while the sampler's tables stay on the CPU as diffusers keeps them.
    The meta device stands in for the GPU here; the counts are SD v1.5's."""
    from livo.presets import load_pipeline

    pipe = load_pipeline("sd15-random", device="meta")
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    assert {p.device.type for name in ("unet", "text_encoder", "vae") for p in getattr(pipe, name).parameters()} == {
        "meta"}
    assert pipe.scheduler.sigmas.device.type == "cpu"
