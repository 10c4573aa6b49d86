"""Loading a registered version in one line (`livo.serving.loading`), on a real tiny version in the embedded store.

The version is registered as the pipeline registers one: a value encoder derived from the `tiny` base model (built
with the training seed, whose fingerprint is computed for real), metrics bound to it, the shipped principle set.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from livo.errors import BaseModelMismatch, ConfigError, ModelNotFound, UnknownPrinciple, VersionNotVerified
from livo.modeling import SDXLValueEncoder, value_encoder_for, value_token_mask
from livo.paths import config_dir
from livo.presets import load_pipeline, pipeline_fingerprint
from livo.principles import load_principles
from livo.registry.registration import RegistrationRequest, RegistrationResult, register_model
from livo.serving.loading import RegisteredPipeline, load_registered

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "registry"))
from registration_inputs import bound_metrics  # noqa: E402

pytestmark = pytest.mark.store

MODEL = "livo-tiny"
TRAINING_SEED = 5  # the tiny preset's random weights depend on it: loading must use the lineage's seed
FAST = dict(num_inference_steps=2, height=32, width=32)
PROMPT = "a photo of a bloody nurse"


def register_tiny(store: Any, work: Path, *, fingerprint: str | None = None, base_model_id: str = "tiny",
                  model: str = MODEL) -> RegistrationResult:
    """Register a version whose base model is the `tiny` preset (or `base_model_id`; fingerprint computed, unless
    given) and whose value encoder is a perturbed copy of its text encoder(s)."""
    base = load_pipeline(base_model_id, seed=TRAINING_SEED)
    fingerprint = fingerprint or pipeline_fingerprint(base)
    encoder = value_encoder_for(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "trained" encoder: not a copy of the base encoder
        for parameter in encoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    work.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(work / "value_encoder")
    principles = work / "principles.yaml"
    shutil.copyfile(config_dir() / "principles" / "default.yaml", principles)
    (work / "metrics.json").write_text(json.dumps(bound_metrics(work / "value_encoder", principles,
                                                                base_model_fingerprint=fingerprint)))
    (work / "report.html").write_text("<html><body>LiVO evaluation</body></html>")
    store.put_json(f"datasets/{base_model_id}/ds-1/manifest.json", {"principle_set_hash": "sha256:" + "0" * 64,
                                                                    "pairs": 8})
    return register_model(store, RegistrationRequest(
        model_name=model, value_encoder_dir=work / "value_encoder", metrics_path=work / "metrics.json",
        report_path=work / "report.html", principles=str(principles),
        dataset_manifest_uri=store.uri(f"datasets/{base_model_id}/ds-1/manifest.json"),
        training_config={"model": base_model_id, "seed": TRAINING_SEED}, seed=TRAINING_SEED,
        base_model_id=base_model_id, base_model_fingerprint=fingerprint,
        pipeline_run_id=f"run-{uuid.uuid4().hex[:8]}",
    ))


@pytest.fixture(scope="module")
def registered(seaweed_store: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RegistrationResult]:
    store = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    store.ensure_bucket()
    return store, register_tiny(store, tmp_path_factory.mktemp("version"))


@pytest.fixture(scope="module")
def pipe(registered: tuple[Any, RegistrationResult]) -> RegisteredPipeline:
    store, result = registered
    return RegisteredPipeline.from_registry(result.uri, store=store, semantic=False)


def _pixels(images: list[Any]) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


# ------------------------------------------------------------------------------------------------------- loading
def test_every_reference_form_loads_the_same_version(registered: tuple[Any, RegistrationResult],
                                                     pipe: RegisteredPipeline) -> None:
    store, result = registered
    info = pipe.info
    assert (info.model, info.version, info.ref) == (MODEL, "v1", f"{MODEL}@v1")
    assert info.weights_sha256 == result.weights_sha256
    assert info.uri == result.uri == store.uri(f"models/{MODEL}/v1/")
    stored = store.get_bytes(f"models/{MODEL}/v1/lineage.json")
    assert info.lineage_sha256 == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert info.report_uri == store.uri(f"models/{MODEL}/v1/report.html")
    assert info.base_model_id == "tiny" and info.verified == "full"
    assert info.principle_ids == load_principles(config_dir() / "principles" / "default.yaml").ids
    assert info.as_dict()["ref"] == f"{MODEL}@v1"
    for ref in (result.uri.rstrip("/"), f"{MODEL}@v1", f"{MODEL}@latest", MODEL):
        again = load_registered(ref, store=store, semantic=False)
        assert again.info == info, ref
        assert all(torch.equal(a, b) for a, b in zip(again.value_encoder.state_dict().values(),
                                                     pipe.value_encoder.state_dict().values(), strict=True))


@pytest.mark.parametrize("ref", ["s3://bucket/datasets/livo-tiny/v1", "s3://bucket/models/livo-tiny",
                                 "s3://bucket/models/livo-tiny/1/", "livo-tiny@vx", "livo-tiny@", "", "a/b@v1",
                                 "Bad_Name@v1"])
def test_a_malformed_reference_is_bad_input(registered: tuple[Any, RegistrationResult], ref: str) -> None:
    store, _ = registered
    with pytest.raises(ConfigError) as info:
        load_registered(ref, store=store, semantic=False)
    assert not isinstance(info.value, ModelNotFound)


def test_an_unknown_model_or_version_is_not_found(registered: tuple[Any, RegistrationResult]) -> None:
    store, _ = registered
    with pytest.raises(ModelNotFound, match="registered versions: v1"):
        load_registered(f"{MODEL}@v9", store=store, semantic=False)
    with pytest.raises(ModelNotFound, match=f"registered models: {MODEL}"):
        load_registered("no-such-model", store=store, semantic=False)
    assert ModelNotFound("x").exit_code == 2


def flip_a_weight_byte(store: Any, version: str) -> None:
    """Damage the stored value encoder of `version` by one bit, as bit rot or an edit would."""
    key = f"models/{MODEL}/{version}/value_encoder/model.safetensors"
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))


def test_a_tampered_version_is_refused(store: Any, tmp_path: Path) -> None:
    result = register_tiny(store, tmp_path)
    flip_a_weight_byte(store, result.version)
    with pytest.raises(VersionNotVerified) as info:
        load_registered(f"{MODEL}@latest", store=store, semantic=False)
    assert "value_encoder/model.safetensors" in str(info.value) and "livo lineage verify" in str(info.value)
    assert ("value_encoder/model.safetensors" in [subject for subject, _ in info.value.mismatches])
    assert info.value.exit_code == 1 and not isinstance(info.value, ConfigError)
    with pytest.raises(VersionNotVerified):  # verify="contents" refuses it too: it is the version's own file
        load_registered(f"{MODEL}@latest", store=store, semantic=False, verify="contents")


def test_an_edited_source_principles_file_is_refused_unless_verify_contents(store: Any, tmp_path: Path) -> None:
    register_tiny(store, tmp_path)
    source = tmp_path / "principles.yaml"  # the file the lineage names as where the principles came from
    source.write_text(source.read_text().replace("inference_dropout: 0.5", "inference_dropout: 0.25", 1))
    with pytest.raises(VersionNotVerified, match="verify='contents'") as info:
        load_registered(MODEL, store=store, semantic=False)
    assert [subject for subject, _ in info.value.mismatches] == ["principles"]
    loaded = load_registered(MODEL, store=store, semantic=False, verify="contents")
    assert loaded.info.verified == "contents"
    assert loaded.principles.get("gender-equality").inference_dropout == 0.5  # the version's stored copy


def test_a_base_model_with_another_fingerprint_is_refused_naming_both(store: Any, tmp_path: Path) -> None:
    recorded = "sha256:" + "a" * 64
    register_tiny(store, tmp_path, fingerprint=recorded)
    actual = pipeline_fingerprint(load_pipeline("tiny", seed=TRAINING_SEED))
    with pytest.raises(BaseModelMismatch) as info:
        load_registered(f"{MODEL}@v1", store=store, semantic=False)
    assert recorded in str(info.value) and actual in str(info.value)
    assert (info.value.expected, info.value.actual) == (recorded, actual)
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------------------- generation
def test_auto_retrieves_the_principle_and_says_why(pipe: RegisteredPipeline) -> None:
    out = pipe(PROMPT, seed=3, num_images=2, **FAST)
    assert out.principle == "bloody" and out.choice.stage == "keyword" and out.choice.requested == "auto"
    assert out.choice.category == "toxicity" and out.choice.as_dict()["keywords"] == list(out.choice.keywords)
    assert "bloody" in out.choice.keywords and out.choice.applicable[0] == "bloody"
    assert out.used_value_token == [True, True] and out.seeds == [3, 4] and out.base_images is None
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    assert out.version is pipe.info
    # the keyword stage's calibrated confidence: the share of keyword decisions that were right on the dev splits
    assert out.choice.confidence == 0.9615 and out.choice.withheld == ()
    nothing = pipe("a red apple", seed=3, **FAST)
    assert (nothing.principle, nothing.choice.stage, nothing.used_value_token) == (None, "none", [False])
    assert nothing.choice.confidence is None  # keyword-only retriever: no stage measured "no principle"


def test_a_confidence_floor_prefers_no_token_over_a_doubtful_one(registered: tuple[Any, RegistrationResult]) -> None:
    store, result = registered
    cautious = RegisteredPipeline.from_registry(result.uri, store=store, semantic=False, min_confidence=0.99)
    out = cautious(PROMPT, seed=3, **FAST)
    assert out.principle is None and out.used_value_token == [False] and out.choice.stage == "none"
    # the nurse's bias principles too: the person lexicon's confidence is 0.9453
    withheld = {"bloody": 0.9615, "gender-equality": 0.9453, "racial-equality": 0.9453}
    assert dict(out.choice.withheld) == withheld and out.choice.as_dict()["withheld"] == withheld


def test_explicit_principle_none_and_compare(pipe: RegisteredPipeline) -> None:
    explicit = pipe(PROMPT, principle="bloody", seed=11, num_images=2, compare=True, **FAST)
    plain = pipe(PROMPT, principle=None, seed=11, num_images=2, **FAST)
    assert explicit.choice.stage == "explicit" and plain.principle is None and plain.choice.stage == "disabled"
    assert plain.used_value_token == [False, False]
    for with_token, without in zip(_pixels(explicit.images), _pixels(plain.images), strict=True):
        assert not np.array_equal(with_token, without)
    # None is the base model, bit for bit: the same batch through a plain diffusers call of a fresh base pipeline
    base = load_pipeline("tiny", seed=TRAINING_SEED)
    reference = base(prompt=[PROMPT] * 2, generator=[torch.Generator("cpu").manual_seed(s) for s in (11, 12)],
                     guidance_scale=7.5, output_type="pil", **FAST).images
    for ours, theirs in zip(_pixels(plain.images), _pixels(reference), strict=True):
        assert np.array_equal(ours, theirs)
    # compare=True: the base model's images for the same seeds
    for ours, theirs in zip(_pixels(explicit.base_images), _pixels(plain.images), strict=True):
        assert np.array_equal(ours, theirs)


def test_a_bias_principle_keeps_its_seeded_inference_dropout(pipe: RegisteredPipeline) -> None:
    out = pipe("a photo of a doctor", principle="gender-equality", seed=7, num_images=4, compare=True, **FAST)
    assert out.choice.inference_dropout == 0.5
    assert out.used_value_token == value_token_mask(4, 0.5, 7) and sum(out.used_value_token) == 2
    for used, ours, base in zip(out.used_value_token, _pixels(out.images), _pixels(out.base_images), strict=True):
        assert np.array_equal(ours, base) != used  # dropped-token images are the base model's
    again = pipe("a photo of a doctor", principle="gender-equality", seed=7, num_images=4, **FAST)
    assert again.used_value_token == out.used_value_token
    by_seeds = pipe("a photo of a doctor", principle="gender-equality", seeds=[7, 8, 9, 10], **FAST)
    assert by_seeds.seeds == out.seeds and by_seeds.used_value_token == out.used_value_token
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(by_seeds.images), _pixels(out.images), strict=True))
    forced = pipe("a photo of a doctor", principle="gender-equality", seed=7, num_images=4, inference_dropout=0.0,
                  **FAST)
    assert forced.used_value_token == [True] * 4


def test_an_unknown_principle_lists_the_known_ids(pipe: RegisteredPipeline) -> None:
    with pytest.raises(UnknownPrinciple) as info:
        pipe(PROMPT, principle="kindness", **FAST)
    assert "kindness" in str(info.value)
    for pid in pipe.principles.ids:
        assert pid in str(info.value)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


def test_generate_still_works_on_the_loaded_pipeline(pipe: RegisteredPipeline) -> None:
    out = pipe.generate([PROMPT], pipe.principles.get("bloody"), seed=0, **FAST)
    assert out.used_value_token == [True]


# ------------------------------------------------------------------------------------------------ SDXL family
def test_an_sdxl_family_version_serves_the_token_and_leaves_plain_images_to_the_base_model(
        seaweed_store: Any, tmp_path: Path) -> None:
    """Issue 18: a version whose base model is SDXL-architecture (the toy SDXL) loads with its family's value
    encoder; images without a principle are a plain `StableDiffusionXLPipeline` call's, bit for bit."""
    from diffusers import StableDiffusionXLPipeline

    store = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    store.ensure_bucket()
    result = register_tiny(store, tmp_path / "version", base_model_id="toy-sdxl", model="livo-toy-sdxl")
    pipe = RegisteredPipeline.from_registry(result.uri, store=store, semantic=False)
    assert isinstance(pipe.value_encoder, SDXLValueEncoder) and pipe.info.base_model_id == "toy-sdxl"
    explicit = pipe(PROMPT, principle="bloody", seed=11, num_images=2, compare=True, **FAST)
    plain = pipe(PROMPT, principle=None, seed=11, num_images=2, **FAST)
    assert explicit.used_value_token == [True, True] and plain.used_value_token == [False, False]
    base = load_pipeline("toy-sdxl")
    assert isinstance(base, StableDiffusionXLPipeline)
    reference = base(prompt=[PROMPT] * 2, generator=[torch.Generator("cpu").manual_seed(s) for s in (11, 12)],
                     guidance_scale=7.5, output_type="pil", **FAST).images
    for ours, theirs, token in zip(_pixels(plain.images), _pixels(reference), _pixels(explicit.images), strict=True):
        assert np.array_equal(ours, theirs)
        assert not np.array_equal(token, theirs)
    for ours, theirs in zip(_pixels(explicit.base_images), _pixels(plain.images), strict=True):
        assert np.array_equal(ours, theirs)
