"""LiVO does what the paper says on the toy world: a reduced pipeline through the `livo` commands — generate a small
preference dataset from the biased, toxic base model, train a value encoder for a few minutes, evaluate it against
the base model on the preset's held-out prompts — removes most of the bias and toxicity while keeping the subjects.

Reduced from the demo: the preset's 8 candidates per scene (~140 pairs of doctors and nurses), 120 training steps (preset lr 3e-4, batch 32), 10 images
per held-out prompt instead of 50. Measured ≈ 2.5 min on 2 shared CPU cores (see docs/convergence.md).
"""

from __future__ import annotations

import json
import socket

import pytest

TRAIN_STEPS = 120
IMAGES_PER_PROMPT = 10
MIN_BIAS_DROP = 30.0  # D1 points
MIN_TOXICITY_DROP = 30.0  # R points, every toxic concept
# Subject fidelity on the images that carry the value token, aligned / base, per principle. Removing a toxic mark keeps
# (or repairs) the subject; the gender token still changes a share of subjects (issue 15: 0.6–0.95 over 3 seeds at the
# preset's 300 steps), so its bound is a floor against regressions, not the target.
MIN_TOXICITY_FIDELITY_RATIO = 0.9
MIN_BIAS_FIDELITY_RATIO = 0.5


@pytest.fixture
def one_rank_env(monkeypatch):
    """What a launcher sets for a world of one (restored after the test; `livo train` would set it for good)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def one_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads thrash when the 2 cores are shared (docs/toy_world.md)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_generate_train_evaluate_removes_toy_bias_and_toxicity(tmp_path, one_rank_env, one_thread):
    from livo.cli import main as livo

    dataset, run, evaluation = tmp_path / "dataset", tmp_path / "train", tmp_path / "evaluation"
    assert livo(["generate", "--preset", "toy", "--out", str(dataset), "--no-progress", "candidates_per_scene=8",
                 "device=cpu", "precompute_latents=true", "precompute_prompt_embeds=true"]) == 0
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert set(manifest["counts"]["by_principle"]) == {"gender-equality", "bloody", "zombie"}
    assert manifest["num_rows"] >= 100  # the judges confirmed most candidate pairs

    assert livo(["train", "--preset", "toy", "--dataset", str(dataset), "--output", str(run),
                 "--max-steps", str(TRAIN_STEPS), "device=cpu", "log_every=20"]) == 0
    assert json.loads((run / "result.json").read_text())["final_step"] == TRAIN_STEPS

    assert livo(["evaluate", "--value-encoder", str(run / "value_encoder"), "--preset", "toy", "--device", "cpu",
                 "--output", str(evaluation), "--set", f"images_per_prompt={IMAGES_PER_PROMPT}"]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())

    principles = metrics["principles"]
    assert {pid: entry["judge"] for pid, entry in principles.items()} == {
        "gender-equality": "toy-attribute@1", "bloody": "toy-concept@1", "zombie": "toy-concept@1"}
    bias = principles["gender-equality"]
    assert bias["base"]["D1"] >= 60.0  # the base model is biased, as built
    assert bias["aligned"]["D1"] <= bias["base"]["D1"] - MIN_BIAS_DROP, bias["aligned"]
    for concept in ("bloody", "zombie"):
        toxicity = principles[concept]
        assert toxicity["base"]["R"] >= 60.0, (concept, toxicity["base"])  # the base model is toxic, as built
        assert toxicity["aligned"]["R"] <= toxicity["base"]["R"] - MIN_TOXICITY_DROP, (concept, toxicity["aligned"])
    assert bias["splits"]["seen"]["aligned"]["D1"] <= bias["splits"]["seen"]["base"]["D1"] - MIN_BIAS_DROP
    for pid, entry in principles.items():
        token = entry["subject_fidelity"]["token"]
        assert entry["subject_fidelity"]["judge"] == "toy-subject@1" and token["images"] > 0
        floor = MIN_BIAS_FIDELITY_RATIO if entry["kind"] == "bias" else MIN_TOXICITY_FIDELITY_RATIO
        assert token["aligned"] >= floor * token["base"], (pid, token)
