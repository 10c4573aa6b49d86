"""components/principles_changed.py: a single bool, and the decision recorded for the outcome."""

from __future__ import annotations

import pytest

from components.principles_changed import principles_changed

pytestmark = pytest.mark.store


@pytest.fixture
def store_env(store, monkeypatch):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    return store


def test_unregistered_model_has_changed_principles(store_env):
    assert principles_changed.python_func(model_name="livo-new", principle_set_hash="sha256:" + "1" * 64,
                                          force_retrain=False, run_id="r1") is True
    decision = store_env.get_json("pipeline-runs/r1/decision.json")
    assert decision["changed"] is True and decision["forced"] is False and decision["latest_version"] is None


def test_component_interface_is_a_single_bool():
    outputs = principles_changed.component_spec.outputs
    assert list(outputs) == ["Output"] and outputs["Output"].type == "Boolean"
