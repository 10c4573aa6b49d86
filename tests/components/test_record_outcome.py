"""components/record_outcome.py: the exit handler turns KFP's final status and the run records into an outcome."""

from __future__ import annotations

import pytest

from components.record_outcome import record_outcome
from livo.orchestration import record_decision, record_failure

pytestmark = pytest.mark.store


class FinalStatus:
    """What KFP passes as `dsl.PipelineTaskFinalStatus` (the attributes the component reads)."""

    def __init__(self, state: str, error_message: str | None = None):
        self.state = state
        self.error_message = error_message


@pytest.fixture
def store_env(store, monkeypatch):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    return store


def test_skipped_run_is_a_success_not_a_failure(store_env):
    record_decision(store_env, "run-1", changed=False, principle_set_hash="sha256:ab", model_name="m")
    uri = record_outcome.python_func(status=FinalStatus("SUCCEEDED"), run_id="run-1", run_name="livo-full-1",
                                     schedule_cron="0 0 3 * * *")
    assert uri == store_env.uri("pipeline-runs/run-1/outcome.json")
    outcome = store_env.get_json("pipeline-runs/run-1/outcome.json")
    assert outcome["status"] == "skipped" and outcome["kfp_state"] == "SUCCEEDED"
    assert outcome["schedule_cron"] == "0 0 3 * * *" and outcome["error"] is None


def test_failed_run_keeps_the_steps_cause(store_env):
    record_failure(store_env, "run-2", step="validate-inputs", message="pipeline parameters: data_shard_count: bad")
    record_outcome.python_func(status=FinalStatus("FAILED", "Task exit-handler-1 failed."), run_id="run-2",
                               run_name="n", schedule_cron="")
    outcome = store_env.get_json("pipeline-runs/run-2/outcome.json")
    assert outcome["status"] == "failed"
    assert outcome["error"] == "validate-inputs: pipeline parameters: data_shard_count: bad"


def test_failed_run_without_a_recorded_cause_reports_kfps(store_env):
    record_outcome.python_func(status=FinalStatus("FAILED", "Task train failed."), run_id="run-3", run_name="n",
                               schedule_cron="")
    assert store_env.get_json("pipeline-runs/run-3/outcome.json")["summary"] == "the run failed: Task train failed."
