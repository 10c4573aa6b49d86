"""`livo run`: the whole pipeline through kfp.local's SubprocessRunner on the embedded SeaweedFS store.

The slow tests run `livo run --preset tiny --allow-ungated` end to end (validate -> principles check -> 2 data shards -> merge ->
train -> evaluate -> register -> outcome), audit the registered model with `livo lineage verify`, and check that a
second run with the same principles is a cheap `skipped` no-op, and that KFP's artifacts chain the stages (each task's
input artifact is the previous task's output) carrying the digests lineage.json records; and that bad input fails in
validation before any other task. The fast tests cover the task timings `livo run` reads from kfp.local's log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from livo.commands.run_cmd import (
    LOCAL_DEFAULTS,
    SEEDED_STAGE_OVERRIDES,
    apply_run_seed,
    check_gates_at_door,
    local_arguments,
    task_timings,
    threads_per_task,
)
from livo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LIVO = [sys.executable, "-m", "livo.cli"]
PIPELINE_TASKS = {"validate-inputs", "principles-changed", "generate-data-shard", "merge-data-shards",
                  "train-value-encoder", "evaluate", "register", "record-outcome"}


def livo(args: list[str], timeout: float = 420, **env: str) -> subprocess.CompletedProcess:
    """`livo ARGS` in the checkout without any configured store or cluster (so `livo run` embeds SeaweedFS)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVO_", "KFP_"))}
    return subprocess.run(LIVO + args, capture_output=True, text=True, cwd=REPO, env={**clean, **env},
                          timeout=timeout)


def executed_tasks(run_dir: Path) -> list[str]:
    """Names of the tasks that finished (kfp.local writes executor_output.json on success), one per execution."""
    return sorted(p.parent.name for p in run_dir.glob("kfp/*/**/executor_output.json"))


def task_artifacts(run_dir: Path) -> dict[str, dict[str, dict]]:
    """task name -> output name -> the artifact (name, uri, metadata) kfp.local recorded in executor_output.json."""
    produced: dict[str, dict[str, dict]] = {}
    for path in run_dir.glob("kfp/*/**/executor_output.json"):
        outputs = json.loads(path.read_text()).get("artifacts", {})
        produced[path.parent.name] = {name: value["artifacts"][0] for name, value in outputs.items()}
    return produced


def printed(stdout: str, row: str) -> str:
    """The value of a row of `livo run`'s summary table."""
    match = re.search(rf"^{re.escape(row)}\s{{2,}}(.+)$", stdout, flags=re.M)
    assert match, f"no '{row}' row in:\n{stdout[-3000:]}"
    return match.group(1).strip()


# ------------------------------------------------------------------------------------------------------ fast
KFP_LOCAL_LOG = """\
07:59:58.100 - INFO - Executing task \x1b[96m'validate-inputs'\x1b[0m
    [info] something the task printed: Task 'nested' finished with status SUCCESS
07:59:59.600 - INFO - Task \x1b[96m'validate-inputs'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
07:59:59.700 - INFO - Executing task \x1b[96m'generate-data-shard'\x1b[0m
07:59:59.600 - INFO - Executing task \x1b[96m'generate-data-shard'\x1b[0m
08:00:30.000 - INFO - Task \x1b[96m'generate-data-shard'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
23:59:59.000 - INFO - Executing task \x1b[96m'train-value-encoder'\x1b[0m
00:00:09.500 - ERROR - Task \x1b[96m'train-value-encoder'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
00:00:10.000 - INFO - Executing task \x1b[96m'record-outcome'\x1b[0m
"""


def test_task_timings_from_the_kfp_local_log():
    timings = task_timings(KFP_LOCAL_LOG)
    assert list(timings) == ["validate-inputs", "generate-data-shard", "train-value-encoder", "record-outcome"]
    assert timings["validate-inputs"] == {"seconds": 1.5, "runs": 1, "status": "SUCCESS"}
    # parallel iterations share a name (and their threads log slightly out of order): first start to last finish
    assert timings["generate-data-shard"] == {"seconds": 30.4, "runs": 2, "status": "SUCCESS"}
    # past midnight, and a failure keeps its status
    assert timings["train-value-encoder"] == {"seconds": 10.5, "runs": 1, "status": "FAILURE"}
    assert timings["record-outcome"] == {"seconds": None, "runs": 1, "status": "RUNNING"}


def test_local_arguments_turn_off_gpus_and_name_the_model_after_the_preset():
    arguments = local_arguments("configs/presets/tiny.yaml", {"data_shard_count": 1})
    assert arguments["registry_model_name"] == "livo-tiny" and arguments["run_preset"] == "configs/presets/tiny.yaml"
    assert arguments["data_shard_count"] == 1 and LOCAL_DEFAULTS["data_shard_count"] == 2
    for name in ("data_gpus_per_shard", "train_gpus_per_node", "eval_gpus"):
        assert arguments[name] == 0, name
    assert arguments["train_launcher"] == "pod"


def test_ungated_runs_and_unknown_waivers_are_refused_at_the_door():
    tiny = local_arguments("tiny", {})
    with pytest.raises(ConfigError, match=r"preset tiny: .*sets no threshold.*--allow-ungated"):
        check_gates_at_door(tiny)
    check_gates_at_door({**tiny, "run_allow_ungated": True})
    check_gates_at_door(local_arguments("toy", {}))
    check_gates_at_door(local_arguments("tiny", {"eval_config_overrides": ["gates.max_bias=20"]}))
    waived = local_arguments("tiny", {"eval_config_overrides": ["gates.max_fid=3",
                                                                "gates.waive={'quality: FID': pixel stats}"]})
    with pytest.raises(ConfigError, match="waives every gate"):
        check_gates_at_door(waived)
    unknown = local_arguments("toy", {"eval_config_overrides": ["gates.waive={'quality: CLIPScore': no CLIP}"]})
    with pytest.raises(ConfigError, match="gates.waive names no gate of this evaluation: 'quality: CLIPScore'"):
        check_gates_at_door(unknown)


def test_livo_run_tiny_without_allow_ungated_exits_2_before_anything_starts(tmp_path):
    result = livo(["run", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs")], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("livo: error: preset tiny: ") and "--allow-ungated" in lines[-1]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def _stage_seeds(arguments: dict) -> tuple[int, int, int]:
    """The data-generation, training and evaluation seeds of the stage configs a run with `arguments` resolves."""
    from livo.data.generate import build_generate_config
    from livo.evaluation.config import load_evaluation_config
    from livo.presets import load_preset_config
    from livo.training.jobs import launch_arguments
    from livo.training.launch import build_parser, config_from_args

    preset = arguments["run_preset"]
    data = build_generate_config(overrides=arguments.get("data_config_overrides") or [], preset=preset)
    training = config_from_args(build_parser().parse_args(launch_arguments(
        dataset_uri="/data/ds", output_uri="/runs/r", preset=preset,
        overrides=arguments.get("train_config_overrides") or [])))
    config = load_preset_config(preset)
    evaluation = load_evaluation_config(config.evaluate, config.judges, None,
                                        arguments.get("eval_config_overrides") or [])
    return data.seed, training.seed, evaluation.seed


def test_run_seed_sets_every_stage_seed_and_seed_0_is_the_default_run():
    default = local_arguments("toy", {})
    assert apply_run_seed(default, None) == default  # no --seed: the arguments are untouched
    today = _stage_seeds(default)
    assert today == (0, 0, 0)  # the stage configs' own defaults (GenerateConfig, TrainingConfig, EvaluationConfig)
    assert _stage_seeds(apply_run_seed(default, 0)) == today
    seven, eleven = _stage_seeds(apply_run_seed(default, 7)), _stage_seeds(apply_run_seed(default, 11))
    assert seven == (7, 7, 7) and eleven == (11, 11, 11)
    # an explicit stage override still wins over --seed, and the other stage overrides are kept
    explicit = apply_run_seed(local_arguments("toy", {"train_config_overrides": ["seed=3", "max_steps=5"]}), 7)
    assert explicit["train_config_overrides"] == ["seed=7", "seed=3", "max_steps=5"]
    assert _stage_seeds(explicit) == (7, 3, 7)
    assert all(explicit[name][0] == "seed=7" for name in SEEDED_STAGE_OVERRIDES)
    with pytest.raises(ConfigError, match="--seed -1"):
        apply_run_seed(default, -1)


def test_tasks_alone_get_every_core_and_shards_split_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # (training / evaluation, each data shard)
    assert threads_per_task(None, {"data_shard_count": 2}, cpu_count=2) == (2, 1)
    assert threads_per_task(None, {"data_shard_count": 2}, cpu_count=8) == (8, 4)
    assert threads_per_task(None, {"data_shard_count": 16}, cpu_count=8) == (8, 1)
    assert threads_per_task(None, {}, cpu_count=4) == (4, 4)
    assert threads_per_task(3, {"data_shard_count": 2}, cpu_count=2) == (3, 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads_per_task(None, {"data_shard_count": 2}, cpu_count=2) == (6, 6)
    with pytest.raises(ConfigError, match="--threads 0"):
        threads_per_task(0, {}, cpu_count=2)


def test_a_data_shard_takes_its_share_of_the_cores():
    """What the generate-data-shard component does first, in a process started as kfp.local starts it."""
    code = ("import torch; from livo.orchestration import use_parallel_task_threads; "
            "print(use_parallel_task_threads(), torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "LIVO_PARALLEL_TASK_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]
    env.pop("LIVO_PARALLEL_TASK_THREADS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "2"]  # unset (a cluster pod): torch keeps OMP_NUM_THREADS


# ------------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
@pytest.mark.store
def test_livo_run_tiny_registers_an_auditable_model_and_a_rerun_is_skipped(tmp_path):
    from livo.store import EmbeddedSeaweedFS

    result = livo(["run", "--preset", "tiny", "--allow-ungated", "--runs-dir", str(tmp_path)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (run_dir,) = tmp_path.glob("run-*")
    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["status"] == "registered", outcome["summary"]
    assert outcome["registration"]["model_name"] == "livo-tiny" and outcome["registration"]["version"] == "v1"
    assert outcome["registration"]["ungated"] is True and "UNGATED" in outcome["summary"]
    assert outcome["evaluation"]["passed"] is True and outcome["evaluation"]["failed_gates"] == []

    # every stage ran, the data stage as two parallel shards, each exactly once and successfully
    assert executed_tasks(run_dir) == sorted([*PIPELINE_TASKS, "generate-data-shard"])
    assert set(outcome["tasks"]) == PIPELINE_TASKS
    assert all(t["status"] == "SUCCESS" and t["seconds"] > 0 for t in outcome["tasks"].values()), outcome["tasks"]
    assert outcome["tasks"]["generate-data-shard"]["runs"] == 2

    # the printed summary: outcome, report path, the base-vs-aligned table
    assert printed(result.stdout, "status") == "registered"
    assert printed(result.stdout, "version") == "v1"
    assert (outcome["threads_per_task"], outcome["threads_per_data_shard"]) == \
        threads_per_task(None, {"data_shard_count": 2})
    report = Path(printed(result.stdout, "report"))
    assert report == run_dir / "report.html" and "<html" in report.read_text()[:500].lower()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["passed"] is True and set(metrics["principles"]) == {"gender-equality", "bloody", "zombie"}
    assert "LiVO evaluation: UNGATED" in result.stdout and metrics["gates"] == []
    assert re.search(r"^gender-equality\s+D1\s+[\d.]+\s+(\[[\d., ]+\]\s+)?[\d.]+", result.stdout, flags=re.M)

    # the registered version is auditable: every hash verifies, and its lineage names this run and its dataset
    with EmbeddedSeaweedFS(tmp_path / "store") as server:
        verify = livo(["lineage", "verify", "livo-tiny"], timeout=120, **server.env())
        assert verify.returncode == 0, verify.stderr
        assert "livo-tiny@v1: OK" in verify.stdout
        show = livo(["lineage", "show", "livo-tiny", "--json"], timeout=120, **server.env())
        assert show.returncode == 0, show.stderr
    lineage = json.loads(show.stdout)
    assert lineage["pipeline"]["run_id"] == outcome["run_id"]
    assert lineage["dataset"]["manifest_uri"] == f"s3://livo/pipeline-runs/{outcome['run_id']}/dataset/manifest.json"
    assert lineage["training"]["config"]["output"] == f"s3://livo/pipeline-runs/{outcome['run_id']}/train"
    assert lineage["evaluation"]["passed"] is True and lineage["evaluation"]["ungated"] is True

    # KFP's lineage: each task's input artifact is the previous task's output (the consumer records the URI of what
    # it read), and the Dataset / Model / Metrics carry the digests lineage.json records for the registered version
    from livo.store import sha256_file

    produced = task_artifacts(run_dir)
    dataset, model = produced["merge-data-shards"]["dataset"], produced["train-value-encoder"]["model"]
    metrics, report = produced["evaluate"]["metrics"], produced["evaluate"]["report"]
    assert model["metadata"]["dataset_artifact_uri"] == dataset["uri"]
    assert metrics["metadata"]["model_artifact_uri"] == report["metadata"]["model_artifact_uri"] == model["uri"]
    consumed = outcome["registration"]["artifacts"]
    assert {name: artifact["uri"] for name, artifact in consumed.items()} == {
        "dataset": dataset["uri"], "model": model["uri"], "metrics": metrics["uri"], "report": report["uri"]}
    assert model["metadata"]["sha256"] == lineage["model"]["weights_sha256"] == consumed["model"]["sha256"]
    assert dataset["metadata"]["sha256"] == lineage["dataset"]["manifest_sha256"] == consumed["dataset"]["sha256"]
    assert dataset["metadata"]["manifest_uri"] == lineage["dataset"]["manifest_uri"]
    assert model["metadata"]["uri"] == f"s3://livo/pipeline-runs/{outcome['run_id']}/train/value_encoder"
    assert metrics["metadata"]["sha256"] == lineage["files"]["metrics.json"] == sha256_file(metrics["uri"])
    assert metrics["metadata"]["uri"] == outcome["evaluation"]["metrics_uri"]
    assert report["metadata"]["sha256"] == sha256_file(report["uri"]) == consumed["report"]["sha256"]
    # the evaluation's report names the stored value encoder (not the task's temporary copy) and the KFP run
    evaluation_report = Path(report["uri"]).read_text()
    assert model["metadata"]["uri"] in evaluation_report and "/tmp/livo-evaluate-" not in evaluation_report
    # the run directory gets the registered version's report: the evaluation's plus name@version, commit, MLflow run
    registered_report = (run_dir / "report.html").read_text()
    assert sha256_file(run_dir / "report.html") == lineage["files"]["report.html"]
    for fragment in ("livo-tiny@v1", outcome["run_id"], lineage["pipeline"]["git_commit"],
                     lineage["pipeline"]["mlflow_run_id"], "bootstrap"):
        assert fragment and fragment in registered_report, fragment
    for pointer in (dataset, model):  # small pointer files into the object store, equal to their metadata
        assert json.loads(Path(pointer["uri"]).read_text()).items() <= pointer["metadata"].items()

    # MLflow (on by default): one run for the pipeline run, tagged with the registered version, the stages nested
    # under it; the training curve has every log window of train_log.jsonl, the evaluation its per-principle metrics
    from mlflow.tracking import MlflowClient

    evaluation_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert printed(result.stdout, "tracking ui") == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.data.tags.get("mlflow.runName"): r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.run_id == lineage["pipeline"]["mlflow_run_id"]
    assert parent.data.tags["livo.registered_version"] == "livo-tiny@v1"
    assert parent.data.tags["livo.kfp_run_id"] == outcome["run_id"]
    stages = {name: r for name, r in runs.items() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    train_run = next(r for name, r in stages.items() if name.startswith("train"))
    evaluate_run = next(r for name, r in stages.items() if name.startswith("evaluate"))
    losses = [m.value for m in client.get_metric_history(train_run.info.run_id, "loss")]
    assert losses == pytest.approx([line["loss"] for line in evaluation_metrics["training_log"]]) and len(losses) >= 1
    assert evaluate_run.data.metrics["gender-equality.D1"] == pytest.approx(
        evaluation_metrics["principles"]["gender-equality"]["aligned"]["D1"])

    # the same principles again: a cheap no-op, reported skipped, nothing past the principles check runs
    again = livo(["run", "--preset", "tiny", "--allow-ungated", "--runs-dir", str(tmp_path)], timeout=180)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert printed(again.stdout, "status") == "skipped"
    (second_dir,) = set(tmp_path.glob("run-*")) - {run_dir}
    assert executed_tasks(second_dir) == ["principles-changed", "record-outcome", "validate-inputs"]
    assert "LiVO evaluation" not in again.stdout


@pytest.mark.slow
@pytest.mark.store
def test_local_run_bad_input_fails_in_validation_before_any_other_task(tmp_path):
    # a misspelt stage override: refused at the door, as the pipeline's first step would refuse it (exit 2, one line,
    # no run directory, no store)
    result = livo(["run", "--preset", "tiny", "--allow-ungated", "--runs-dir", str(tmp_path), "-p",
                   "train_config_overrides=[max_stepz=3]"], timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("livo: error: ") and "max_stepz" in lines[-1] and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("run-*"))
    # what only the pipeline's first step can read (principles in the object store) fails there, and nothing else runs
    result = livo(["run", "--preset", "tiny", "--allow-ungated", "--runs-dir", str(tmp_path), "-p",
                   "run_principles_uri=s3://livo/no-such-principles.yaml"], timeout=180)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the run failed: validate-inputs: " in result.stdout and "no-such-principles.yaml" in result.stdout
    assert executed_tasks(next(tmp_path.glob("run-*"))) == ["record-outcome"]  # nothing else started


@pytest.mark.slow  # ~75 s: the whole pipeline on the toy SDXL, shortened
@pytest.mark.store
def test_livo_run_on_an_sdxl_family_base_trains_and_gates_an_sdxl_value_encoder(tmp_path):
    """Issue 18: `run_preset` of an SDXL-family model through every task — data with stored posteriors, training of an
    SDXL value encoder, evaluation, and the release decision (20 steps cannot pass the toy's gates: rejected)."""
    from livo.presets import load_pipeline, pipeline_fingerprint
    from livo.store import EmbeddedSeaweedFS

    result = livo(["run", "--preset", "toy-sdxl", "--runs-dir", str(tmp_path),
                   "-p", "data_config_overrides=[candidates_per_scene=2,max_prompts_per_principle=2]",
                   "-p", "train_config_overrides=[max_steps=20]", "-p", "eval_config_overrides=[images_per_prompt=4]"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (run_dir,) = tmp_path.glob("run-*")
    outcome = json.loads((run_dir / "outcome.json").read_text())
    assert outcome["status"] == "rejected" and outcome["registration"] is None, outcome["summary"]
    assert outcome["evaluation"]["failed_gates"] and "failed the evaluation gates" in outcome["summary"]
    assert all(t["status"] == "SUCCESS" for t in outcome["tasks"].values()), outcome["tasks"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["context"]["preset"] == "toy-sdxl"
    assert metrics["evaluated"]["base_model_fingerprint"] == pipeline_fingerprint(load_pipeline("toy-sdxl"))
    with EmbeddedSeaweedFS(tmp_path / "store") as server:
        store = server.store("livo")
        prefix = f"pipeline-runs/{outcome['run_id']}"
        marker = store.get_json(f"{prefix}/train/value_encoder/livo_value_encoder.json")
        assert marker["family"] == "sdxl"
        assert store.exists(f"{prefix}/train/value_encoder/text_encoder_2/config.json")
        manifest = store.get_json(f"{prefix}/dataset/manifest.json")
    assert manifest["latent_dist_shape"] == [8, 8, 8]  # the SDXL toy's posteriors (2 × 4 channels, 32² / 4)
