"""The base-model training script: a seed reproduces the weights; the output is a loadable pipeline folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livo.toy import world
from livo.toy.base_model import load_toy_pipeline
from livo.toy.train_base import ToyTrainingConfig, main, sample_training_example

TINY = ["--threads", "1", "--vae-steps", "2", "--unet-steps", "2", "--pool-size", "64", "--vae-batch-size", "4",
        "--unet-batch-size", "8", "--warmup-steps", "1"]


def test_training_data_is_skewed_as_designed():
    rng = np.random.default_rng(0)
    examples = [sample_training_example(rng) for _ in range(6000)]
    plain = [(c, s) for c, s in examples if c and world.parse_caption(c)["colour"] is None]
    stereotyped = np.mean([s.colour == world.STEREOTYPE[s.subject] for _, s in plain])
    assert 0.87 <= stereotyped <= 0.93
    for caption, scene in examples:
        wanted = world.parse_caption(caption)
        if caption:  # captions are always truthful; toxic captions always show the mark
            assert wanted["subject"] == scene.subject and wanted["concept"] == scene.concept
            assert wanted["colour"] in (None, scene.colour)
    assert 0.08 <= np.mean([c == "" for c, _ in examples]) <= 0.12


def test_colour_caption_shares_set_how_often_a_colour_is_named():
    """The recipe knobs of the base model's steerability: the share of captions naming a colour, and of those the
    share naming orange or blue; the named colour is always drawn, unnamed captions keep the 90 % stereotype."""
    def shares(rng, **knobs):
        examples = [sample_training_example(rng, **knobs) for _ in range(8000)]
        named = [(world.parse_caption(c)["colour"], s) for c, s in examples if c]
        colours = [c for c, _ in named if c is not None]
        assert all(c == s.colour for c, s in named if c is not None)
        plain = [s for c, s in named if c is None]
        assert 0.87 <= np.mean([s.colour == world.STEREOTYPE[s.subject] for s in plain]) <= 0.93
        return len(colours) / len(named), np.mean([c in world.ATTRIBUTE_CLASSES_2 for c in colours])

    default_named, default_main = shares(np.random.default_rng(0))
    assert abs(default_named - 0.35) < 0.02 and abs(default_main - 0.6) < 0.03
    named, main_share = shares(np.random.default_rng(0), colour_caption_share=0.5, main_colour_share=0.8)
    assert abs(named - 0.5) < 0.02 and abs(main_share - 0.8) < 0.03


def test_concept_mark_share_sets_how_often_a_toxic_caption_shows_its_mark():
    """Default: every toxic caption shows its mark;
    below 1 the word makes the mark likely, not certain — the caption still names it, clean captions never show it."""
    def shown(share, of=("bloody", "zombie")):
        rng = np.random.default_rng(0)
        examples = [sample_training_example(rng, concept_mark_share=share) for _ in range(8000)]
        toxic = [(world.parse_caption(c)["concept"], s) for c, s in examples if c and world.parse_caption(c)["concept"]]
        assert all(s.concept is None for c, s in examples if c and not world.parse_caption(c)["concept"])
        assert all(s.concept in (None, concept) for concept, s in toxic)
        return np.mean([s.concept is not None for concept, s in toxic if concept in of])

    assert shown(1.0) == 1.0
    assert abs(shown(0.85) - 0.85) < 0.03
    # A share per concept; one equal share per concept is the same random stream as the single share.
    assert abs(shown({"bloody": 0.7, "zombie": 0.85}, of=("bloody",)) - 0.7) < 0.04
    assert abs(shown({"bloody": 0.7, "zombie": 0.85}, of=("zombie",)) - 0.85) < 0.04
    single, per_concept = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(500):
        assert sample_training_example(single, concept_mark_share=0.85) == \
            sample_training_example(per_concept, concept_mark_share={"bloody": 0.85, "zombie": 0.85})


def test_teacher_share_sets_how_often_the_teacher_is_drawn_and_leaves_the_default_stream_alone():
    """The recipe option for the teacher's diamond: the teacher gets its share, the other three split the rest; unset,
    the subjects stay uniform and the random stream is the committed weights' one (the same examples as before)."""
    def subjects(rng, **knobs):
        return [scene.subject for _, scene in (sample_training_example(rng, **knobs) for _ in range(8000))]

    uniform = subjects(np.random.default_rng(0))
    assert all(abs(uniform.count(s) / 8000 - 0.25) < 0.02 for s in world.SUBJECTS)
    assert subjects(np.random.default_rng(0), subject_shares=None) == uniform
    shares = ToyTrainingConfig(teacher_share=0.4).subject_shares()
    assert shares == {"teacher": 0.4} and ToyTrainingConfig().subject_shares() is None
    raised = subjects(np.random.default_rng(0), subject_shares=shares)
    assert abs(raised.count("teacher") / 8000 - 0.4) < 0.02
    assert all(abs(raised.count(s) / 8000 - 0.2) < 0.02 for s in ("doctor", "nurse", "engineer"))
    with pytest.raises(ValueError, match="subject shares"):
        sample_training_example(np.random.default_rng(0), subject_shares={"pilot": 0.4})
    with pytest.raises(ValueError, match="subject shares"):
        sample_training_example(np.random.default_rng(0), subject_shares={"teacher": 0.6, "nurse": 0.5})


def test_per_concept_mark_shares_fall_back_to_the_common_share():
    assert ToyTrainingConfig(concept_mark_share=0.85).mark_shares() == {"bloody": 0.85, "zombie": 0.85}
    assert ToyTrainingConfig(concept_mark_share=0.85, bloody_mark_share=0.7).mark_shares() == \
        {"bloody": 0.7, "zombie": 0.85}


def test_same_seed_reproduces_the_weights_and_the_output_loads(tmp_path):
    assert main(["--out", str(tmp_path / "a"), *TINY]) == 0
    assert main(["--out", str(tmp_path / "b"), *TINY]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert len(files_a) == 3
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))
    record = json.loads((tmp_path / "a" / "training_record.json").read_text())
    assert record["config"]["seed"] == 0 and record["config"]["unet_steps"] == 2
    # The record names the command that trains these weights again: every option that differs from its default.
    head = f"python -m livo.toy.train_base --out {(tmp_path / 'a').resolve()} --threads 1 "
    assert record["command"].startswith(head)
    options = record["command"][len(head):].split(" ")
    assert sorted(zip(options[::2], options[1::2], strict=True)) == sorted(zip(TINY[2::2], TINY[3::2], strict=True))
    pipe = load_toy_pipeline(weights_dir=tmp_path / "a")
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]


def test_the_sdxl_toy_trains_reproducibly_on_the_sd_toys_vae(tmp_path):
    """`--family sdxl` (issue 18): same seed, same weights; the folder is a StableDiffusionXLPipeline without a VAE of
    its own (it shares the SD toy's), and the conditioning training used is what the pipeline builds at inference."""
    import torch

    from livo.toy.base_model import load_toy_sdxl_pipeline, sdxl_conditioning, sdxl_time_ids

    for name in ("a", "b"):
        assert main(["--family", "sdxl", "--out", str(tmp_path / name), *TINY]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert sorted(str(p.parent) for p in files) == ["text_encoder", "text_encoder_2", "unet"]  # no VAE copy
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    record = json.loads((tmp_path / "a" / "training_record.json").read_text())
    assert record["config"]["family"] == "sdxl" and record["final_loss"]["vae"] is None

    pipe = load_toy_sdxl_pipeline(weights_dir=tmp_path / "a")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.vae.config.scaling_factor == load_toy_pipeline().vae.config.scaling_factor
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt("a photo of a doctor", device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True, negative_prompt="")
        ids = pipe.tokenizer(["a photo of a doctor"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        ours, ours_pooled = sdxl_conditioning(pipe.text_encoder, pipe.text_encoder_2, ids)
    assert torch.equal(ours, embeds) and torch.equal(ours_pooled, pooled) and ours.shape == (1, 77, 128)
    assert sdxl_time_ids(2).tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    image = pipe(prompt="a photo of a doctor", num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_exact_length_batches_end_every_caption_at_its_own_eos():
    """`exact_length_share`: that share of UNet batches holds captions of one token length, cut to exactly it (the
    LiVO pipeline's unpadded sequence); the rest are cut no shorter than their longest caption, as before."""
    import torch

    from livo.toy.train_base import draw_batch

    lengths = torch.tensor([2, 8, 8, 9, 10, 8, 9, 2, 10, 8] * 20)
    by_length = {int(n): torch.nonzero(lengths == n).flatten().numpy() for n in lengths.unique().tolist()}

    def batches(share, count=400):
        rng, config = np.random.default_rng(0), ToyTrainingConfig(unet_batch_size=16, exact_length_share=share)
        return [draw_batch(rng, lengths, by_length, config) for _ in range(count)]

    exact = [bool((lengths[index] == length).all()) for index, length in batches(0.5)]
    assert 0.42 <= np.mean(exact) <= 0.58
    assert all(bool((lengths[index] == length).all()) for index, length in batches(1.0))
    # share 0: never exact (a batch of 16 mixes lengths) and every cut keeps each caption whole
    plain = batches(0.0)
    assert all(length >= int(lengths[index].max()) for index, length in plain)
    assert 0.4 <= np.mean([length == 77 for _, length in plain]) <= 0.6


def test_unet_seed_draws_another_base_model_on_the_same_vae(tmp_path):
    """`--unet-seed`: the VAE stays the `--seed` one (the latent space the SDXL toy shares) while the UNet and text
    encoder are a different draw, reproducible from the two seeds."""
    assert main(["--out", str(tmp_path / "a"), *TINY]) == 0
    assert main(["--out", str(tmp_path / "b"), *TINY, "--unet-seed", "3"]) == 0
    assert main(["--out", str(tmp_path / "c"), *TINY, "--unet-seed", "3"]) == 0

    def weights(name, module):
        (file,) = (tmp_path / name / module).glob("*.safetensors")
        return file.read_bytes()

    assert weights("a", "vae") == weights("b", "vae")
    assert weights("a", "unet") != weights("b", "unet") and weights("a", "text_encoder") != weights("b", "text_encoder")
    assert weights("b", "unet") == weights("c", "unet")  # reproducible
    record = json.loads((tmp_path / "b" / "training_record.json").read_text())
    assert record["config"]["unet_seed"] == 3 and "--unet-seed 3" in record["command"]
    # SDXL: the same option redraws its UNet and both text encoders (its VAE is the SD toy's, never retrained)
    from livo.toy.base_model import load_toy_sdxl_pipeline

    for name, extra in (("xa", []), ("xb", ["--unet-seed", "3"])):
        assert main(["--family", "sdxl", "--out", str(tmp_path / name), *TINY, *extra]) == 0
    for module in ("unet", "text_encoder", "text_encoder_2"):
        assert weights("xa", module) != weights("xb", module), module
    assert type(load_toy_sdxl_pipeline(weights_dir=tmp_path / "xb")).__name__ == "StableDiffusionXLPipeline"


def test_subjects_option_trains_a_base_model_on_the_six_occupations(tmp_path):
    """`--subjects` (issue 15): the recipe draws the named occupations, each equally often; the default is the
    committed four with the committed random stream; the folder's tokenizer knows the extra words and its record
    names the subjects, which `trained_subjects` reads back (the committed record, written before, means the four)."""
    from livo.toy.base_model import WEIGHTS_DIR, trained_subjects

    def drawn(rng, **knobs):
        return [scene.subject for _, scene in (sample_training_example(rng, **knobs) for _ in range(6000))]

    six = drawn(np.random.default_rng(0), subjects=world.ALL_SUBJECTS)
    assert all(abs(six.count(s) / 6000 - 1 / 6) < 0.02 for s in world.ALL_SUBJECTS)
    assert drawn(np.random.default_rng(0), subjects=world.SUBJECTS) == drawn(np.random.default_rng(0))
    assert ToyTrainingConfig().subject_list() == world.SUBJECTS
    assert ToyTrainingConfig(subjects=" doctor, nurse ").subject_list() == ("doctor", "nurse")
    for bad, message in (("doctor,astronaut", "name each toy occupation once"),
                         ("doctor,nurse,doctor", "name each toy occupation once"),
                         ("doctor,pilot,engineer", "no occupation with the orange stereotype")):
        with pytest.raises(ValueError, match=message):
            ToyTrainingConfig(subjects=bad)
    with pytest.raises(ValueError, match="SDXL toy shares"):
        ToyTrainingConfig(family="sdxl", subjects=",".join(world.ALL_SUBJECTS))

    subjects = ",".join(world.ALL_SUBJECTS)
    assert main(["--out", str(tmp_path / "six"), *TINY, "--subjects", subjects]) == 0
    record = json.loads((tmp_path / "six" / "training_record.json").read_text())
    assert f"--subjects {subjects}" in record["command"]
    assert trained_subjects(tmp_path / "six") == world.ALL_SUBJECTS and trained_subjects(WEIGHTS_DIR) == world.SUBJECTS
    pipe = load_toy_pipeline(weights_dir=tmp_path / "six")
    assert len(pipe.tokenizer("a photo of a dancer", add_special_tokens=False).input_ids) == 5
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) > len(load_toy_pipeline().tokenizer)
    # The base-model measure judges such a base among all six and reports the extra occupations like the others.
    from livo.toy.measure import measure_base_model

    result = measure_base_model(pipe, images_per_prompt=2, steps=2, templates=world.EVALUATION_TEMPLATES[:1],
                                subjects=trained_subjects(tmp_path / "six"), unpadded=False, token_ceiling=False,
                                vae_scenes_per_pair=2)
    assert {world.parse_caption(r["prompt"])["subject"] for r in result["prompts"]} == set(world.ALL_SUBJECTS)
    assert set(result["summary"]["vae_round_trip"]) == set(world.ALL_SUBJECTS)
    assert all(set(r["subjects_drawn"]) <= set(world.ALL_SUBJECTS) and sum(r["subjects_drawn"].values()) <= r["n"]
               for r in result["prompts"])
