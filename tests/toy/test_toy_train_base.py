"""The base-model training script: a seed reproduces the weights; the output is a loadable pipeline folder."""

from __future__ import annotations

import json

import numpy as np

from livo.toy import world
from livo.toy.base_model import load_toy_pipeline
from livo.toy.train_base import main, sample_training_example

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
    pipe = load_toy_pipeline(weights_dir=tmp_path / "a")
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]
