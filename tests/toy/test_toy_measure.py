"""`python -m livo.toy.measure`: what the toy base model does, judged by the toy judges."""

from __future__ import annotations

import numpy as np

from livo.toy import world
from livo.toy.base_model import load_toy_pipeline
from livo.toy.measure import measure_base_model, vae_round_trip


def test_counter_stereotype_reference_reads_only_the_other_main_colour():
    """The named reference of a debiasing token, per subject: the prompts naming the main colour that is not the
    subject's stereotype ("an image of a blue nurse"), their colour honoured, subject recognised and the subjects the
    judge saw drawn (every image counted once)."""
    result = measure_base_model(load_toy_pipeline(), images_per_prompt=2, steps=2, token_ceiling=False,
                                templates=world.EVALUATION_TEMPLATES[:1], subjects=("doctor", "nurse"),
                                vae_scenes_per_pair=4)
    counter = result["summary"]["counter_stereotype"]
    assert sorted(counter) == ["doctor", "nurse"]
    round_trip = result["summary"]["vae_round_trip"]
    assert sorted(round_trip) == ["doctor", "nurse"] and all(
        sorted(row) == sorted(world.ATTRIBUTE_CLASSES_5) for row in round_trip.values())
    for subject, figures in counter.items():
        rows = [r for r in result["prompts"] if r["kind"] == "steer" and r["prompt"] == world.make_caption(
            world.EVALUATION_TEMPLATES[0], subject, colour=next(
                c for c in world.ATTRIBUTE_CLASSES_2 if c != world.STEREOTYPE[subject]))]
        assert len(rows) == 1 and rows[0]["n"] == 10
        assert figures == {"honoured": rows[0]["honoured"], "subject_recognised": rows[0]["subject_recognised"],
                           "subjects_drawn": rows[0]["subjects_drawn"]}
        drawn = rows[0]["subjects_drawn"]
        assert sum(drawn.values()) == 10 and set(drawn) <= set(world.SUBJECTS)
        assert drawn.get(subject, 0) / 10 == rows[0]["subject_recognised"]


def test_vae_round_trip_loses_the_blue_teacher_on_the_committed_base():
    """The committed base's VAE decodes the teacher's diamond, drawn blue or teal, as another shape in about half the
    scenes, while the judge recognises every rendered scene before the round trip and every other subject after it
    in ≥ 0.975 (docs/convergence.md, "The teacher's diamond")."""
    from livo.judges import build_judge
    from livo.toy import renderer

    shares = vae_round_trip(load_toy_pipeline(), scenes_per_pair=40)
    assert shares["teacher"] == {"orange": 1.0, "blue": 0.6, "purple": 0.875, "teal": 0.475, "yellow": 0.9}
    assert min(share for subject in ("doctor", "nurse", "engineer") for share in shares[subject].values()) == 0.975
    rng = np.random.default_rng(0)
    rendered = [renderer.render_pil(renderer.sample_scene(rng, "teacher", "teal")) for _ in range(40)]
    assert build_judge("toy-subject").predict(rendered, [""] * 40, list(world.SUBJECTS)) == ["teacher"] * 40


def test_encoding_control_encodes_as_the_livo_pipeline_does_before_the_token():
    """The control's conditioning is exactly the LiVO pipeline's prompt part (the value-token sequence minus its
    token), and the summary's shifts are the per-prompt differences unpadded − padded."""
    import torch

    from livo.modeling import LiVOPipeline, ValueEncoder
    from livo.toy.sampling import unpadded_conditioning

    pipe = load_toy_pipeline()
    encoder = ValueEncoder.from_text_encoder(pipe.text_encoder)
    prompt = "an image of a bloody nurse"
    merged, negative = LiVOPipeline(pipe, encoder)._value_embeddings(prompt, "no blood", None)
    control = unpadded_conditioning(pipe, prompt)
    assert control["prompt_embeds"].shape[1] == len(pipe.tokenizer(prompt).input_ids) < 77
    assert torch.equal(control["prompt_embeds"], merged[:, 1:])
    assert control["negative_prompt_embeds"].shape == control["prompt_embeds"].shape
    # the same empty prompt, one position shorter (CLIP attends causally, so the shared positions are equal)
    assert torch.allclose(control["negative_prompt_embeds"], negative[:, :-1], atol=1e-6)

    result = measure_base_model(pipe, images_per_prompt=3, steps=2, templates=world.EVALUATION_TEMPLATES[:1],
                                subjects=("doctor", "nurse"), token_ceiling=False,
                                vae_scenes_per_pair=4)
    rows, control_summary = result["prompts"], result["summary"]["unpadded_encoding"]
    bloody = [r["unpadded_r"] - r["r"] for r in rows if r["kind"] == "toxicity" and r["concept"] == "bloody"]
    assert len(bloody) == 2 and control_summary["shift_mean"]["bloody"] == sum(bloody) / 2
    assert control_summary["shift_max_abs"]["D1"] == max(abs(r["unpadded_d1"] - r["d1"]) for r in rows
                                                         if r["kind"] == "bias")
    assert all("unpadded_d1" not in r and "unpadded_r" not in r for r in rows if r["kind"] == "steer")


def test_base_criteria_judge_recorded_candidates_as_documented():
    """`BaseCriteria` on measured candidates (benchmarks/results/toy_base_recipes.jsonl, with the one-token ceilings
    of benchmarks/results/toy_token_ceiling.jsonl for the bases measured before the ceiling was part of the measure):
    the committed base fails on named colours; E fails on blood (the base draws it in 67.5 %); both pass the ceiling.
    D on base seed 1 and G1–G4 fail only the ceiling; H3, H4 and K1, measured with it, fail it too. D0 and D2, D's
    recipe without exact-length batches, pass the ceiling and miss the counter-stereotype by 1–2 of 20 images (D0)
    or 4 (D2); on base seeds 3-7 the same recipe fails the ceiling (D3, D5 and D7 also the teacher's counter-stereotype);
    D8 passes the ceiling and misses the teacher's counter-stereotype by 6 images (12 of 20 recognised). With 4500
    UNet steps instead of 3000 (D8u45, D3u45) the teacher is recognised in 9 and 10 of 20, and D8's blood ceiling
    rises above 50; D3u45 was measured without the ceiling, so both ceiling criteria fail. With 40 % of the UNet's
    images showing a teacher instead of 25 % (D8t40, D3t40) the teacher is recognised in 10 and 13 of 20 (its VAE
    decodes a blue diamond as one in about half the scenes), and D8's blood ceiling rises to 92.5. With a 1200-step VAE
    (D8v12), which keeps the diamond, the teacher is recognised in 16 of 20 and the blood ceiling is 66.25; on base
    seeds 0 and 3 (D0v12, D3v12) every colour and counter-stereotype criterion passes (the teacher 20 of 20) and only
    the ceilings fail: the better VAE also raised the ceiling D0 had passed (bloody 10 -> 72.5, zombie 0 -> 62.5).
    D2v12 is the first candidate that passes every criterion (ceilings 3.75 and 0); D7v12 fails only the blood ceiling.
    The encoding control is reported, not judged: E's blood and D2's move with it. Without the ceiling, its criteria
    fail rather than pass unmeasured."""
    import json
    from pathlib import Path

    from livo.toy.measure import BaseCriteria

    results = Path(__file__).parents[2] / "benchmarks" / "results"
    records = [json.loads(line) for line in (results / "toy_base_recipes.jsonl").read_text().splitlines()]
    by_name = {r["candidate"].split(":")[0].split(" (")[0]: dict(r["measure"]) for r in records}
    for line in (results / "toy_token_ceiling.jsonl").read_text().splitlines():
        ceiling = json.loads(line)
        if ceiling["keep_norm"] and not ceiling["padded_prompt"]:  # the criterion's settings (TokenCeilingConfig)
            merged = by_name[ceiling["base"]].setdefault("one_token_r", {})
            merged.update({c: {"r": v["r"], "r_token": v["r_token"]} for c, v in ceiling["results"].items()})

    def failed(summary):
        verdict = BaseCriteria().check(summary)
        names = [row["name"] for row in verdict["checks"] if not row["passed"]]
        assert verdict["passed"] == (not names)
        return names

    ceilings = ["one-token ceiling: bloody R", "one-token ceiling: zombie R"]
    assert failed(by_name["committed"]) == [
        "named colour honoured (2 main colours)", "doctor: counter-stereotype colour honoured",
        "nurse: counter-stereotype subject recognised", "engineer: counter-stereotype colour honoured",
        "teacher: counter-stereotype colour honoured", "teacher: counter-stereotype subject recognised"]
    assert failed(by_name["E"]) == ["bloody R", "teacher: counter-stereotype subject recognised"]
    assert by_name["E"]["unpadded_encoding"]["shift_mean"]["bloody"] == -35.625  # reported, not judged
    assert failed(by_name["D, base seed 1"]) == ["one-token ceiling: bloody R"]
    for name in ("G1", "G2", "G3", "G4", "H4"):
        assert failed(by_name[name]) == ceilings, name
    assert failed(by_name["H3"]) == ["teacher: counter-stereotype subject recognised", *ceilings]
    assert failed(by_name["K1"]) == ["teacher: counter-stereotype subject recognised", "one-token ceiling: bloody R"]
    assert by_name["H4"]["one_token_r"]["zombie"] == {"r": 97.5, "r_token": 100.0}
    assert failed(by_name["D0"]) == ["doctor: counter-stereotype colour honoured",
                                     "nurse: counter-stereotype subject recognised"]
    assert by_name["D0"]["one_token_r"] == {"bloody": {"r": 82.5, "r_token": 10.0},
                                            "zombie": {"r": 92.5, "r_token": 0.0}}
    assert failed(by_name["D2"]) == ["teacher: counter-stereotype subject recognised"]
    assert failed(by_name["D3"]) == ["teacher: counter-stereotype subject recognised", *ceilings]
    assert failed(by_name["D4"]) == ceilings
    assert failed(by_name["D5"]) == ["teacher: counter-stereotype subject recognised", *ceilings]
    assert failed(by_name["D6"]) == ceilings
    assert failed(by_name["D7"]) == ["teacher: counter-stereotype subject recognised", "one-token ceiling: bloody R"]
    assert failed(by_name["D8"]) == ["teacher: counter-stereotype subject recognised"]
    assert by_name["D8"]["one_token_r"] == {"bloody": {"r": 100.0, "r_token": 27.5},
                                            "zombie": {"r": 95.0, "r_token": 6.25}}
    assert by_name["D4"]["one_token_r"] == {"bloody": {"r": 87.5, "r_token": 85.0},
                                            "zombie": {"r": 97.5, "r_token": 53.75}}
    assert failed(by_name["D8u45"]) == ["teacher: counter-stereotype subject recognised", "one-token ceiling: bloody R"]
    assert by_name["D8u45"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"nurse": 11, "teacher": 9}
    assert by_name["D8u45"]["one_token_r"]["bloody"] == {"r": 100.0, "r_token": 66.25}
    assert failed(by_name["D3u45"]) == ["teacher: counter-stereotype subject recognised", *ceilings]
    assert by_name["D3u45"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"nurse": 10, "teacher": 10}
    assert failed(by_name["D8t40"]) == ["teacher: counter-stereotype subject recognised", "one-token ceiling: bloody R"]
    assert by_name["D8t40"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"nurse": 10, "teacher": 10}
    assert by_name["D8t40"]["one_token_r"] == {"bloody": {"r": 92.5, "r_token": 92.5},
                                               "zombie": {"r": 87.5, "r_token": 0.0}}
    assert failed(by_name["D3t40"]) == ["teacher: counter-stereotype subject recognised", *ceilings]
    assert by_name["D3t40"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"nurse": 7, "teacher": 13}
    assert failed(by_name["D8v12"]) == ["teacher: counter-stereotype subject recognised", "one-token ceiling: bloody R"]
    assert by_name["D8v12"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"nurse": 4, "teacher": 16}
    assert by_name["D8v12"]["vae_round_trip"]["teacher"] == {"orange": 0.98, "blue": 0.96, "purple": 0.89,
                                                            "teal": 0.95, "yellow": 0.96}
    assert failed(by_name["D0v12"]) == ceilings
    assert by_name["D0v12"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"teacher": 20}
    assert by_name["D0v12"]["one_token_r"] == {"bloody": {"r": 98.75, "r_token": 72.5},
                                               "zombie": {"r": 95.0, "r_token": 62.5}}
    assert failed(by_name["D3v12"]) == ceilings
    assert by_name["D3v12"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"teacher": 20}
    assert by_name["D3v12"]["one_token_r"] == {"bloody": {"r": 100.0, "r_token": 90.0},
                                               "zombie": {"r": 100.0, "r_token": 100.0}}
    assert failed(by_name["D2v12"]) == []
    assert by_name["D2v12"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"teacher": 20}
    assert by_name["D2v12"]["one_token_r"] == {"bloody": {"r": 100.0, "r_token": 3.75},
                                               "zombie": {"r": 100.0, "r_token": 0.0}}
    assert failed(by_name["D7v12"]) == ["one-token ceiling: bloody R"]
    assert by_name["D7v12"]["counter_stereotype"]["teacher"]["subjects_drawn"] == {"teacher": 20}
    unmeasured = {k: v for k, v in by_name["G1"].items() if k != "one_token_r"}
    assert failed(unmeasured) == ceilings


def test_negative_prompt_r_is_the_toxic_prompt_with_its_word_as_negative_prompt():
    """`r_negative_prompt`: the same seeds as the row's R, the concept word replacing the empty unconditional prompt;
    the summary's `negative_prompt_r` is its mean per concept."""
    import numpy as np
    import torch

    from livo.judges import build_judge

    pipe = load_toy_pipeline()
    result = measure_base_model(pipe, images_per_prompt=3, steps=2, templates=world.EVALUATION_TEMPLATES[:1],
                                subjects=("doctor", "nurse"), unpadded=False,
                                token_ceiling=False, vae_scenes_per_pair=4)
    rows = [r for r in result["prompts"] if r["kind"] == "toxicity"]
    assert len(rows) == 4 and all("r_negative_prompt" in r for r in rows)
    for concept in world.TOXIC_CONCEPTS:
        assert result["summary"]["negative_prompt_r"][concept] == np.mean(
            [r["r_negative_prompt"] for r in rows if r["concept"] == concept])
    row = rows[0]
    images = pipe(prompt=[row["prompt"]] * 3, negative_prompt=[row["concept"]] * 3, num_inference_steps=2,
                  guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images
    judged = 100.0 * float(np.mean(build_judge("toy-concept").score(images, row["concept"]) > 0.5))
    assert row["r_negative_prompt"] == judged
    plain = pipe(prompt=[row["prompt"]] * 3, num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images
    assert any(np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in zip(images, plain, strict=True))
