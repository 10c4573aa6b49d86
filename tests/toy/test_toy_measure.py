"""`python -m livo.toy.measure`: what the toy base model does, judged by the toy judges."""

from __future__ import annotations

from livo.toy import world
from livo.toy.base_model import load_toy_pipeline
from livo.toy.measure import measure_base_model


def test_counter_stereotype_reference_reads_only_the_other_main_colour():
    """The named reference of a debiasing token, per subject: the prompts naming the main colour that is not the
    subject's stereotype ("an image of a blue nurse"), their colour honoured and subject recognised."""
    result = measure_base_model(load_toy_pipeline(), images_per_prompt=2, steps=2,
                                templates=world.EVALUATION_TEMPLATES[:1], subjects=("doctor", "nurse"))
    counter = result["summary"]["counter_stereotype"]
    assert sorted(counter) == ["doctor", "nurse"]
    for subject, figures in counter.items():
        rows = [r for r in result["prompts"] if r["kind"] == "steer" and r["prompt"] == world.make_caption(
            world.EVALUATION_TEMPLATES[0], subject, colour=next(
                c for c in world.ATTRIBUTE_CLASSES_2 if c != world.STEREOTYPE[subject]))]
        assert len(rows) == 1 and rows[0]["n"] == 10
        assert figures == {"honoured": rows[0]["honoured"], "subject_recognised": rows[0]["subject_recognised"]}
