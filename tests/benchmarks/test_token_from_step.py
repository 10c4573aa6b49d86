"""benchmarks/token_from_step.py (issue 15's diagnostic): one JSON line; a token that starts after the last step is
the base model, whatever the value encoder."""

from __future__ import annotations

import json

import torch


def _run(tmp_path, name: str, noise: float, capsys) -> dict:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import token_from_step

    from livo.modeling import ValueEncoder
    from livo.presets import load_pipeline

    encoder = ValueEncoder.from_text_encoder(load_pipeline("toy").text_encoder)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    encoder.save_pretrained(tmp_path / name)
    assert token_from_step.main(["--value-encoder", str(tmp_path / name), "--starts", "0", "1", "3",
                                 "--images", "2", "--steps", "3"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_token_that_never_starts_is_the_base_model(tmp_path, capsys):
    weak, strong = _run(tmp_path, "weak", 0.0, capsys), _run(tmp_path, "strong", 0.5, capsys)
    assert weak["command"].startswith("python benchmarks/token_from_step.py --value-encoder")
    for record in (weak, strong):
        assert set(record["token_from_step"]) == {"0", "1", "3"}
        assert set(record["token_from_step"]["0"]) == {"doctor", "nurse", "engineer", "teacher"}
    assert weak["token_from_step"]["3"] == strong["token_from_step"]["3"]  # k = steps: no token at all
    assert weak["token_from_step"]["0"] != strong["token_from_step"]["0"]  # a scrambled token changes the images
