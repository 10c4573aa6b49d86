"""benchmarks/token_attention.py (issue 15's diagnostic): one JSON line per run, the token's attention share per
occupation, the base model's images carry no token, the `partner` mode borrows the trained occupation's token, and
the token geometry places the trained occupations at the ends of its axis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_token_attention_reports_the_share_per_mode_and_occupation(tmp_path):
    from livo.modeling import ValueEncoder
    from livo.presets import load_pipeline

    ValueEncoder.from_text_encoder(load_pipeline("toy").text_encoder).save_pretrained(tmp_path / "enc")
    # a subprocess, as a user runs it (importing it here would put benchmarks/ on sys.path, where evaluate.py shadows
    # the `evaluate` library)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "token_attention.py"), "--value-encoder",
                           str(tmp_path / "enc"), "--images", "2", "--steps", "3",
                           "--model", str(REPO / "livo" / "toy" / "weights")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["command"].startswith("python benchmarks/token_attention.py --value-encoder")
    modes = record["token_attention"]
    assert record["model"].endswith("livo/toy/weights")
    assert set(modes) == {"base", "method", "additive", "partner"}
    # a trained occupation is its own partner: the same token on the same seeds draws the same images
    for name in ("doctor", "nurse"):
        assert modes["partner"][name] == modes["method"][name]
    geometry = record["token_geometry"]
    assert geometry["doctor"] == {"tau": 0.5, "cos_axis": 1.0} and geometry["nurse"] == {"tau": -0.5, "cos_axis": 1.0}
    for name in ("engineer", "teacher"):  # an unseen occupation gets the trained one's token: another key, another share
        assert modes["partner"][name]["token_share"] != modes["method"][name]["token_share"]
        assert -1.0 <= geometry[name]["cos_axis"] <= 1.0 and geometry[name]["tau"] not in (0.5, -0.5)
    for mode, per_subject in modes.items():
        assert set(per_subject) == {"doctor", "nurse", "engineer", "teacher"}
        for figures in per_subject.values():
            assert 0.0 <= figures["orange"] <= 1.0 and 0.0 <= figures["subject"] <= 1.0
            if mode == "base":
                assert figures["token_share"] is None
            else:  # one key among the prompt's: a real share of every query's attention, never all of it
                assert 0.0 < figures["token_share"] < 1.0


def test_token_attention_refuses_an_encoder_with_a_time_embedding_head(tmp_path):
    """Its shift acts outside the attention the script samples through: exit 2, one line, before any image."""
    from livo.modeling import ValueEncoder, time_embedding_dim
    from livo.presets import load_pipeline

    pipe = load_pipeline("toy")
    encoder = ValueEncoder.from_text_encoder(pipe.text_encoder, time_shift_dim=time_embedding_dim(pipe.unet))
    encoder.save_pretrained(tmp_path / "enc")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "token_attention.py"), "--value-encoder",
                           str(tmp_path / "enc")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 2
    assert "time-embedding head" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
