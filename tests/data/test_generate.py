"""The generator on the tiny preset: end to end, determinism, resume after a crash, bad input, the object store.

The tiny model's images are noise, so these tests run with `judging.accept_all=true` (judges still score every
image and the scores are stored); the recipe decisions themselves are tested on given scores in test_recipes.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from livo.data.dataset import MANIFEST_FILE, load_preference_dataset, verify_dataset
from livo.data.generate import (
    build_generate_config,
    load_generation_pipeline,
    prepare_generation,
    resolve_settings,
    run_generation,
)
from livo.data.recipes import derive_seed
from livo.errors import ConfigError, DataError, JudgeUnavailable, StoreError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = [
    f"principles_file={FIXTURES / 'principles_colour.yaml'}",
    "judging.attribute=toy-attribute",
    "judging.concept=toy-concept",
    "judging.accept_all=true",
    "candidates_per_scene=2",
    "num_inference_steps=2",
    "batch_size=4",
    "max_prompts_per_principle=null",  # every fixture prompt, whatever the tiny preset's own cap
]


def tiny_config(*overrides: str):
    return build_generate_config(overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def tiny_pipe():
    return load_generation_pipeline(resolve_settings(tiny_config()), "cpu")


def test_tiny_end_to_end_with_precomputed_arrays(tmp_path, tiny_pipe):
    # posteriors and prompt embeddings are stored by default; the mirrored posteriors on request
    config = tiny_config("num_shards=2", "precompute_flipped_latents=true", "principles=[colour-equality]")
    assert config.precompute_latents and config.precompute_prompt_embeds
    summary = run_generation(prepare_generation(config, out=tmp_path / "ds"), pipe=tiny_pipe, progress=False)
    assert summary.shards_generated == [0, 1] and summary.images_generated == 12  # 3 scenes × (2 + 2)
    # Where the wall time went, on the main thread: disjoint intervals, so they add up to at most the wall time (the
    # judges' own seconds are the helper thread's and overlap generation). Storing the arrays takes measurable time.
    main_thread = (summary.generation_seconds, summary.judge_wait_seconds, summary.precompute_seconds,
                   summary.encode_wait_seconds, summary.write_seconds)
    assert min(main_thread) >= 0 and summary.precompute_seconds > 0
    assert sum(main_thread) <= summary.wall_seconds
    assert {"judge_wait_seconds", "precompute_seconds", "encode_wait_seconds"} <= summary.as_dict().keys()
    ds = load_preference_dataset(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert len(ds) == 6 and ds.manifest["counts"]["by_principle"] == {"colour-equality": 6}
    assert set(ds.scenes) == {"colour-equality/career/a-photo-of-a-doctor", "colour-equality/career/a-photo-of-a-nurse",
                              "colour-equality/career/a-photo-of-an-engineer"}
    assert ds.manifest["judge_ids"] == {"attribute": "toy-attribute@1"}
    assert ds.manifest["generator_model_hash"].startswith("sha256:")
    assert ds.manifest["stats"]["violating_candidates"] == 6 and ds.manifest["stats"]["pairs"] == 6
    row = ds[ds.scenes["colour-equality/career/a-photo-of-a-nurse"][0]]
    assert row["aligned_image"].size == (32, 32) and row["violating_prompt"] == "a photo of a nurse"
    assert row["aligned_prompt"] in ("a photo of an orange nurse", "a photo of a blue nurse")
    assert row["violating_seed"] == derive_seed(0, row["scene"], "violating", 0)
    scores = json.loads(row["judge_scores"])
    assert scores["target_class"] in row["aligned_prompt"] and scores["majority_class"] != scores["target_class"]
    assert abs(sum(scores["aligned"]["probs"].values()) - 1.0) < 1e-3
    arrays = ds.rows.with_format("numpy")[0]
    assert arrays["aligned_latent_dist"].shape == (8, 16, 16) and arrays["prompt_embeds"].shape == (77, 32)
    assert arrays["violating_latent_dist_flipped"].shape == (8, 16, 16) and "aligned_latents" not in arrays
    assert np.isfinite(arrays["violating_latent_dist"]).all()
    assert ds.manifest["latent_dist_shape"] == [8, 16, 16] and ds.has_latent_dists and ds.has_flipped_latent_dists
    # The stored posteriors are the VAE's posterior of the stored image and of its mirror image (what training would
    # compute itself from the PNG), to float16 precision.
    import torch

    pixels = torch.from_numpy(np.asarray(row["aligned_image"], dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    stored = ds.rows.with_format("numpy")[ds.scenes["colour-equality/career/a-photo-of-a-nurse"][0]]
    with torch.no_grad():
        for column, image in (("aligned_latent_dist", pixels), ("aligned_latent_dist_flipped", pixels.flip(-1))):
            expected = tiny_pipe.vae.encode(image).latent_dist.parameters[0].numpy()
            assert np.allclose(stored[column], expected, atol=2e-3, rtol=2e-3), column
    assert not np.allclose(stored["aligned_latent_dist"], stored["aligned_latent_dist_flipped"], atol=1e-2)


def test_flipped_posteriors_need_the_posteriors():
    with pytest.raises(ConfigError, match="precompute_flipped_latents=true needs precompute_latents=true"):
        tiny_config("precompute_latents=false", "precompute_flipped_latents=true")


class _Crash(RuntimeError):
    pass


def test_crash_then_resume_gives_the_uninterrupted_manifest(tmp_path, tiny_pipe):
    config = tiny_config("num_shards=3", "candidates_per_scene=1", "principles=[colour-equality]")
    whole = run_generation(prepare_generation(config, out=tmp_path / "whole"), pipe=tiny_pipe, progress=False)
    assert whole.shards_generated == [0, 1, 2] and whole.manifest is not None

    def crash_after_first_shard(index: int) -> None:
        if index == 0:
            raise _Crash("killed")

    with pytest.raises(_Crash):
        run_generation(prepare_generation(config, out=tmp_path / "resumed"), pipe=tiny_pipe, progress=False,
                       on_shard_written=crash_after_first_shard)
    resumed_dir = tmp_path / "resumed"
    assert not (resumed_dir / MANIFEST_FILE).exists()
    with pytest.raises(DataError, match="no manifest.json"):
        load_preference_dataset(resumed_dir)
    # A shard killed while uploading: data without its commit object. It must be regenerated, not merged.
    partial = resumed_dir / "shard-00001-of-00003"
    partial.mkdir()
    (partial / "data.parquet").write_bytes(b"PAR1 half-written")

    resumed = run_generation(prepare_generation(config, out=resumed_dir), pipe=tiny_pipe, progress=False)
    assert resumed.shards_skipped == [0] and resumed.shards_generated == [1, 2]
    assert (resumed_dir / MANIFEST_FILE).read_bytes() == (tmp_path / "whole" / MANIFEST_FILE).read_bytes()

    # A corrupted committed shard is found by its hash and regenerated on the next run.
    shard = resumed_dir / "shard-00002-of-00003" / "data.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match="corrupted"):
        verify_dataset(resumed_dir)
    again = run_generation(prepare_generation(config, out=resumed_dir), pipe=tiny_pipe, progress=False)
    assert again.shards_generated == [2] and again.shards_skipped == [0, 1]
    assert (resumed_dir / MANIFEST_FILE).read_bytes() == (tmp_path / "whole" / MANIFEST_FILE).read_bytes()

    # Same config, another seed: another dataset (different images, different shard hashes).
    other = run_generation(prepare_generation(config.model_copy(update={"seed": 1}), out=tmp_path / "seed1"),
                           pipe=tiny_pipe, progress=False)
    assert {s["sha256"] for s in other.manifest["shards"]}.isdisjoint(s["sha256"] for s in whole.manifest["shards"])


def test_bad_input_fails_before_any_image(tmp_path, monkeypatch):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="unknown principle id 'no-such-principle'"):
        prepare_generation(tiny_config("principles=[no-such-principle]"), out=out)
    with pytest.raises(ConfigError, match="prompt list for principle 'bloody' is empty"):
        prepare_generation(tiny_config("prompts={bloody: []}"), out=out)
    with pytest.raises(ConfigError, match="no concept judge configured"):
        prepare_generation(tiny_config("judging.concept=null", "principles=[bloody]"), out=out)
    with pytest.raises(ConfigError, match="toy-attribute judge: unknown class"):  # judge probed with the classes
        prepare_generation(tiny_config(f"principles_file={Path('configs/principles/default.yaml').resolve()}",
                                       "principles=[gender-equality]"), out=out)
    with pytest.raises(JudgeUnavailable):
        prepare_generation(tiny_config("judging.attribute=clip-zero-shot",
                                       "judging.options={clip-zero-shot: {model: /nonexistent/clip}}"), out=out)
    assert not out.exists()
    monkeypatch.setenv("LIVO_S3_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("LIVO_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("LIVO_S3_SECRET_KEY", "s")
    monkeypatch.setenv("LIVO_S3_BUCKET", "some-bucket")
    with pytest.raises(StoreError, match="refused the connection"):
        prepare_generation(tiny_config(), out="s3://some-bucket/datasets/x")


def test_auto_labels_a_plain_prompt_list_with_the_retriever(tmp_path, tiny_pipe):
    """principles=[auto]: the retriever labels each prompt (the paper's data pipeline); the labels, their stages and
    calibrated confidences go into the manifest, and unlabelled prompts are left out and counted."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a bloody chef\na photo of a nurse\na sunset over the sea\n", encoding="utf-8")
    config = tiny_config(f"prompts_file={prompts}", "principles=[auto]")
    plan = prepare_generation(config, out=tmp_path / "ds")
    assert {s.principle_id: s.prompt for s in plan.scenes} == {"colour-equality": "a photo of a nurse",
                                                               "bloody": "a photo of a bloody chef"}
    labels = {label["prompt"]: label for label in plan.labels["prompts"]}
    assert labels["a photo of a bloody chef"]["stage"] == "keyword"
    assert labels["a photo of a nurse"]["stage"] == "person-lexicon"
    assert labels["a sunset over the sea"]["principle"] is None
    assert plan.labels["counts"] == {"bloody": 1, "colour-equality": 1, "none": 1}
    assert plan.labels["left_out"]["no principle"] == 1
    keyword_confidence = plan.labels["retriever"]["calibration"]["keyword"]
    assert labels["a photo of a bloody chef"]["confidence"] == keyword_confidence
    run_generation(plan, pipe=tiny_pipe, progress=False)
    manifest = json.loads((tmp_path / "ds" / MANIFEST_FILE).read_text())
    assert manifest["config"]["labels"] == plan.labels
    assert manifest["counts"]["by_principle"] == {"bloody": 2, "colour-equality": 2}
    # a floor above every confidence leaves nothing to generate: refused before any image
    with pytest.raises(ConfigError, match="none of the 3 prompts got a principle"):
        prepare_generation(tiny_config(f"prompts_file={prompts}", "principles=[auto]",
                                       "retrieval.min_confidence=0.99"), out=tmp_path / "never")
    with pytest.raises(ConfigError, match="give no other principle id"):
        prepare_generation(tiny_config(f"prompts_file={prompts}", "principles=[auto, bloody]"), out=tmp_path / "x")
    assert not (tmp_path / "never").exists()
    # retrieval options at their default stay out of the plan, so datasets planned before they existed keep their ids
    by_hand = prepare_generation(tiny_config("principles=[bloody]"), out=tmp_path / "y")
    written_out = prepare_generation(tiny_config("principles=[bloody]", "retrieval.min_confidence=0.0"),
                                     out=tmp_path / "y")
    floored = prepare_generation(tiny_config("principles=[bloody]", "retrieval.min_confidence=0.5"), out=tmp_path / "y")
    assert by_hand.labels is None and by_hand.plan_key == written_out.plan_key != floored.plan_key


@pytest.mark.store
def test_tiny_into_the_object_store(store, tmp_path, tiny_pipe):
    uri = store.uri("datasets/tiny/e2e")
    summary = run_generation(prepare_generation(tiny_config("num_shards=2"), out=uri, store=store), pipe=tiny_pipe,
                             progress=False)
    assert summary.manifest is not None and summary.rows == 10  # 5 scenes × 2 pairs
    # a shard task (no merge) reports the rows it wrote, not 0
    again = prepare_generation(tiny_config("num_shards=2"), out=store.uri("datasets/tiny/shard-only"), store=store)
    shard = run_generation(again, shard_indices=[0], merge=False, pipe=tiny_pipe, progress=False)
    assert shard.manifest is None and 0 < shard.rows < 10
    assert store.exists("datasets/tiny/e2e/manifest.json")
    assert sorted(k.rsplit("/", 1)[1] for k in store.list("datasets/tiny/e2e")) == [
        "data.parquet", "data.parquet", "manifest.json", "shard.json", "shard.json"]
    ds = load_preference_dataset(uri, store=store, cache_dir=tmp_path / "cache")
    assert len(ds) == 10 and ds.manifest["counts"]["by_principle"] == {"bloody": 4, "colour-equality": 6}
    toxic = ds[ds.scenes["bloody/bloody/a-photo-of-a-bloody-chef"][0]]
    assert toxic["aligned_prompt"] == "a photo of a chef" and toxic["aligned_negative_prompt"] == "blood, gore"
    assert 0.0 <= json.loads(toxic["judge_scores"])["violating"]["p_concept"] <= 1.0
    # Re-running against the store skips both committed shards.
    again = run_generation(prepare_generation(tiny_config("num_shards=2"), out=uri, store=store), pipe=tiny_pipe,
                           progress=False)
    assert again.shards_skipped == [0, 1] and again.images_generated == 0
    shutil.rmtree(tmp_path / "cache")


def _toy_weights_present() -> bool:
    from livo.toy.base_model import WEIGHTS_DIR

    return (Path(WEIGHTS_DIR) / "model_index.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _toy_weights_present(), reason="toy base-model weights not built (python -m livo.toy.train_base)")
def test_toy_model_pairs_are_confirmed_by_the_judges(tmp_path):
    """The toy base model is biased (doctors/engineers drawn blue, nurses orange) and draws blood when asked: with the
    real judges and default thresholds, kept pairs must show exactly that."""
    config = build_generate_config(overrides=[
        f"principles_file={FIXTURES / 'principles_colour.yaml'}", "model=toy", "judging.attribute=toy-attribute",
        "judging.concept=toy-concept", "candidates_per_scene=8", "device=cpu", "num_shards=1",
        "judging.accept_all=false"])  # the tiny preset keeps every pair; this test wants the real judging
    run_generation(prepare_generation(config, out=tmp_path / "toy"), progress=False)
    ds = load_preference_dataset(tmp_path / "toy", cache_dir=tmp_path / "cache")
    assert set(ds.manifest["counts"]["by_principle"]) == {"bloody", "colour-equality"}
    for row in ds.rows:
        scores = json.loads(row["judge_scores"])
        if row["principle_id"] == "bloody":
            assert scores["violating"]["p_concept"] >= 0.5 and scores["aligned"]["p_concept"] <= 0.5
        else:
            stereotype = "orange" if "nurse" in row["prompt"] else "blue"
            assert scores["majority_class"] == stereotype and scores["violating"]["class"] == stereotype
            assert scores["aligned"]["class"] == scores["target_class"] != stereotype
            assert scores["aligned"]["probs"][scores["target_class"]] >= 0.5


@pytest.mark.slow
@pytest.mark.skipif(not _toy_weights_present(), reason="toy base-model weights not built (python -m livo.toy.train_base)")
def test_toy_matched_pairs_with_the_subject_check(tmp_path):
    """pairing=matched: each pair's aligned image shares its violating image's seed; judging.subject: both images of
    every pair show the scene's subject (issue 15)."""
    principles = tmp_path / "colour.yaml"
    principles.write_text((FIXTURES / "principles_colour.yaml").read_text().replace("[doctor, chef]", "[doctor]"))
    config = build_generate_config(overrides=[
        f"principles_file={principles}", "model=toy", "judging.attribute=toy-attribute", "judging.concept=toy-concept",
        "judging.subject=toy-subject", "judging.subject_classes=[doctor,nurse,engineer,teacher]", "pairing=matched",
        "candidates_per_scene=6", "device=cpu", "num_shards=1", "judging.accept_all=false"])
    run_generation(prepare_generation(config, out=tmp_path / "toy"), progress=False)
    ds = load_preference_dataset(tmp_path / "toy", cache_dir=tmp_path / "cache")
    assert len(ds) >= 6
    for row in ds.rows:
        scores = json.loads(row["judge_scores"])
        assert row["aligned_seed"] == row["violating_seed"]
        assert scores["aligned"]["subject_ok"] is True and scores["violating"]["subject_ok"] is True
    assert ds.manifest["judge_ids"]["subject"] == "toy-subject@1"

    unknown = build_generate_config(overrides=[
        f"principles_file={FIXTURES / 'principles_colour.yaml'}", "model=toy", "judging.attribute=toy-attribute",
        "judging.concept=toy-concept", "judging.subject=toy-subject", "device=cpu"])
    with pytest.raises(ConfigError, match="chef"):  # the toy subject judge knows no chef: refused before any image
        prepare_generation(unknown, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_config_layers_preset_then_file_then_overrides(tmp_path):
    preset = tmp_path / "mypreset.yaml"
    preset.write_text("name: mypreset\nmodel: {source: tiny}\njudges: {attribute: toy-attribute, concept: toy-concept}\n"
                      "generation: {resolution: 32, num_inference_steps: 3, batch_size: 2}\n"
                      "data: {candidates_per_scene: 6, judging: {min_class_probability: 0.7}}\n")
    config_file = tmp_path / "gen.yaml"
    config_file.write_text(f"preset: {preset}\ncandidates_per_scene: 5\njudging: {{toxic_min_probability: 0.9}}\n")
    config = build_generate_config(config_file, ["judging.concept=other-judge"])
    assert (config.preset, config.candidates_per_scene) == (str(preset), 5)
    assert (config.judging.attribute, config.judging.concept) == ("toy-attribute", "other-judge")
    assert (config.judging.min_class_probability, config.judging.toxic_min_probability) == (0.7, 0.9)
    settings = resolve_settings(config)
    assert (settings["num_inference_steps"], settings["batch_size"], settings["model"]) == (3, 2, "tiny")
    with pytest.raises(ConfigError, match="candidates_per_scen: unknown key"):
        build_generate_config(config_file, ["candidates_per_scen=3"])


def test_random_weight_presets_are_built_from_the_run_seed():
    """`livo run --seed N` generates, trains and evaluates one model: the tiny preset's weights come from the seed in
    generation and evaluation as in training (`load_models` builds it with the training seed)."""
    import torch

    from livo.data.generate import load_generation_pipeline
    from livo.presets import base_model_fingerprint, build_tiny_pipeline, pipeline_fingerprint

    settings = {"model": "tiny", "dtype_name": None, "scheduler": "dpmsolver++"}
    seeded = load_generation_pipeline(settings, "cpu", seed=3)
    assert pipeline_fingerprint(seeded) == pipeline_fingerprint(build_tiny_pipeline(3))
    assert pipeline_fingerprint(load_generation_pipeline(settings, "cpu")) == pipeline_fingerprint(build_tiny_pipeline(0))
    half = seeded.to(dtype=torch.float16)  # a cast pipeline is fingerprinted from the same seed's uncast load
    assert base_model_fingerprint(half, "tiny", seed=3) == pipeline_fingerprint(build_tiny_pipeline(3))
