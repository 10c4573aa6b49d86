"""benchmarks/token_from_step.py (issue 15's diagnostic): one JSON line; a token that starts after the last step is
the base model, whatever the value encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, noise: float) -> dict:
    from livo.modeling import ValueEncoder
    from livo.presets import load_pipeline

    encoder = ValueEncoder.from_text_encoder(load_pipeline("toy").text_encoder)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(noise * torch.randn(parameter.shape, generator=generator))
    encoder.save_pretrained(tmp_path / name)
    # a subprocess, as a user runs it (importing it here would put benchmarks/ on sys.path, where evaluate.py shadows
    # the `evaluate` library)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "token_from_step.py"), "--value-encoder",
                           str(tmp_path / name), "--starts", "0", "1", "3", "--images", "2", "--steps", "3"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_token_that_never_starts_is_the_base_model(tmp_path):
    weak, strong = _run(tmp_path, "weak", 0.0), _run(tmp_path, "strong", 0.5)
    assert weak["command"].startswith("python benchmarks/token_from_step.py --value-encoder")
    for record in (weak, strong):
        assert set(record["token_from_step"]) == {"0", "1", "3"}
        assert set(record["token_from_step"]["0"]) == {"doctor", "nurse", "engineer", "teacher"}
    assert weak["token_from_step"]["3"] == strong["token_from_step"]["3"]  # k = steps: no token at all
    assert weak["token_from_step"]["0"] != strong["token_from_step"]["0"]  # a scrambled token changes the images
