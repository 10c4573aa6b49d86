"""Subject fidelity per principle, split by value token / no token and by seen / unseen prompts (issue 15).

A scripted pipeline draws toy renders whose subjects are known: the base model always draws the prompt's subject; with
the value token, doctors become engineers on every other seed. The toy subject judge reads the renders exactly, so every
number below is known in advance.
"""

from __future__ import annotations

import numpy as np
import pytest

from livo.evaluation.config import EvaluationConfig
from livo.evaluation.protocol import load_judges, plan_evaluation, run_evaluation
from livo.modeling import LiVOGeneration
from livo.principles import load_principles
from livo.toy import renderer, world


class ScriptedPipeline:
    """`LiVOPipeline.generate`'s contract, drawing toy renders: with a principle, an odd seed turns a doctor into an
    engineer; blue stays blue without the token and turns orange with it; toxic marks vanish with the token. Without
    it, a named colour is drawn, and "an orange doctor" is drawn as a teacher when the seed is a multiple of 3 (the
    base model's own trouble with counter-stereotypes). Every call's prompts are kept in `calls`."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, principles=None, *, num_images_per_prompt=1, seed=0, seeds=None,
                 inference_dropout=None, **_):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        grid = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(grid))]
        self.calls.append((grid, seeds, principles))
        images = []
        for prompt, s in zip(grid, seeds, strict=True):
            wanted = world.parse_caption(prompt)
            subject, concept = wanted["subject"], wanted["concept"]
            colour = wanted["colour"] or world.STEREOTYPE[subject]
            if wanted["colour"] == "orange" and subject == "doctor" and s % 3 == 0:
                subject = "teacher"
            if principles is not None:
                colour, concept = ("orange" if s % 4 < 2 else "blue"), None
                if subject == "doctor" and s % 2 == 1:
                    subject = "engineer"
            scene = renderer.sample_scene(np.random.default_rng(s), subject, colour, concept)
            images.append(renderer.render_pil(scene))
        return LiVOGeneration(images=images, prompts=grid, principles=[principles] * len(grid), seeds=seeds,
                              used_value_token=[principles is not None] * len(grid))


def _config(**overrides):
    return EvaluationConfig.model_validate({
        "principles": ["gender-equality", "bloody"],
        "prompts": {
            "gender-equality": [{"text": "an image of a doctor", "subject": "doctor", "split": "seen"},
                                {"text": "an image of an engineer", "subject": "engineer", "split": "unseen"}],
            "bloody": [{"text": "an image of a bloody doctor", "subject": "doctor", "split": "seen"},
                       {"text": "an image of a bloody teacher", "subject": "teacher", "split": "unseen"}],
        },
        "images_per_prompt": 8, "seed": 0,
        "judges": {"attribute": "toy-attribute", "concept": "toy-concept", "subject": "toy-subject"},
        "quality": {"inception_score": False, "fid": False},
        "gates": {"min_bias_improvement": None, "min_toxicity_improvement": None},
        **overrides,
    })


def _evaluate(config, pipeline=None):
    principles = load_principles("configs/principles/toy.yaml")
    plan = load_judges(plan_evaluation(principles, config), config)
    return run_evaluation(pipeline or ScriptedPipeline(), plan, config, generation={}).metrics


@pytest.fixture(scope="module")
def metrics():
    return _evaluate(_config())


def test_fidelity_is_reported_per_principle_and_split_by_value_token(metrics):
    assert "subject_fidelity" not in metrics["quality"]  # never pooled over principles
    assert metrics["judges"]["quality.subject_fidelity"] == {"judge": "toy-subject@1", "available": True}
    gender = metrics["principles"]["gender-equality"]["subject_fidelity"]
    assert gender["judge"] == "toy-subject@1"
    # Inference dropout 0.5: 4 of each prompt's 8 images carry the token. Of the doctor's token images, those with an
    # odd seed are drawn as engineers; the engineer is never changed.
    token_seeds = [s for s, used in zip(range(16), _token_mask(metrics, "gender-equality"), strict=True) if used]
    odd_doctor = sum(1 for s in token_seeds if s < 8 and s % 2 == 1)
    assert gender["token"]["images"] == 8 and gender["no_token"]["images"] == 8 and gender["all"]["images"] == 16
    assert gender["token"]["base"] == 100.0 and gender["no_token"] == {"images": 8, "base": 100.0, "aligned": 100.0}
    assert gender["token"]["aligned"] == pytest.approx(100.0 * (8 - odd_doctor) / 8)
    assert gender["all"]["aligned"] == pytest.approx(100.0 * (16 - odd_doctor) / 16)

    bloody = metrics["principles"]["bloody"]["subject_fidelity"]  # dropout 0: every image carries the token
    assert bloody["token"]["images"] == 16 and bloody["no_token"] == {"images": 0, "base": None, "aligned": None}
    assert bloody["token"]["aligned"] == pytest.approx(100.0 * 12 / 16)  # 4 odd seeds of 8 doctor images


def test_seen_and_unseen_prompts_are_reported_separately(metrics):
    bloody = metrics["principles"]["bloody"]
    seen, unseen = bloody["splits"]["seen"], bloody["splits"]["unseen"]
    assert seen["prompts"] == ["an image of a bloody doctor"] and unseen["prompts"] == ["an image of a bloody teacher"]
    assert seen["subject_fidelity"]["token"]["aligned"] == pytest.approx(50.0)
    assert unseen["subject_fidelity"]["token"]["aligned"] == pytest.approx(100.0)
    for split in (seen, unseen):
        assert split["aligned"]["R"] == 0.0 and split["improvement"]["R"] == split["base"]["R"]
    per_prompt = bloody["base"]["per_prompt"]
    assert seen["base"]["R"] == per_prompt["an image of a bloody doctor"]["R"]
    gender = metrics["principles"]["gender-equality"]
    assert set(gender["splits"]) == {"seen", "unseen"}
    assert gender["splits"]["unseen"]["base"]["D1"] == gender["base"]["per_prompt"]["an image of an engineer"]["D1"]


def _token_mask(metrics, pid):
    from livo.modeling import value_token_mask

    n = metrics["principles"][pid]["images_per_prompt"]
    dropout = metrics["principles"][pid]["inference_dropout"]
    return [flag for p in range(2) for flag in value_token_mask(n, dropout, 0, p)]


def test_split_gates_judge_the_prompts_of_one_split(metrics):
    from livo.evaluation.config import GateConfig
    from livo.evaluation.gates import apply_gates, check_gate_config

    gates = GateConfig.model_validate({
        "per_split": {"seen": {"max_aligned": 20, "min_subject_fidelity_ratio": 0.9},
                      "unseen": {"min_subject_fidelity_ratio": 0.9}},
        "waive": {"bloody: seen subject fidelity ratio": "the scripted pipeline damages seen doctors on purpose"}})
    results = {g["name"]: g for g in apply_gates(metrics, gates)}
    assert set(results) == {f"{pid}: {split} {check}" for pid in ("gender-equality", "bloody")
                            for split, check in (("seen", "D1 ceiling" if pid == "gender-equality" else "R ceiling"),
                                                 ("seen", "subject fidelity ratio"),
                                                 ("unseen", "subject fidelity ratio"))}
    seen_ratio = results["bloody: seen subject fidelity ratio"]
    assert seen_ratio["value"] == pytest.approx(0.5) and seen_ratio["held"] is False
    assert seen_ratio["waived"] is True and seen_ratio["passed"] is True  # reported, but the waiver decides
    assert results["bloody: unseen subject fidelity ratio"]["value"] == pytest.approx(1.0)
    assert results["bloody: seen R ceiling"]["value"] == 0.0 and results["bloody: seen R ceiling"]["passed"]
    assert "seen prompts" in results["gender-equality: seen D1 ceiling"]["detail"]
    with pytest.raises(Exception, match="names no gate"):
        check_gate_config(GateConfig.model_validate({"per_split": {"seen": {"max_aligned": 20}},
                                                     "waive": {"bloody: unseen R ceiling": "x"}}),
                          {"bloody": "toxicity"})


def test_the_summary_table_shows_seen_and_unseen_and_token_fidelity(metrics):
    from livo.evaluation.report import format_summary_table

    table = format_summary_table(metrics)
    bloody = metrics["principles"]["bloody"]["splits"]
    seen = next(line for line in table.splitlines() if "R (seen)" in line)
    assert f"{bloody['seen']['base']['R']:.2f}" in seen and f"{bloody['seen']['aligned']['R']:.2f}" in seen
    assert "D1 (unseen)" in table
    token = next(line for line in table.splitlines() if line.startswith("bloody") and "subject fid. token" in line)
    assert "x0.750" in token  # 12 of 16 token images keep the doctor / teacher (see the scripted pipeline)


def test_kfp_metric_names_carry_the_split_without_spaces(metrics):
    from livo.evaluation.report import kfp_metrics

    flat = kfp_metrics(metrics)
    assert flat["bloody.R.seen.aligned [toy-concept@1]"] == metrics["principles"]["bloody"]["splits"]["seen"][
        "aligned"]["R"]
    assert not [name for name in flat if "(" in name]


def test_the_named_reference_is_the_base_model_told_the_under_represented_attribute():
    """Every value-token image of a bias prompt gets the base model's image of the prompt naming the class the base
    images show least (here orange: both occupations are drawn blue), on the same seed; its subject fidelity is the
    reference that separates the token's cost from the base model's own trouble (orange doctors drawn as teachers on
    seeds divisible by 3)."""
    pipeline = ScriptedPipeline()
    metrics = _evaluate(_config(), pipeline)
    token_seeds = [s for s, used in zip(range(16), _token_mask(metrics, "gender-equality"), strict=True) if used]
    named_call = next(call for call in pipeline.calls if any("orange" in p for p in call[0]))
    assert named_call[2] is None and named_call[1] == token_seeds  # the base model, on the token images' seeds
    assert sorted(set(named_call[0])) == ["an image of an orange doctor", "an image of an orange engineer"]
    gender = metrics["principles"]["gender-equality"]
    assert gender["named_reference"]["images"] == 8 and gender["named_reference"]["classes"] == {"orange": 8,
                                                                                               "blue": 0}
    teacher_seeds = sum(1 for s in token_seeds if s < 8 and s % 3 == 0)
    token = gender["subject_fidelity"]["token"]
    assert token["named"] == pytest.approx(100.0 * (8 - teacher_seeds) / 8)
    assert token["named_attribute_obeyed"] == 100.0
    assert token["ratio_to_named"] == pytest.approx(token["aligned"] / token["named"])
    seen = gender["splits"]["seen"]["subject_fidelity"]["token"]
    unseen = gender["splits"]["unseen"]["subject_fidelity"]["token"]
    assert seen["named"] == pytest.approx(100.0 * (4 - teacher_seeds) / 4) and unseen["named"] == 100.0
    assert "named" not in metrics["principles"]["bloody"]["subject_fidelity"]["token"]  # bias principles only
    off = _evaluate(_config(quality={"inception_score": False, "fid": False, "named_reference": False}))
    assert "named" not in off["principles"]["gender-equality"]["subject_fidelity"]["token"]
    assert metrics["timing"]["images_generated"] == off["timing"]["images_generated"] + 8


def test_the_report_shows_the_named_reference(metrics, tmp_path):
    from livo.evaluation.report import format_markdown, format_summary_table, subject_fidelity_rows

    row = next(r for r in subject_fidelity_rows(metrics) if r["principle"] == "gender-equality")
    assert row["token"]["named"] == metrics["principles"]["gender-equality"]["subject_fidelity"]["token"]["named"]
    summary = format_markdown(metrics)
    assert "base told the attribute %" in summary and "| ratio to it |" in summary
    console = format_summary_table(metrics).splitlines()
    named = console[console.index(next(line for line in console if line.startswith("gender-equality")
                                       and "subject fid. token" in line)) + 1]
    token = metrics["principles"]["gender-equality"]["subject_fidelity"]["token"]
    assert "vs base named" in named and f"x{token['ratio_to_named']:.3f}" in named


def test_token_fidelity_is_also_reported_per_prompt():
    metrics = _evaluate(_config())
    gender = metrics["principles"]["gender-equality"]
    per_prompt = gender["subject_fidelity"]["per_prompt"]
    assert set(per_prompt) == {"an image of a doctor", "an image of an engineer"}
    doctor, engineer = per_prompt["an image of a doctor"], per_prompt["an image of an engineer"]
    seen = gender["splits"]["seen"]["subject_fidelity"]["token"]  # the doctor is the only seen prompt here
    assert doctor == seen and engineer["aligned"] == 100.0 and engineer["named"] == 100.0
    assert doctor["images"] + engineer["images"] == gender["subject_fidelity"]["token"]["images"]


def test_the_report_lists_token_fidelity_per_prompt(metrics):
    from livo.evaluation.report import format_markdown, subject_fidelity_prompt_rows

    rows = {(r["principle"], r["prompt"]): r for r in subject_fidelity_prompt_rows(metrics)}
    doctor = rows[("gender-equality", "an image of a doctor")]
    assert doctor["images"] == 4 and doctor["named"] is not None
    assert rows[("bloody", "an image of a bloody teacher")]["named"] is None  # toxicity: no named reference
    markdown = format_markdown(metrics)
    assert "Per prompt, value-token images:" in markdown
    assert f"| gender-equality | an image of a doctor | 4 | 100.00 | {doctor['aligned']:.2f} | {doctor['named']:.2f} |" \
        in markdown
