"""The trainer on an SDXL-family base model (issue 18): the toy SDXL's value encoder (two encoder copies) trains
through the same DeepSpeed path with SDXL's added conditions, exports in the SDXL layout, and leaves every frozen
module — both text encoders included — unchanged."""

from __future__ import annotations

import pytest
from training_helpers import run_in_process, tiny_config


@pytest.mark.slow
def test_training_on_the_toy_sdxl_exports_an_sdxl_value_encoder(tmp_path, image_dataset, single_rank_env):
    import torch

    from livo.modeling import LiVOPipeline, SDXLValueEncoder, ValueEncoder
    from livo.presets import load_pipeline

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(image_dataset, output, model="toy-sdxl", max_steps=2,
                                         per_device_batch_size=2, checkpoint={"every_steps": 2}))
    assert trainer.result.exit_code == 0 and trainer.models.text_encoder_2 is not None
    # candidate (b), the default, starts from the value text's pooled output: the value passes are not yet the base
    # model's, so the first-hinge term is large at first
    assert 0 < trainer.result.metrics["loss"] < 100
    encoder = ValueEncoder.from_pretrained(output / "value_encoder")
    assert isinstance(encoder, SDXLValueEncoder) and encoder.shift_pooled
    assert sorted(p.name for p in (output / "value_encoder").iterdir()) == [
        "livo_value_encoder.json", "text_encoder", "text_encoder_2"]
    base = load_pipeline("toy-sdxl")
    start = SDXLValueEncoder.from_text_encoders(base.text_encoder, base.text_encoder_2)
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert any(k.startswith("text_model.") for k in changed) and any(k.startswith("text_model_2.") for k in changed)
    LiVOPipeline(base, encoder)  # fits the base it was trained on


@pytest.mark.slow
def test_distillation_is_refused_on_sdxl(tmp_path, image_dataset, single_rank_env):
    from livo.errors import ConfigError
    from livo.training.trainer import load_models

    config = tiny_config(image_dataset, tmp_path / "run", model="toy-sdxl", loss={"distill_weight": 10.0})
    with pytest.raises(ConfigError, match="distill_weight is not supported on SDXL"):
        load_models(config, "cpu", "fp32", 0)


@pytest.mark.slow
@pytest.mark.parametrize("shift_pooled", [True, False])
def test_the_pooled_choice_survives_the_export(tmp_path, image_dataset, single_rank_env, shift_pooled):
    """Candidate (b) (`sdxl_shift_pooled=true`, the default) exports an encoder that shifts the pooled embedding at
    inference too (its marker says so), not one that silently falls back to candidate (a); and (a) stays (a)."""
    import json

    from livo.modeling import SDXLValueEncoder, ValueEncoder

    output = tmp_path / "run"
    trainer = run_in_process(tiny_config(image_dataset, output, model="toy-sdxl", max_steps=1, per_device_batch_size=2,
                                         checkpoint={"every_steps": 1}, sdxl_shift_pooled=shift_pooled))
    assert trainer.result.exit_code == 0
    marker = json.loads((output / "value_encoder" / "livo_value_encoder.json").read_text())
    assert marker["pooled"] == ("value" if shift_pooled else "prompt")
    encoder = ValueEncoder.from_pretrained(output / "value_encoder")
    assert isinstance(encoder, SDXLValueEncoder) and encoder.shift_pooled is shift_pooled
