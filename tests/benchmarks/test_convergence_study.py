"""The fidelity study's reporting (benchmarks/convergence.py --study): numbers per principle and split, never pooled."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "convergence", Path(__file__).resolve().parents[2] / "benchmarks" / "convergence.py")
convergence = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("convergence", convergence)  # dataclasses look their module up while the class is built
SPEC.loader.exec_module(convergence)


def _fidelity(token_base, token_aligned, images=20):
    block = {"images": images, "base": token_base, "aligned": token_aligned}
    return {"judge": "toy-subject@1", "all": block, "token": block, "no_token": {"images": 0, "base": None,
                                                                                   "aligned": None}}


def _metrics(gender_token_aligned):
    def principle(kind, metric, base, aligned, fidelity, splits):
        return {"kind": kind, "available": True, "base": {metric: base}, "aligned": {metric: aligned},
                "subject_fidelity": fidelity, "splits": splits}
    return {
        "principles": {
            "gender-equality": principle("bias", "D1", 97.5, 27.5, _fidelity(97.5, gender_token_aligned), {
                "seen": {"base": {"D1": 95.0}, "aligned": {"D1": 5.0}, "subject_fidelity": _fidelity(100.0, 60.0)},
                "unseen": {"base": {"D1": 100.0}, "aligned": {"D1": 50.0}, "subject_fidelity": _fidelity(95.0, 95.0)}}),
            "bloody": {**principle("toxicity", "R", 97.5, 2.5, _fidelity(30.0, 80.0, 40), {}),
                       "control": {"R": 45.0}},
        },
        "quality": {"FID": {"aligned": 1.5}}, "timing": {"generation_s": 1.0},
    }


def test_summarize_keeps_fidelity_per_principle_and_split():
    point = convergence.summarize(_metrics(62.5))
    assert point["bias"] == {"gender-equality": 27.5} and point["toxicity"] == {"bloody": 2.5}
    assert point["fidelity"]["gender-equality"]["token"]["aligned"] == 62.5
    assert point["splits"]["gender-equality"]["unseen"] == {
        "metric": "D1", "base": 100.0, "aligned": 50.0, "control": None, "fidelity": {
            "all": {"images": 20, "base": 95.0, "aligned": 95.0}, "token": {"images": 20, "base": 95.0,
                                                                             "aligned": 95.0},
            "no_token": {"images": 0, "base": None, "aligned": None}}}
    # The encoding control, where the evaluation drew it: the base model unpadded on the token images' seeds.
    assert point["control"] == {"bloody": 45.0}
    # The pooled number of the older LiVO-vs-DPO curves is the image-weighted mean of the principles' "all" blocks.
    assert point["subject_fidelity"] == pytest.approx((62.5 * 20 + 80.0 * 40) / 60)
    assert convergence.fidelity_ratio({"images": 20, "base": 97.5, "aligned": 62.5}) == pytest.approx(0.641, abs=1e-3)
    assert convergence.fidelity_ratio({"images": 0, "base": None, "aligned": None}) is None


def test_study_table_marks_a_principle_whose_token_damages_the_subject():
    start = convergence.summarize(_metrics(97.5))
    start["base_bias"], start["base_toxicity"] = {"gender-equality": 97.5}, {"bloody": 97.5}
    results = {"seeds": [{"seed": 0, "dataset": {"pairs": {"gender-equality": {"aligned_subject_ok": 97.7,
                                                                                "violating_subject_ok": 95.3}}},
                          "points": [start, convergence.summarize(_metrics(62.5))]}]}
    lines = convergence.study_table(results).splitlines()
    gender = next(line for line in lines if "gender-equality" in line)
    bloody = next(line for line in lines if "| bloody |" in line)
    assert "97.5 → 62.5 (64.1 %)" in gender and "60.0 / 100.0" in gender and "97.7 / 95.3" in gender
    assert gender.endswith("**no** |") and bloody.endswith("yes |")  # D1 27.5 > 20 and ratio 0.64 < 0.9
    assert "| R 97.5 → 2.5 (control 45.0) |" in bloody and "(control" not in gender


def test_summary_line_carries_command_hardware_and_load_for_both_kinds():
    recorded = {"command": "python convergence.py --study s", "hardware": {"cpu_count": 2},
                "load_average_before": [0.1, 0.2, 0.3], "load_average_after": [1.0, 1.1, 1.2], "total_s": 9.5}
    study = convergence.summary_line({**recorded, "study": "s", "seeds": [{"seed": 0}]}, {"results": "r.json"})
    assert study["benchmark"] == "convergence-study" and study["seeds"] == [{"seed": 0}]
    assert study["load_average_after"] == [1.0, 1.1, 1.2] and study["command"].endswith("--study s")
    comparison = convergence.summary_line(
        {**recorded, "target": {"first_step": {"livo": 60}, "stays_below_after": {"livo": True}},
         "runs": [{"name": "livo", "train_seconds": 12.0}]}, {"results": "r.json", "plots": ["a.png"]})
    assert comparison["benchmark"] == "convergence" and comparison["train_seconds"] == {"livo": 12.0}
    assert comparison["plots"] == ["a.png"] and comparison["total_s"] == 9.5
    # results.json files from before the load averages were recorded: null, not an error (--from-results)
    old = convergence.summary_line({"target": {"first_step": {}, "stays_below_after": {}}, "runs": []}, {})
    assert old["load_average_before"] is None and old["command"] is None
    json.dumps(old)


def test_study_table_shows_the_ratio_to_the_named_reference():
    """The evaluation's named reference (the base model told the attribute) gets its own column, per split."""
    start = convergence.summarize(_metrics(97.5))
    start["base_bias"], start["base_toxicity"] = {"gender-equality": 97.5}, {"bloody": 97.5}
    last = _metrics(62.5)
    gender = last["principles"]["gender-equality"]
    gender["subject_fidelity"]["token"] = {"images": 20, "base": 97.5, "aligned": 62.5, "named": 80.0}
    gender["splits"]["seen"]["subject_fidelity"]["token"] = {"images": 10, "base": 100.0, "aligned": 60.0,
                                                             "named": 75.0}
    results = {"seeds": [{"seed": 0, "dataset": {}, "points": [start, convergence.summarize(last)]}]}
    line = next(row for row in convergence.study_table(results).splitlines() if "gender-equality" in row)
    assert "| 78.1 % (80.0 / –) |" in line  # 62.5 / 80 overall; 60 / 75 seen; no named reference on unseen
    bloody = next(row for row in convergence.study_table(results).splitlines() if "| bloody |" in row)
    assert "| – |" in bloody


def test_freeze_value_text_trains_only_the_time_shift_head(monkeypatch):
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    monkeypatch.setattr(ValueEncoder, "from_text_encoder", ValueEncoder.__dict__["from_text_encoder"])  # restored
    convergence.freeze_value_text()
    encoder = ValueEncoder.from_text_encoder(build_tiny_pipeline(0).text_encoder, time_shift_dim=128)
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"time_shift.weight", "time_shift.bias"}


def test_freeze_value_embeddings_keeps_the_word_rows_and_trains_the_layers(monkeypatch):
    """--freeze-value-embeddings: an optimiser step on the value token moves the encoder's layers and leaves every
    word embedding exactly the base's (the rows of the words the preference data uses included)."""
    import torch

    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    monkeypatch.setattr(ValueEncoder, "from_text_encoder", ValueEncoder.__dict__["from_text_encoder"])  # restored
    convergence.freeze_value_embeddings()
    text_encoder = build_tiny_pipeline(0).text_encoder
    encoder = ValueEncoder.from_text_encoder(text_encoder)
    frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen == {"text_model.embeddings.token_embedding.weight"}
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    optimiser = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    encoder(torch.tensor([[0, 5, 9, 12, 1]])).square().sum().backward()
    optimiser.step()
    changed = {name for name, p in encoder.named_parameters() if not torch.equal(p, before[name])}
    assert "text_model.embeddings.token_embedding.weight" not in changed
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in changed
    assert torch.equal(encoder.text_model.get_input_embeddings().weight, text_encoder.get_input_embeddings().weight)


def test_model_option_swaps_only_the_base_model(tmp_path):
    """--model DIR: the preset with another base model (a toy base trained with other recipe options); judges,
    principles, gates and training settings stay the preset's, and the file means the same from any directory."""
    from livo.presets import load_preset_config

    weights = tmp_path / "base"
    weights.mkdir()
    path = convergence.preset_with_model("toy", str(weights), tmp_path / "work")
    derived, toy = load_preset_config(path), load_preset_config("toy")
    assert derived.model.source == str(weights.resolve())
    assert derived.principles_path() == toy.principles_path()
    assert derived.model_dump(exclude={"model"}) == toy.model_dump(exclude={"model"})
    assert convergence.preset_with_model(path, "toy", tmp_path / "again") != path  # a YAML path works too
    assert load_preset_config(str(tmp_path / "again" / "preset.yaml")).model.source == "toy"
