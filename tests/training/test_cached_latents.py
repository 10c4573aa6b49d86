"""The cached training path (the VAE posteriors and prompt embeddings `livo generate` stores) against the pixel path
(encode the stored images every step): same seed → same latent sample and the same loss, with and without mirroring,
and the cases where the trainer must fall back to the pixels (issue 17, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from livo.data.dataset import load_preference_dataset
from livo.training.data import BackgroundIterable, PairBatches, PairSchedule


def _batches(dataset_path: str, *, use_latents: bool, random_flip: bool = False, per_device: int = 6):
    dataset = load_preference_dataset(dataset_path)
    schedule = PairSchedule.build(dataset.scenes, len(dataset), seed=0, per_device=per_device, accumulation=1,
                                  world_size=1, random_flip=random_flip)
    return PairBatches(dataset.rows, schedule, 0, use_latents=use_latents, use_prompt_embeds=use_latents,
                       resolution=32)


@pytest.fixture(scope="module")
def tiny_models():
    import torch
    from diffusers import DDPMScheduler

    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline
    from livo.training.trainer import Models

    pipe = build_tiny_pipeline(0)
    encoder = ValueEncoder.from_text_encoder(pipe.text_encoder)
    with torch.no_grad():  # a value encoder that differs from the base encoder, so θ and r differ
        for p in encoder.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return Models(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                  noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), value_encoder=encoder,
                  device=torch.device("cpu"), weight_dtype=torch.float32, base_fingerprint="")


def test_flips_are_one_coin_per_pair_deterministic_and_fair():
    schedule = PairSchedule.build({"a": range(10)}, 10, seed=3, per_device=4, accumulation=1, world_size=1,
                                  random_flip=True)
    flips = [schedule.flip_at(p) for p in range(2000)]
    assert flips == [schedule.flip_at(p) for p in range(2000)]  # a pure function of (seed, position)
    assert 0.45 < np.mean(flips) < 0.55
    assert schedule.flips(2, 0, 0) == flips[8:12]
    off = PairSchedule.build({"a": range(10)}, 10, seed=3, per_device=4, accumulation=1, world_size=1)
    assert not any(off.flip_at(p) for p in range(200))


@pytest.mark.parametrize("random_flip", [False, True])
def test_cached_and_pixel_paths_sample_the_same_latents(image_dataset, latent_dataset, tiny_models, random_flip):
    """The same rows, flips and generator state give the same posterior sample from the stored posteriors as from
    encoding the PNGs (to float16 storage precision), aligned and violating alike."""
    import torch

    from livo.training.trainer import encode_latents, sample_latents

    vae = tiny_models.vae
    for micro in range(3):
        cached = _batches(latent_dataset, use_latents=True, random_flip=random_flip)[micro]
        pixels = _batches(image_dataset, use_latents=False, random_flip=random_flip)[micro]
        assert cached["aligned_rows"] == pixels["aligned_rows"] and cached["flipped"] == pixels["flipped"]
        assert any(cached["flipped"]) == random_flip or micro  # mirrored pairs occur when the recipe flips
        for side in ("w", "l"):
            from_cache = sample_latents(vae, cached[f"latent_dist_{side}"], torch.Generator().manual_seed(micro))
            from_pixels = encode_latents(vae, pixels[f"pixels_{side}"], torch.Generator().manual_seed(micro))
            scale = float(from_pixels.abs().max())
            assert torch.allclose(from_cache, from_pixels, atol=2e-3 * scale), (micro, side)
            # a sample, not the mean: another generator state gives another latent
            other = sample_latents(vae, cached[f"latent_dist_{side}"], torch.Generator().manual_seed(99))
            assert not torch.allclose(other, from_cache, atol=1e-4)


def test_cached_and_pixel_paths_give_the_same_loss_distribution(image_dataset, latent_dataset, tiny_models):
    """step_loss on the cached batch and on the pixel batch, 24 draws of (latent sample, noise, timestep) each from
    the same seeds: every loss and every denoising error agrees, so the two distributions are one."""
    import torch

    from livo.training.config import LossConfig
    from livo.training.trainer import step_loss

    cached = _batches(latent_dataset, use_latents=True, random_flip=True)[1]
    pixels = _batches(image_dataset, use_latents=False, random_flip=True)[1]
    losses = {"cached": [], "pixels": []}
    errors = {"cached": [], "pixels": []}
    with torch.no_grad():
        for seed in range(24):
            for name, batch in (("cached", cached), ("pixels", pixels)):
                loss, stats = step_loss(tiny_models, tiny_models.value_encoder, batch,
                                        torch.Generator().manual_seed(seed), LossConfig())
                losses[name].append(float(loss))
                errors[name].append(stats[1:5].numpy())  # θw, rw, θl, rl
    np.testing.assert_allclose(np.array(errors["cached"]), np.array(errors["pixels"]), rtol=2e-3)
    np.testing.assert_allclose(losses["cached"], losses["pixels"], rtol=0.02, atol=0.02)
    assert np.std(losses["cached"]) > 0.01  # the draws differ: a distribution, not one value
    assert np.mean(losses["cached"]) == pytest.approx(np.mean(losses["pixels"]), rel=5e-3)


def test_trainer_falls_back_to_the_pixels_when_the_cache_does_not_fit(tmp_path, latent_dataset, single_rank_env):
    """Legacy mean-only latents, a recipe that flips without mirrored posteriors, another resolution: the images are
    encoded instead (what the recipe does); prompt embeddings are still used."""
    from training_helpers import PRINCIPLE_SET_HASH, preference_rows, tiny_config

    from livo.data.dataset import write_rows_dataset
    from livo.presets import build_tiny_pipeline, pipeline_fingerprint
    from livo.training.trainer import Trainer, load_models

    pipe = build_tiny_pipeline(0)
    source = load_preference_dataset(latent_dataset).rows.with_format("numpy")
    legacy, unflipped = [], []
    for index, row in enumerate(preference_rows()):
        arrays = source[index]
        embeds = arrays["prompt_embeds"]
        legacy.append({**row, "aligned_latents": arrays["aligned_latent_dist"][:4],
                       "violating_latents": arrays["violating_latent_dist"][:4], "prompt_embeds": embeds})
        unflipped.append({**row, "aligned_latent_dist": arrays["aligned_latent_dist"],
                          "violating_latent_dist": arrays["violating_latent_dist"], "prompt_embeds": embeds})
    paths = {}
    for name, rows in (("legacy", legacy), ("unflipped", unflipped)):
        paths[name] = write_rows_dataset(rows, tmp_path / name, principle_set_hash=PRINCIPLE_SET_HASH,
                                         generator_model_hash=pipeline_fingerprint(pipe))

    def decision(dataset: str, **overrides) -> tuple[bool, bool]:
        config = tiny_config(dataset, tmp_path / "run", **overrides)
        trainer = Trainer(config)
        trainer.dataset = load_preference_dataset(dataset)
        trainer.models = load_models(config, "cpu", "fp32", 0)
        return trainer._precomputed_columns()

    assert decision(latent_dataset) == (True, True)
    assert decision(latent_dataset, random_flip=True) == (True, True)  # it has the mirrored posteriors
    assert decision(paths["legacy"]) == (False, True)
    assert decision(paths["unflipped"]) == (True, True)
    assert decision(paths["unflipped"], random_flip=True) == (False, True)
    assert decision(latent_dataset, resolution=64) == (False, True)
    assert decision(latent_dataset, use_precomputed=False) == (False, False)
    # a dataset another base model generated (the tiny preset at another seed is other weights): refused, exit 2, before
    # the first step; with allow_other_base_dataset its images are used and its stored latents are not
    from livo.errors import InvalidDataError
    from livo.training.trainer import check_dataset_generator

    other = tiny_config(latent_dataset, tmp_path / "run", seed=1)
    other_fingerprint = pipeline_fingerprint(build_tiny_pipeline(1))
    with pytest.raises(InvalidDataError, match="generated by another base model .* allow_other_base_dataset=true"):
        check_dataset_generator(other, load_preference_dataset(latent_dataset), other_fingerprint)
    check_dataset_generator(other.model_copy(update={"allow_other_base_dataset": True}),
                            load_preference_dataset(latent_dataset), other_fingerprint)
    assert decision(latent_dataset, seed=1, allow_other_base_dataset=True) == (False, False)
    imported = write_rows_dataset(preference_rows(), tmp_path / "imported", principle_set_hash=PRINCIPLE_SET_HASH)
    check_dataset_generator(other, load_preference_dataset(imported), other_fingerprint)  # no generator hash: accepted


def test_background_iterable_keeps_order_raises_and_stops():
    import threading
    import time

    assert list(BackgroundIterable(range(50), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("row 7 does not decode")

    iterator = iter(BackgroundIterable(broken()))
    assert next(iterator) == 1
    with pytest.raises(ValueError, match="row 7"):
        next(iterator)

    produced = []

    def endless():
        for n in range(10**6):
            produced.append(n)
            yield n

    iterator = iter(BackgroundIterable(endless(), depth=2))
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()  # what the trainer does when its loop ends, preempted or not
    # closed means stopped, not "will stop": a daemon thread left inside a torch kernel at interpreter exit aborts
    # the process (a preempted run exited -6 instead of 143)
    assert not any(t.name == "livo-batches" and t.is_alive() for t in threading.enumerate())

    def slow():
        yield 0
        time.sleep(0.3)  # the item in hand when the consumer closes: close waits for it
        yield 1

    iterator = iter(BackgroundIterable(slow(), depth=1))
    assert next(iterator) == 0
    started = time.perf_counter()
    iterator.close()
    assert not any(t.name == "livo-batches" and t.is_alive() for t in threading.enumerate())
    assert time.perf_counter() - started < 5
    time.sleep(0.5)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 6  # at most `depth` ahead, then stopped
    assert not any(t.name == "livo-batches" and t.is_alive() for t in threading.enumerate())


@pytest.mark.slow
def test_training_with_random_flip_reads_the_mirrored_posteriors(tmp_path, latent_dataset, single_rank_env):
    from training_helpers import run_in_process, tiny_config

    config = tiny_config(latent_dataset, tmp_path / "run", max_steps=2, per_device_batch_size=4, random_flip=True,
                         checkpoint={"every_steps": 2})
    assert config.fingerprint() != tiny_config(latent_dataset, tmp_path / "run").fingerprint()
    trainer = run_in_process(config)
    assert trainer.result.exit_code == 0 and trainer._precomputed_columns() == (True, True)
    batches = trainer._batches()
    assert any(any(batches[m]["flipped"]) for m in range(2)) and 0 < trainer.result.metrics["loss"] < 10
