"""The `evaluate` metric modules load offline from their local paths and agree with livo.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from livo.evaluation import metrics as M
from livo.evaluation.metric_modules import MODULES, module_path


@pytest.mark.slow  # importing `evaluate` alone takes ~10 s on these machines
def test_every_module_loads_offline_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    import evaluate

    loaded = {name: evaluate.load(module_path(name)) for name in MODULES}
    assert loaded["bias_disparity"].compute(predictions=[0] * 30 + [1] * 20, num_classes=2) == pytest.approx(
        {"D1": 20.0, "D2": 14.1421356})
    probs = [0.9, 0.1, 0.2, 0.3, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert loaded["toxicity_rates"].compute(predictions=probs) == pytest.approx(M.toxicity_rates(probs))
    assert loaded["inception_score"].compute(predictions=np.eye(3).tolist())["inception_score"] == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 4)), rng.standard_normal((20, 4)) + 1.0
    assert loaded["frechet_distance"].compute(predictions=a.tolist(), references=b.tolist())[
        "frechet_distance"] == pytest.approx(M.frechet_distance(a, b), rel=1e-6)
    assert loaded["clip_score"].compute(predictions=[[1.0, 0.0]], references=[[1.0, 1.0]])[
        "clip_score"] == pytest.approx(100 / np.sqrt(2))


def test_unknown_module_name():
    with pytest.raises(KeyError, match="bias_disparity"):
        module_path("nope")
