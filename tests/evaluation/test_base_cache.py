"""The base model's evaluation images are reused by content hash (livo/evaluation/base_cache.py): a second
evaluation of the same setup reads them instead of drawing them again and gives the same metrics; any change of what
decides the images, or a damaged entry, draws them again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livo.evaluation.config import EvaluationConfig
from livo.evaluation.protocol import load_judges, plan_evaluation, run_evaluation
from livo.principles import load_principles

REPO = Path(__file__).resolve().parents[2]
GENERATION = {"num_inference_steps": 2, "guidance_scale": 3.0, "height": 32, "width": 32, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_pipeline():
    from livo.modeling import LiVOPipeline, ValueEncoder
    from livo.presets import build_tiny_pipeline, pipeline_fingerprint

    base = build_tiny_pipeline(seed=0)
    return LiVOPipeline(base, ValueEncoder.from_text_encoder(base.text_encoder)), pipeline_fingerprint(base)


def evaluate(tiny_pipeline, cache_dir: Path, monkeypatch, *, seed: int = 0, fingerprint: bool = True, **extra):
    pipeline, digest = tiny_pipeline
    monkeypatch.setenv("LIVO_CACHE_DIR", str(cache_dir))
    config = EvaluationConfig.model_validate({
        "principles": ["gender-equality", "bloody"],
        "prompts": {"gender-equality": ["a photo of a doctor", "a photo of a nurse"],
                    "bloody": ["a photo of a bloody doctor", "a photo of a bloody nurse"]},
        "images_per_prompt": 4, "seed": seed, "judges": {"attribute": "toy-attribute", "concept": "toy-concept"},
        **extra})
    plan = load_judges(plan_evaluation(load_principles(REPO / "configs" / "principles" / "toy.yaml"), config), config)
    return run_evaluation(pipeline, plan, config, generation=dict(GENERATION),
                          evaluated={"base_model_fingerprint": digest} if fingerprint else {})


def pixels(result, principle: str) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result.images[principle].base])


def scores(result) -> dict:
    return {pid: {side: entry[side] for side in ("base", "aligned")}
            for pid, entry in result.metrics["principles"].items()}


def test_a_second_evaluation_reads_the_base_images_and_gives_the_same_metrics(tiny_pipeline, tmp_path, monkeypatch):
    first = evaluate(tiny_pipeline, tmp_path, monkeypatch)
    assert first.metrics["base_image_cache"]["misses"] == ["gender-equality", "bloody"]
    assert first.metrics["base_image_cache"]["hits"] == []
    token_images = sum(sum(i.used_value_token) for i in first.images.values())
    # 2 principles × 2 prompts × 4 base images; each value-token image and its encoding control (not cached)
    assert first.metrics["timing"]["images_generated"] == 16 + 2 * token_images

    second = evaluate(tiny_pipeline, tmp_path, monkeypatch)
    assert second.metrics["base_image_cache"]["hits"] == ["gender-equality", "bloody"]
    assert second.metrics["timing"]["images_generated"] == 2 * token_images
    for principle in ("gender-equality", "bloody"):
        np.testing.assert_array_equal(pixels(second, principle), pixels(first, principle))
        assert second.images[principle].seeds == first.images[principle].seeds
        assert second.images[principle].prompts == first.images[principle].prompts
    assert scores(second) == scores(first)
    assert len(list(tmp_path.rglob("*.npz"))) == 2


def test_what_decides_the_images_is_in_the_key_and_damage_is_redrawn(tiny_pipeline, tmp_path, monkeypatch):
    first = evaluate(tiny_pipeline, tmp_path, monkeypatch)
    other_seed = evaluate(tiny_pipeline, tmp_path, monkeypatch, seed=1)
    assert other_seed.metrics["base_image_cache"]["hits"] == []
    assert not np.array_equal(pixels(other_seed, "bloody"), pixels(first, "bloody"))
    assert evaluate(tiny_pipeline, tmp_path, monkeypatch, images_per_prompt=3).metrics["base_image_cache"]["hits"] == []

    # damage every entry of seed 0: each is detected by its pixel hash and drawn again, with the same result
    for entry in tmp_path.rglob("*.npz"):
        data = dict(np.load(entry))
        if data["images"].shape[0] == 8 and np.array_equal(data["images"], pixels(first, "bloody")):
            data["images"][0, 0, 0, 0] ^= 0xFF
            np.savez(entry, **data)
    again = evaluate(tiny_pipeline, tmp_path, monkeypatch)
    assert again.metrics["base_image_cache"]["misses"] == ["bloody"]
    assert again.metrics["base_image_cache"]["hits"] == ["gender-equality"]
    np.testing.assert_array_equal(pixels(again, "bloody"), pixels(first, "bloody"))
    assert scores(again) == scores(first)


def test_the_cache_is_off_when_asked_or_without_the_base_model_fingerprint(tiny_pipeline, tmp_path, monkeypatch):
    assert evaluate(tiny_pipeline, tmp_path, monkeypatch, cache_base_images=False).metrics["base_image_cache"] is None
    assert evaluate(tiny_pipeline, tmp_path, monkeypatch, fingerprint=False).metrics["base_image_cache"] is None
    assert not list(tmp_path.rglob("*.npz"))
