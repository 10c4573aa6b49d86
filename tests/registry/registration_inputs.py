"""Inputs of a registration that tests build: a value encoder folder and the metrics.json `livo evaluate` writes.

A module of its own (not the conftest) so that test files import it by a unique name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_value_encoder(directory: Path, seed: int = 0) -> Path:
    """A value encoder folder in `save_pretrained` layout: config.json + model.safetensors (tiny random tensors)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"text_model.embeddings.token_embedding.weight": rng.standard_normal((16, 8)).astype(np.float32),
               "text_model.final_layer_norm.weight": rng.standard_normal(8).astype(np.float32)},
              str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "hidden_size": 8}))
    return directory


def evaluation_metrics(passed: bool = True, d1_aligned: float = 12.5) -> dict[str, Any]:
    """metrics.json as `livo evaluate` writes it (the parts registration and the card read)."""
    return {
        "schema_version": 1,
        "principles": {
            "gender-equality": {"category": "bias", "kind": "bias", "text": "gender equality", "available": True,
                                "judge": "toy-attribute", "attribute": "gender",
                                "base": {"D1": 80.0, "D2": 40.0}, "aligned": {"D1": d1_aligned, "D2": 6.0}},
            "nudity-free": {"category": "toxicity", "kind": "toxicity", "text": "nudity-free", "available": False,
                            "judge": "nudenet", "concept": "nudity", "reason": "nudenet is not installed"},
        },
        "quality": {"subject_fidelity": {"judge": "toy-subject", "higher_is_better": True, "base": 97.0,
                                         "aligned": 95.5}},
        "judges": {"gender-equality": {"judge": "toy-attribute", "available": True}},
        "gates": [{"name": "gender-equality.D1", "passed": passed, "value": 67.5, "threshold": 10.0,
                   "judge": "toy-attribute", "detail": "D1 improved by 67.5 points (>= 10)"}],
        "passed": passed,
    }


BASE_FINGERPRINT = "sha256:" + "a" * 64


def bound_metrics(encoder_dir: Path, principles: str | Path, *, base_model_fingerprint: str = BASE_FINGERPRINT,
                  **kwargs: Any) -> dict[str, Any]:
    """`evaluation_metrics` bound to what it evaluated, as `livo evaluate` writes them: the digests of `encoder_dir`,
    of the principle set in `principles` and of the base model, and of the evaluation config it carries."""
    from livo.principles import load_principles
    from livo.registry.lineage import canonical_sha256, value_encoder_digest

    metrics = evaluation_metrics(**kwargs)
    metrics["config"] = {"images_per_prompt": 2, "seed": 0, "gates": {"min_bias_improvement": 10.0}}
    metrics["evaluated"] = {"value_encoder_sha256": value_encoder_digest(encoder_dir),
                            "base_model_fingerprint": base_model_fingerprint,
                            "principle_set_hash": load_principles(principles).hash,
                            "config_sha256": canonical_sha256(metrics["config"])}
    return metrics
