"""Experiment tracking against a real `mlflow server` on loopback (not a mock): a tiny training run's curves and
params, an evaluation's metrics, judges and artifacts, both nested under the pipeline run of their KFP run id;
`tracking: none` trains without importing mlflow; an unreachable server leaves the evaluation intact and says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from training_helpers import PRINCIPLE_SET_HASH, free_port, run_in_process, tiny_config

from livo import tracking
from livo.training.launch import training_stage_run

REPO = Path(__file__).resolve().parents[2]
TRACKING_ENV = ("LIVO_TRACKING", "MLFLOW_TRACKING_URI", "LIVO_MLFLOW_EXPERIMENT", "LIVO_KFP_RUN_ID",
                "LIVO_MLFLOW_PARENT_RUN_ID")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """`mlflow server` (the venv's) on a free loopback port with a SQLite backend; its URI once /health answers."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and any worker it started
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


@pytest.fixture
def tracking_env(monkeypatch):
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)
    tracking.reset()
    yield monkeypatch
    tracking.reset()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@pytest.mark.slow
def test_training_logs_curves_and_params_under_the_pipeline_run(tmp_path, latent_dataset, single_rank_env,
                                                                  mlflow_server, tracking_env):
    tracking_env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracking_env.setenv("LIVO_KFP_RUN_ID", "kfp-train-1")  # as the train component / TrainJob pass it
    output = tmp_path / "run"
    config = tiny_config(latent_dataset, output, max_steps=6, log_every=2, checkpoint={"every_steps": 6})
    with training_stage_run(config) as tracker:
        trainer = run_in_process(config)
    assert trainer.result.exit_code == 0 and tracker.enabled and tracking.state()["status"] == "ok"

    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]  # three log windows
    client = _client(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    for name in ("loss", "hinge_w", "hinge_l", "hinge_w_active", "hinge_l_active", "lr", "grad_norm",
                 "samples_per_s", "theta_w", "margin"):
        history = client.get_metric_history(tracker.run_id, name)
        assert [m.step for m in history] == [2, 4, 6], name
        assert [m.value for m in history] == pytest.approx([line[name] for line in lines], rel=1e-12), name
    for line in lines:  # the share of samples whose hinge is active is a share, and the LiVO loss is their sum
        assert 0.0 <= line["hinge_w_active"] <= 1.0 and 0.0 <= line["hinge_l_active"] <= 1.0
        assert line["hinge_w_active"] * 8 == pytest.approx(round(line["hinge_w_active"] * 8))  # 2 steps × 4 samples
        assert line["hinge_w_active"] > 0 or line["hinge_w"] == 0
    params = run.data.params
    assert params["principle_set_hash"] == PRINCIPLE_SET_HASH
    assert params["dataset.uri"] == trainer.dataset.uri
    assert params["dataset.manifest_sha256"] == trainer.dataset.manifest_sha256
    assert params["config.max_steps"] == "6" and params["config.optimizer.lr"] == "0.001"
    assert params["config.loss.beta"] == "1000.0" and params["global_batch_size"] == "4"
    assert params["config_fingerprint"] == config.fingerprint()
    # Nested under the pipeline run of its KFP run id.
    tags = run.data.tags
    assert tags["livo.kfp_run_id"] == "kfp-train-1" and tags["livo.stage"] == "train"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["livo.kfp_run_id"] == "kfp-train-1" and parent.data.tags["livo.role"] == "pipeline"
    assert tracking.tag_parent("kfp-train-1", {"livo.registered_version": "livo-tiny@v1"})
    assert client.get_run(parent.info.run_id).data.tags["livo.registered_version"] == "livo-tiny@v1"


NO_MLFLOW_TRAINING = """
import sys
from livo.cli import main
code = main(["train", "--model", "tiny", "--dataset", sys.argv[1], "--output", sys.argv[2], "--max-steps", "2",
             "per_device_batch_size=2", "log_every=1", "checkpoint.every_steps=2", "tracking=none"])
print("MLFLOW_MODULES", sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"))
sys.exit(code)
"""


@pytest.mark.slow
def test_livo_train_with_tracking_none_never_imports_mlflow(tmp_path, latent_dataset, mlflow_server):
    env = {k: v for k, v in os.environ.items() if k not in TRACKING_ENV}
    env.update(MLFLOW_TRACKING_URI=mlflow_server, LIVO_KFP_RUN_ID="kfp-off", MASTER_PORT=str(free_port()))
    done = subprocess.run([sys.executable, "-c", NO_MLFLOW_TRAINING, latent_dataset, str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLFLOW_MODULES []" in done.stdout
    assert len((tmp_path / "out" / "train_log.jsonl").read_text().splitlines()) == 2  # still logged locally
    assert not list(tmp_path.rglob("mlflow.db"))
    runs = _client(mlflow_server).search_runs(
        [e.experiment_id for e in _client(mlflow_server).search_experiments()],
        filter_string="tags.`livo.kfp_run_id` = 'kfp-off'")
    assert runs == []


def _encoder_with_training_log(root: Path) -> tuple[Path, list[dict]]:
    """A value encoder in the training output layout (<out>/value_encoder + <out>/train_log.jsonl)."""
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    out = root / "train-out"
    ValueEncoder.from_text_encoder(build_tiny_pipeline(0).text_encoder).save_pretrained(out / "value_encoder")
    records = [{"step": 1, "loss": 1.5, "hinge_w": 1.0, "hinge_l": 0.5, "hinge_w_active": 1.0, "hinge_l_active": 0.5},
               {"step": 2, "loss": 1.25, "hinge_w": 0.9, "hinge_l": 0.35, "hinge_w_active": 0.75,
                "hinge_l_active": 0.25}]
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out / "value_encoder", records


@pytest.mark.slow
def test_evaluation_logs_metrics_judges_and_artifacts(tmp_path, mlflow_server, tracking_env):
    from livo.evaluation.protocol import evaluate_candidate

    tracking_env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    encoder, records = _encoder_with_training_log(tmp_path)
    result = evaluate_candidate(str(encoder), preset="tiny", device="cpu", output_dir=str(tmp_path / "eval"),
                                run_id="kfp-eval-1")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["run"] == {"run_id": "kfp-eval-1"}
    assert written["training_log"] == records
    state = written["tracking"]
    assert state["backend"] == "mlflow" and state["status"] == "ok" and state["uri"] == mlflow_server
    assert state["error"] == "" and state["run_id"] and state["experiment_id"]

    client = _client(mlflow_server)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["livo.stage"] == "evaluate"
    assert run.data.tags["livo.kfp_run_id"] == "kfp-eval-1"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["livo.kfp_run_id"] == "kfp-eval-1" and state["parent_run_id"] == parent.info.run_id
    logged = run.data.metrics
    principles = {pid: e for pid, e in result.metrics["principles"].items() if e["available"]}
    assert principles
    for pid, entry in principles.items():
        keys = ("D1", "D2") if entry["kind"] == "bias" else ("R", "S", "Max", "Prob")
        for key in keys:
            assert logged[f"{pid}.{key}"] == pytest.approx(entry["aligned"][key])
            assert logged[f"{pid}.{key}.base"] == pytest.approx(entry["base"][key])
            assert logged[f"{pid}.{key}.improvement"] == pytest.approx(entry["base"][key] - entry["aligned"][key])
        assert run.data.params[f"judge.{pid}"] == entry["judge"]
    assert logged["passed"] == (1.0 if result.metrics["passed"] else 0.0)
    assert run.data.params["context.principle_set_hash"] == result.metrics["context"]["principle_set_hash"]
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert artifacts == ["metrics.json", "report.html"]
    downloaded = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "dl"))
    assert json.loads(Path(downloaded).read_text())["evaluated"] == written["evaluated"]


@pytest.mark.slow
def test_unreachable_server_evaluation_finishes_and_says_so(tmp_path, tracking_env, capfd):
    from livo.evaluation.protocol import evaluate_candidate

    port = free_port()  # nothing listens there
    tracking_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    encoder, records = _encoder_with_training_log(tmp_path)
    capfd.readouterr()
    started = time.perf_counter()
    result = evaluate_candidate(str(encoder), preset="tiny", device="cpu", output_dir=str(tmp_path / "eval"),
                                run_id="kfp-down")
    elapsed = time.perf_counter() - started
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("[warning] livo.tracking")]
    assert len(warnings) == 1 and "(unreachable)" in warnings[0], err[-2000:]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["tracking"]["status"] == "unreachable" and written["tracking"]["run_id"] == ""
    assert f"127.0.0.1:{port}" in written["tracking"]["uri"] and written["tracking"]["error"]
    assert written["training_log"] == records and written["passed"] == result.metrics["passed"]
    assert (tmp_path / "eval" / "report.html").is_file()
    assert elapsed < 120
