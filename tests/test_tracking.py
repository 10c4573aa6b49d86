"""livo.tracking without a server: off costs nothing (mlflow never imported), an unreachable server costs one warning
line and seconds, the embedded SQLite store nests stage runs under one pipeline run per KFP run id.

Tests against a real `mlflow server` (training curves, evaluation metrics) are in tests/training/test_tracking_server.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livo import tracking
from livo.errors import ConfigError
from livo.training.launch import training_stage_run

TRACKING_ENV = ("LIVO_TRACKING", "MLFLOW_TRACKING_URI", "LIVO_MLFLOW_EXPERIMENT", "LIVO_KFP_RUN_ID",
                "LIVO_MLFLOW_PARENT_RUN_ID")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TRACKING_ENV}
    env.update(values)
    return env


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _clean_tracking(monkeypatch):
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)
    tracking.reset()
    yield
    tracking.reset()


def test_importing_livo_tracking_does_not_import_mlflow():
    done = _python("import sys, livo.tracking, livo.training.launch, livo.evaluation.tracked; "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'torch')))", _env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("how", ["config", "env"])
def test_tracking_none_never_imports_mlflow(tmp_path, how):
    """The whole tracking code path with tracking off: stage run, params, metrics, artifacts, tags, parent."""
    backend, env = ("none", _env()) if how == "config" else ("mlflow", _env(LIVO_TRACKING="none"))
    code = f"""
import json, sys
from livo import tracking
with tracking.stage_run("train", kfp_run_id="kfp-1", backend={backend!r}, params={{"a": 1}},
                        local_dir={str(tmp_path)!r}) as tracker:
    tracker.log_metrics({{"loss": 0.5}}, step=1)
    tracking.active().log_metrics({{"loss": 0.4}}, step=2)
    tracking.active().log_artifact({str(tmp_path / "x.txt")!r})
print(json.dumps({{"tagged": tracking.tag_parent("kfp-1", {{"k": "v"}}, backend={backend!r}),
                  "state": tracking.state(), "mlflow": sorted(m for m in sys.modules if m.startswith("mlflow"))}}))
"""
    done = _python(code, env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {"tagged": False, "mlflow": [], "state": {"backend": "none", "uri": "", "experiment_id": "",
                                                             "run_id": "", "parent_run_id": "", "status": "off",
                                                             "error": ""}}
    assert list(tmp_path.iterdir()) == []  # no store was created
    assert done.stderr == ""


def test_backend_resolution_and_uri_redaction(monkeypatch, tmp_path):
    assert tracking.resolve_backend(None) == "mlflow"
    assert tracking.resolve_backend("none") == "none"
    monkeypatch.setenv("LIVO_TRACKING", "none")
    assert tracking.resolve_backend("mlflow") == "none"  # the environment overrides the config
    monkeypatch.setenv("LIVO_TRACKING", "wandb")
    with pytest.raises(ConfigError, match="LIVO_TRACKING='wandb': tracking must be one of mlflow, none"):
        tracking.resolve_backend("mlflow")
    monkeypatch.delenv("LIVO_TRACKING")
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("LIVO_RUNS_DIR", str(tmp_path / "runs"))
    assert tracking.tracking_uri("s3://bucket/out") == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret@mlflow.example:5000/?token=abc&x=1")
    assert tracking.tracking_uri(tmp_path) == "https://alice:s3cret@mlflow.example:5000/?token=abc&x=1"
    assert tracking.redact_uri(tracking.tracking_uri()) == "https://***@mlflow.example:5000/?token=***&x=1"
    assert tracking.ui_command("sqlite:////r/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////r/mlflow.db"


def test_config_knobs(tmp_path):
    from livo.evaluation.config import EvaluationConfig
    from livo.presets import load_preset_config
    from livo.training.config import load_training_config

    assert load_training_config().tracking == "mlflow"
    assert load_training_config(overrides=["tracking=none"]).tracking == "none"
    with pytest.raises(ConfigError, match="tracking"):
        load_training_config(overrides=["tracking=wandb"])
    assert EvaluationConfig(tracking="none").tracking == "none"
    assert load_preset_config("tiny").tracking == "mlflow"
    assert load_preset_config("tiny", ["tracking=none"]).tracking == "none"


def test_trainer_stage_run_only_on_rank_zero(tmp_path):
    from livo.training.config import TrainingConfig

    config = TrainingConfig(output=str(tmp_path / "out"), tracking="mlflow")
    with training_stage_run(config, rank=1) as tracker:
        assert tracker is tracking.NULL_TRACKER and tracking.active() is tracking.NULL_TRACKER
    assert not (tmp_path / "out").exists()


UNREACHABLE = """
import json, sys, time
import mlflow.entities, mlflow.tracking  # imported before the clock: the bound below is on connecting, not importing
from livo import tracking
started = time.perf_counter()
for stage in ("train", "evaluate"):
    with tracking.stage_run(stage, kfp_run_id="kfp-9", params={"a": 1}) as tracker:
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
tagged = tracking.tag_parent("kfp-9", {"livo.registered_version": "m@v1"})
print(json.dumps({"seconds": time.perf_counter() - started, "state": tracking.state(), "tagged": tagged,
                  "enabled": tracking.active().enabled}))
"""


def test_unreachable_server_costs_one_warning_and_seconds(unused_tcp_port):
    uri = f"http://user:pw@127.0.0.1:{unused_tcp_port}"
    done = _python(UNREACHABLE, _env(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("[warning] livo.tracking: experiment tracking disabled for this process: opening "
                                  "the train run failed (unreachable)")
    assert "pw" not in done.stderr  # the URI is logged redacted
    assert out["state"]["status"] == "unreachable" and out["state"]["uri"] == f"http://***@127.0.0.1:{unused_tcp_port}"
    assert out["state"]["run_id"] == "" and "NewConnectionError" in out["state"]["error"]
    assert out["tagged"] is False and out["enabled"] is False
    # Refused connections with retries cut fail in milliseconds; mlflow's own retries (7, exponential back-off)
    # would take minutes, so the bound has room for a loaded CI machine.
    assert out["seconds"] < 10, out["seconds"]


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_store_nests_stages_under_one_pipeline_run(tmp_path):
    """Without MLFLOW_TRACKING_URI: a SQLite store in the given directory, artifacts beside it; two stages of one
    KFP run share their parent, another KFP run gets its own; tag_parent tags the right one."""
    from mlflow.tracking import MlflowClient

    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"x": 1}')
    started = time.perf_counter()
    with tracking.stage_run("train", kfp_run_id="kfp-a", params={"config.seed": 0, "odd:key": [1, 2]},
                            local_dir=tmp_path, tags={"livo.output": "o"}) as train:
        for step, loss in ((1, 0.5), (2, 0.25), (3, float("nan"))):
            tracking.active().log_metrics({"loss": loss, "lr": 1e-3}, step=step)
    first_run_seconds = time.perf_counter() - started
    with tracking.stage_run("evaluate", kfp_run_id="kfp-a", local_dir=tmp_path) as evaluate:
        evaluate.log_artifact(artifact)
    with tracking.stage_run("train", kfp_run_id="kfp-b", local_dir=tmp_path) as other:
        pass
    assert tracking.tag_parent("kfp-a", {"livo.registered_version": "livo-tiny@v2"}, local_dir=tmp_path)
    assert tracking.state()["status"] == "ok"
    pipeline_a = tracking.pipeline_run_id("kfp-a", local_dir=tmp_path)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("livo").experiment_id])}
    assert len(runs) == 5  # 2 pipeline runs + 3 stage runs
    t, e, o = runs[train.run_id], runs[evaluate.run_id], runs[other.run_id]
    parent = runs[t.data.tags["mlflow.parentRunId"]]
    assert parent.info.run_id == pipeline_a
    assert e.data.tags["mlflow.parentRunId"] == parent.info.run_id != o.data.tags["mlflow.parentRunId"]
    assert parent.data.tags["livo.kfp_run_id"] == "kfp-a" and parent.data.tags["livo.role"] == "pipeline"
    assert parent.data.tags["livo.registered_version"] == "livo-tiny@v2"
    assert "livo.registered_version" not in runs[o.data.tags["mlflow.parentRunId"]].data.tags
    assert t.data.tags["livo.kfp_run_id"] == "kfp-a" and t.data.tags["livo.stage"] == "train"
    assert t.info.status == "FINISHED" and t.data.params == {"config.seed": "0", "odd_key": "[1, 2]"}
    history = client.get_metric_history(t.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]  # NaN is not logged
    assert [a.path for a in client.list_artifacts(e.info.run_id)] == ["metrics.json"]
    assert (tmp_path / "mlartifacts").is_dir()
    assert first_run_seconds < 30


def test_a_failing_stage_is_marked_failed_and_raises_unchanged(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(ValueError, match="boom"), tracking.stage_run("train", local_dir=tmp_path) as tracker:
        raise ValueError("boom")
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "mlflow.parentRunId" not in run.data.tags  # no KFP run id: no parent


def test_an_mlflow_error_mid_run_disables_tracking_once(tmp_path, capfd):
    with tracking.stage_run("train", local_dir=tmp_path) as tracker:
        tracker.log_params({"a": "1"})
        tracker.log_params({"a": "2"})  # MLflow refuses to change a logged param: the first error
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert tracking.active() is tracking.NULL_TRACKER
    err = capfd.readouterr().err
    assert err.count("[warning]") == 1 and "logging params failed (failed)" in err
    assert tracking.state()["status"] == "failed"
    with tracking.stage_run("evaluate", local_dir=tmp_path) as later:  # stays off for the rest of the process
        assert later is tracking.NULL_TRACKER
    assert capfd.readouterr().err.count("[warning]") == 0
    assert Path(tmp_path / "mlflow.db").is_file()


def test_a_lazy_stage_run_refused_at_the_door_leaves_nothing(tmp_path):
    """Training opens its run lazily: input checks fail inside the block before any call, so no run, no store."""
    from livo.training.config import TrainingConfig

    config = TrainingConfig(output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="no dataset"), training_stage_run(config, rank=0) as tracker:
        assert tracker.enabled and not tracker.opened and tracking.active() is tracker
        raise ConfigError("no dataset")
    assert not (tmp_path / "out").exists()
    with training_stage_run(config, rank=0) as tracker:
        tracking.active().log_metrics({"loss": 2.0}, step=1)
        assert tracker.opened
    assert (tmp_path / "out" / "mlflow.db").is_file() and tracking.state()["run_id"] == tracker.run_id
