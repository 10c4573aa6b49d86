"""The failure contract (docs/failure_contract.md), checked through the real CLI.

Every row of `CASES` runs `python -m livo.cli ...` as a subprocess with a bad input (or a broken environment) and
asserts: the exit code (2 bad input, 1 environment fault), exactly one `livo: error:` line on stderr and it is the
last line, no traceback anywhere, nothing new in the case's working directory (outputs point there), and no new
object in the shared object store. Rows run two at a time; the whole table takes well under a minute on two cores.
Preemption (exit 143) needs real training ranks: tests/distributed/test_preemption_exit.py.

Placeholders in a row's arguments: `{fx}` the fixture folder (read-only inputs), `{cwd}` the case's own empty
working directory, `{bucket}` the shared store's bucket. A row with `store=True` gets the store's `LIVO_S3_*`
variables; every other row runs with none (so nothing may start an embedded store at the door).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from livo.paths import config_dir

STORE_UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused at once
PINNED_IMAGE = "registry.example/livo@sha256:" + "1" * 64


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int = 2
    says: str = ""  # a fragment the error line must contain
    store: bool = False
    env: dict[str, str] = field(default_factory=dict)


def case(id: str, *argv: str, code: int = 2, says: str = "", store: bool = False, **env: str) -> Case:
    return Case(id, argv, code, says, store, env)


CASES: list[Case] = [
    # --- the command line itself
    case("unknown-command", "no-such-command", says="invalid choice"),
    case("unknown-flag", "principles", "validate", "--no-such-flag", "x.yaml", says="unrecognized arguments"),
    case("log-json-unknown-command", "--log-json", "frobnicate", says="invalid choice"),
    # --- principles
    case("principles-no-action", "principles", says="needs an action"),
    case("principles-missing-file", "principles", "validate", "{fx}/missing.yaml", says="missing.yaml"),
    case("principles-malformed-yaml", "principles", "validate", "{fx}/malformed.yaml", says="malformed.yaml"),
    case("principles-mapping-not-list", "principles", "validate", "{fx}/mapping.yaml", says="mapping.yaml"),
    case("principles-entry-without-text", "principles", "validate", "{fx}/no_text.yaml", says="text"),
    case("principles-duplicate-ids", "principles", "validate", "{fx}/duplicate_ids.yaml", says="gender-equality"),
    case("principles-binary-file", "principles", "validate", "{fx}/binary.bin", says="binary.bin"),
    case("principles-directory", "principles", "validate", "{fx}", says="fixtures"),
    # --- retrieve
    case("retrieve-nothing-to-retrieve", "retrieve", "--no-semantic"),
    case("retrieve-missing-prompt-file", "retrieve", "--no-semantic", "--file", "{fx}/missing.txt",
         says="missing.txt"),
    case("retrieve-malformed-principles", "retrieve", "--no-semantic", "--principles", "{fx}/malformed.yaml",
         "a nurse", says="malformed.yaml"),
    case("retrieve-threshold-not-a-number", "retrieve", "--no-semantic", "--threshold", "high", "a nurse",
         says="--threshold"),
    case("retrieve-min-confidence-out-of-range", "retrieve", "--no-semantic", "--min-confidence", "1.5", "a nurse",
         says="not between 0 and 1"),
    case("retrieve-malformed-eval-file", "retrieve", "--no-semantic", "--eval", "{fx}/bad.jsonl", says="bad.jsonl"),
    case("retrieve-binary-prompt-file", "retrieve", "--no-semantic", "--file", "{fx}/binary.bin",
         says="binary.bin"),
    # --- generate (outputs under the case's cwd: nothing may appear there)
    case("generate-unknown-preset", "generate", "--preset", "no-such-preset", "--out", "{cwd}/out",
         says="no-such-preset"),
    case("generate-missing-config", "generate", "--config", "{fx}/missing.yaml", "--out", "{cwd}/out",
         says="missing.yaml"),
    case("generate-malformed-config", "generate", "--config", "{fx}/malformed.yaml", "--out", "{cwd}/out",
         says="malformed.yaml"),
    case("generate-unknown-key", "generate", "--out", "{cwd}/out", "no_such_key=1", says="no_such_key"),
    case("generate-override-without-equals", "generate", "--out", "{cwd}/out", "candidates_per_scene",
         says="key=value"),
    case("generate-bad-value", "generate", "--out", "{cwd}/out", "candidates_per_scene=0",
         says="candidates_per_scene"),
    case("generate-unknown-principle", "generate", "--out", "{cwd}/out", "--principle", "gender-equity",
         says="gender-equity"),
    case("generate-shard-index-without-count", "generate", "--out", "{cwd}/out", "--shard-index", "1",
         says="--shard-count"),
    case("generate-missing-prompts-file", "generate", "--out", "{cwd}/out", "--prompts", "{fx}/missing.txt",
         says="missing.txt"),
    case("generate-auto-without-prompts", "generate", "--out", "{cwd}/out", "--principle", "auto",
         says="needs a prompt list"),
    case("generate-min-confidence-out-of-range", "generate", "--out", "{cwd}/out", "retrieval.min_confidence=2",
         says="retrieval.min_confidence"),
    # issue 18: a resolution the model's VAE cannot encode (read from configs: no weights are loaded)
    case("generate-resolution-not-a-vae-multiple", "generate", "--preset", "sdxl", "--out", "{cwd}/out",
         "resolution=1020", says="resolution=1020 is not a multiple of 8"),
    case("generate-shard-count-not-int", "generate", "--shard-count", "many", says="--shard-count"),
    # the hint names the key of generate's config (judging.options), not evaluate's (judges.options)
    case("generate-judge-weights-missing-hint", "generate", "--out", "{cwd}/out", "judging.attribute=clip-zero-shot",
         "judging.options.clip-zero-shot.model={fx}/no-such-model", says="judging.options.clip-zero-shot.model"),
    # --- data
    case("data-no-action", "data", says="needs an action"),
    case("data-import-missing-dir", "data", "import", "{fx}/missing-dir", "--out", "{cwd}/out",
         says="missing-dir"),
    # part 2 (data import/verify): an 'image' that is not an image is refused before anything is written
    case("data-import-non-image", "data", "import", "{fx}/authors_non_image", "--out", "{cwd}/out",
         says="not_an_image.png"),
    # part 2 (data import/verify): a manifest without `shards` is bad input, not a KeyError
    case("data-verify-manifest-without-shards", "data", "verify", "{fx}/manifest_no_shards", says="shards"),
    # part 2 (data import/verify): a path that is not a dataset is the user's input
    case("data-verify-missing-dataset", "data", "verify", "{fx}/missing-dataset", says="missing-dataset"),
    case("data-info-malformed-manifest", "data", "info", "{fx}/manifest_malformed", says="manifest"),
    case("data-import-map-without-equals", "data", "import", "{fx}/authors_non_image", "--out", "{cwd}/out",
         "--map", "no-equals-sign", says="--map"),
    # --- train (all fail before a model is built)
    case("train-unknown-preset", "train", "--preset", "no-such-preset", "--output", "{cwd}/run",
         says="no-such-preset"),
    case("train-distillation-on-sdxl", "train", "--preset", "toy-sdxl", "--dataset", "{fx}/dataset", "--output",
         "{cwd}/run", "loss.distill_weight=10", says="distill_weight is not supported on SDXL"),
    case("train-nproc-zero", "train", "--nproc", "0", "--output", "{cwd}/run", says="--nproc"),
    case("train-max-steps-not-int", "train", "--max-steps", "many", says="--max-steps"),
    case("train-unknown-loss", "train", "--loss", "hinge", says="--loss"),
    case("train-unknown-key", "train", "--output", "{cwd}/run", "no_such_key=1", says="no_such_key"),
    case("train-bad-lr", "train", "--output", "{cwd}/run", "optimizer.lr=fast", says="optimizer.lr"),
    case("train-bad-zero-stage", "train", "--output", "{cwd}/run", "zero_stage=7", says="zero_stage"),
    case("train-malformed-config", "train", "--config", "{fx}/malformed.yaml", "--output", "{cwd}/run",
         says="malformed.yaml"),
    case("train-config-not-a-mapping", "train", "--config", "{fx}/list.yaml", "--output", "{cwd}/run",
         says="list.yaml"),
    # part 3 (training's door checks): the dataset is checked before any rank or model starts
    case("train-missing-dataset", "train", "--dataset", "{fx}/missing-dataset", "--output", "{cwd}/run",
         "model=tiny", says="missing-dataset"),
    case("train-empty-dataset", "train", "--dataset", "{fx}/empty_dataset", "--output", "{cwd}/run", "model=tiny",
         says="empty_dataset"),
    case("train-principle-set-mismatch", "train", "--dataset", "{fx}/dataset", "--output", "{cwd}/run",
         "model=tiny", "--expected-principle-set-hash", "sha256:" + "0" * 64, says="principle"),
    # issue 18: preference data the trained base model did not generate (checked once its weights are fingerprinted)
    case("train-dataset-of-another-base-model", "train", "--dataset", "{fx}/dataset_other_model", "--output",
         "{cwd}/run", "model=tiny", says="generated by another base model"),
    # --- evaluate
    case("evaluate-no-value-encoder", "evaluate", says="--value-encoder"),
    case("evaluate-missing-value-encoder", "evaluate", "--value-encoder", "{fx}/missing-ve", "--output",
         "{cwd}/eval", says="missing-ve"),
    case("evaluate-truncated-safetensors", "evaluate", "--value-encoder", "{fx}/ve_truncated", "--output",
         "{cwd}/eval", says="ve_truncated/model.safetensors"),
    case("evaluate-pickle-weights", "evaluate", "--value-encoder", "{fx}/ve_pickle", "--output", "{cwd}/eval",
         says="safetensors"),
    case("evaluate-malformed-config", "evaluate", "--value-encoder", "{fx}/ve", "--config", "{fx}/malformed.yaml",
         "--output", "{cwd}/eval", says="malformed.yaml"),
    case("evaluate-set-without-equals", "evaluate", "--value-encoder", "{fx}/ve", "--set", "images_per_prompt",
         "--output", "{cwd}/eval", says="images_per_prompt"),
    case("evaluate-set-unknown-key", "evaluate", "--value-encoder", "{fx}/ve", "--set", "no_such_key=1",
         "--output", "{cwd}/eval", says="no_such_key"),
    case("evaluate-unknown-preset", "evaluate", "--value-encoder", "{fx}/ve", "--preset", "no-such-preset",
         "--output", "{cwd}/eval", says="no-such-preset"),
    case("evaluate-missing-principles", "evaluate", "--value-encoder", "{fx}/ve", "--principles",
         "{fx}/missing.yaml", "--output", "{cwd}/eval", says="missing.yaml"),
    # a value encoder trained on another base model (the tiny preset's, 32 wide) onto the toy base (64 wide)
    case("evaluate-value-encoder-of-another-base", "evaluate", "--value-encoder", "{fx}/ve_tiny", "--preset", "toy",
         "--device", "cpu", "--output", "{cwd}/eval", says="32-wide tokens"),
    case("evaluate-resolution-not-a-vae-multiple", "evaluate", "--value-encoder", "{fx}/ve", "--preset", "toy-sdxl",
         "--set", "resolution=30", "--output", "{cwd}/eval", says="resolution=30 is not a multiple of 4"),
    # --- register (store rows: the bucket must not gain an object)
    case("register-missing-request-file", "register", "--request", "{fx}/missing.yaml", store=True,
         says="missing.yaml"),
    # part 1 (registration): a malformed --request YAML is bad input
    case("register-malformed-request", "register", "--request", "{fx}/malformed.yaml", store=True,
         says="malformed.yaml"),
    case("register-incomplete-request", "register", "--model-name", "m", store=True),
    case("register-missing-value-encoder", "register", "--request", "{fx}/request.yaml", "--value-encoder",
         "{fx}/missing-ve", store=True, says="missing-ve"),
    case("register-malformed-metrics", "register", "--request", "{fx}/request.yaml", "--metrics",
         "{fx}/malformed.json", store=True, says="malformed.json"),
    # part 1 (registration): the dataset manifest must exist
    case("register-missing-dataset-manifest", "register", "--request", "{fx}/request.yaml", "--dataset-manifest",
         "s3://{bucket}/datasets/none/manifest.json", store=True, says="datasets/none/manifest.json"),
    # part 1 (registration): metrics.json that evaluated another value encoder is refused
    case("register-metrics-of-another-model", "register", "--request", "{fx}/request.yaml", "--metrics",
         "{fx}/metrics_other_model.json", store=True, says="metrics_other_model.json"),
    case("register-bad-seed", "register", "--seed", "seven", says="--seed"),
    # issue 15: metrics bound to this candidate but with no evaluated gate are refused without --allow-ungated
    case("register-ungated-without-allow", "register", "--request", "{fx}/request.yaml", "--metrics",
         "{fx}/metrics_ungated.json", store=True, says="--allow-ungated"),
    # --- lineage
    # --- livo serve: settings and the version are checked before the server starts (a version that fails never serves)
    case("serve-no-model", "serve", says="required"),
    case("serve-unknown-setting", "serve", "m@v1", "--set", "no_such_knob=1", says="no_such_knob"),
    case("serve-bad-port", "serve", "m@v1", "--port", "70000", says="port"),
    case("serve-queue-not-a-number", "serve", "m@v1", "--set", "queue_size=many", says="queue_size"),
    case("serve-malformed-model-ref", "serve", "model@seven", store=True, says="seven"),
    case("serve-unknown-model", "serve", "nosuchmodel@latest", store=True, says="nosuchmodel"),
    case("serve-missing-config", "serve", "m@v1", "--config", "{fx}/missing.yaml", says="missing.yaml"),
    case("lineage-no-action", "lineage", says="required"),
    # part 1 (lineage): an unknown model is bad input
    case("lineage-show-unknown-model", "lineage", "show", "nosuchmodel", store=True, says="nosuchmodel"),
    case("lineage-verify-unknown-version", "lineage", "verify", "nosuchmodel@v7", store=True, says="nosuchmodel"),
    case("lineage-show-bad-version", "lineage", "show", "model@seven", store=True, says="seven"),
    case("lineage-diff-one-argument", "lineage", "diff", "model@v1", says="required"),
    # --- models
    case("models-mirror-missing-folder", "models", "mirror", "{fx}/missing-model", "s3://{bucket}/models-mirror/x",
         store=True, says="missing-model"),
    case("models-mirror-not-a-uri", "models", "mirror", "{fx}/ve", "not-a-uri", store=True, says="not-a-uri"),
    case("models-verify-no-mirror", "models", "verify", "s3://{bucket}/mirrors/none", store=True, says="mirrors"),
    case("models-show-not-a-uri", "models", "show", "/tmp/nothing", store=True, says="/tmp/nothing"),
    case("models-fetch-unknown-kind", "models", "fetch", "--kind", "onnx", "s3://{bucket}/x", says="--kind"),
    # --- object store: keys and endpoints
    # part 4a (object store): a key with `..` is refused, never normalised
    case("store-key-with-dotdot", "models", "show", "s3://{bucket}/a/../../etc", store=True, says=".."),
    # part 4a (object store): an endpoint with an impossible port is bad input
    case("store-endpoint-bad-port", "lineage", "show", "m", LIVO_S3_ENDPOINT="http://127.0.0.1:599810",
         LIVO_S3_ACCESS_KEY="k", LIVO_S3_SECRET_KEY="s", LIVO_S3_BUCKET="livo", says="599810"),
    # nothing listens there: the environment's fault, exit 1
    case("store-endpoint-unreachable", "lineage", "show", "m", code=1, LIVO_S3_ENDPOINT=STORE_UNREACHABLE,
         LIVO_S3_ACCESS_KEY="k", LIVO_S3_SECRET_KEY="s", LIVO_S3_BUCKET="livo", says="127.0.0.1:9"),
    case("store-serve-bad-flag", "store", "serve", "--port", "1", says="unrecognized arguments"),
    # --- compile / submit / schedule / run (nothing reaches a cluster)
    case("compile-image-not-pinned", "compile", "--image", "registry.example/livo:latest", "--output",
         "{cwd}/p.yaml", says="sha256"),
    case("submit-image-not-pinned", "submit", "--dry-run", "--image", "registry.example/livo:latest",
         says="sha256"),
    case("submit-param-without-equals", "submit", "--dry-run", "--image", PINNED_IMAGE, "-p", "data_shard_count", says="data_shard_count"),
    case("submit-unknown-param", "submit", "--dry-run", "--image", PINNED_IMAGE, "-p", "no_such_param=1", says="no_such_param"),
    case("submit-param-bad-type", "submit", "--dry-run", "--image", PINNED_IMAGE, "-p", "data_shard_count=many", says="data_shard_count"),
    case("schedule-bad-cron", "schedule", "--cron", "every day", "--principles", "configs/principles/default.yaml",
         "--dry-run", says="cron"),
    case("schedule-without-cron", "schedule", "--principles", "x.yaml", says="--cron"),
    # part 4a (`livo run`): checked before the embedded store starts or a run directory is made
    case("run-unknown-preset", "run", "--preset", "no-such-preset", "--runs-dir", "{cwd}/runs",
         says="no-such-preset"),
    case("run-param-without-equals", "run", "-p", "run_force_retrain", "--runs-dir", "{cwd}/runs",
         says="run_force_retrain"),
    case("run-unknown-param", "run", "-p", "no_such_param=1", "--runs-dir", "{cwd}/runs", says="no_such_param"),
    case("run-zero-threads", "run", "--threads", "0", "--runs-dir", "{cwd}/runs", says="--threads"),
    # issue 15: a waiver that names no gate is a config error at the door; so is a preset without gates (tiny)
    case("run-unknown-waiver", "run", "-p", "eval_config_overrides=['gates.waive={{nosuch: why}}']", "--runs-dir",
         "{cwd}/runs", says="gates.waive names no gate of this evaluation: 'nosuch'"),
    case("run-tiny-ungated", "run", "--preset", "tiny", "--runs-dir", "{cwd}/runs", says="--allow-ungated"),
    case("run-resolution-not-a-vae-multiple", "run", "--preset", "toy-sdxl", "-p",
         "data_config_overrides=['resolution=30']", "--runs-dir", "{cwd}/runs", says="is not a multiple of 4"),
    case("run-negative-seed", "run", "--seed", "-3", "--runs-dir", "{cwd}/runs", says="--seed -3"),
]


def _write_fixtures(fx: Path) -> None:
    """The bad (and a few good) inputs the rows point at."""
    from safetensors.numpy import save_file

    fx.mkdir(parents=True)
    default = (config_dir() / "principles" / "default.yaml").read_text()
    (fx / "malformed.yaml").write_text("- id: [unclosed\n  text: 'x\n")
    (fx / "mapping.yaml").write_text("principles: 1\n")
    (fx / "list.yaml").write_text("- 1\n- 2\n")
    (fx / "no_text.yaml").write_text("- id: gender-equality\n  category: bias\n")
    document = yaml.safe_load(default)
    entries = document["principles"] if isinstance(document, dict) else document
    entries.append(dict(entries[0]))
    (fx / "duplicate_ids.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    (fx / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (fx / "bad.jsonl").write_text("{not json\n")
    (fx / "malformed.json").write_text("{\"passed\": tru")

    rng = np.random.default_rng(0)

    def value_encoder(directory: Path) -> Path:
        directory.mkdir(parents=True)
        save_file({"text_model.final_layer_norm.weight": rng.standard_normal(8).astype(np.float32)},
                  str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], "hidden_size": 8}))
        return directory

    value_encoder(fx / "ve")
    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    ValueEncoder.from_text_encoder(build_tiny_pipeline(0).text_encoder).save_pretrained(fx / "ve_tiny")
    truncated = value_encoder(fx / "ve_truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:40])
    pickled = fx / "ve_pickle"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")

    metrics = {"schema_version": 1, "passed": True, "principles": {}, "gates": [],
               "evaluated": {"value_encoder_sha256": "sha256:" + "f" * 64,
                             "base_model_fingerprint": "sha256:" + "e" * 64}}
    (fx / "metrics_other_model.json").write_text(json.dumps(metrics))
    from livo.principles import load_principles
    from livo.registry.lineage import canonical_sha256, value_encoder_digest

    ungated = {"schema_version": 1, "passed": True, "principles": {}, "gates": [], "config": {"seed": 0},
               "evaluated": {"value_encoder_sha256": value_encoder_digest(fx / "ve"),
                             "base_model_fingerprint": "sha256:" + "e" * 64,
                             "principle_set_hash": load_principles(config_dir() / "principles" / "default.yaml").hash,
                             "config_sha256": canonical_sha256({"seed": 0})}}
    (fx / "metrics_ungated.json").write_text(json.dumps(ungated))
    (fx / "report.html").write_text("<html><body>report</body></html>")
    (fx / "request.yaml").write_text(json.dumps({
        "model_name": "livo-contract", "value_encoder_dir": str(fx / "ve"),
        "metrics_path": str(fx / "metrics_other_model.json"), "report_path": str(fx / "report.html"),
        "principles": str(config_dir() / "principles" / "default.yaml"),
        "dataset_manifest_uri": str(fx / "dataset" / "manifest.json"), "training_config": {"max_steps": 1},
        "seed": 1, "base_model_id": "tiny", "base_model_fingerprint": "sha256:" + "e" * 64,
        "pipeline_run_id": "contract-run"}))

    (fx / "manifest_malformed").mkdir()
    (fx / "manifest_malformed" / "manifest.json").write_text("{\"shards\": [")
    (fx / "empty_dataset").mkdir()

    scene = fx / "authors_non_image" / "bias" / "doctor"
    scene.mkdir(parents=True)
    (scene / "not_an_image.png").write_text("this is text, not a PNG\n")
    (scene / "metadata.jsonl").write_text("\n".join(json.dumps(
        {"file_name": "not_an_image.png", "prompt": "a photo of a doctor", "value": "gender equality", "label": label})
        for label in (1, 0)) + "\n")

    sys.path.insert(0, str(Path(__file__).parent / "training"))
    from training_helpers import PRINCIPLE_SET_HASH, preference_rows

    from livo.data.dataset import write_rows_dataset

    write_rows_dataset(preference_rows(), fx / "dataset", principle_set_hash=PRINCIPLE_SET_HASH)
    write_rows_dataset(preference_rows(), fx / "dataset_other_model", principle_set_hash=PRINCIPLE_SET_HASH,
                       generator_model_hash="sha256:" + "ab" * 32)  # generated by a base model that is not tiny
    manifest = json.loads((fx / "dataset" / "manifest.json").read_text())
    manifest.pop("shards")
    (fx / "manifest_no_shards").mkdir()
    (fx / "manifest_no_shards" / "manifest.json").write_text(json.dumps(manifest))


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


def _base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LIVO_S3_", "LIVO_MODEL_REGISTRY", "KFP_", "LIVO_LOG"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               LIVO_MODEL_CACHE=str(tmp / "model-cache"), HF_HOME=str(tmp / "hf-home"))
    return env


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, seaweed_store) -> dict[str, tuple]:
    """Run every row (two at a time); per row: (exit code, stderr, new files in its cwd, its cwd)."""
    import uuid

    tmp = tmp_path_factory.mktemp("contract")
    fx = tmp / "fixtures"
    _write_fixtures(fx)
    store = seaweed_store.for_bucket(f"contract-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    fixtures_before, objects_before = _tree(fx), store.list("")
    base_env = _base_env(tmp)
    repo = Path(__file__).resolve().parents[1]

    def run(row: Case) -> tuple:
        cwd = tmp / "cases" / row.id
        cwd.mkdir(parents=True)
        env = dict(base_env, LIVO_RUNS_DIR=str(cwd / "runs"), **(store.env() if row.store else {}), **row.env)
        argv = [arg.format(fx=fx, cwd=cwd, bucket=store.bucket) for arg in row.argv]
        argv = [str(repo / arg) if arg.startswith("configs/") else arg for arg in argv]
        try:
            proc = subprocess.run([sys.executable, "-m", "livo.cli", *argv], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=120)
            result = (proc.returncode, proc.stderr)
        except subprocess.TimeoutExpired as exc:
            result = (None, f"timed out after 120 s; stderr so far:\n{exc.stderr}")
        return (*result, _tree(cwd), cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip([row.id for row in CASES], pool.map(run, CASES), strict=True))
    results["__fixtures__"] = (fixtures_before, _tree(fx))
    results["__objects__"] = (objects_before, store.list(""))
    return results


def test_the_table_is_large_and_covers_every_command():
    from livo.cli import build_parser

    assert len(CASES) >= 60 and len({row.id for row in CASES}) == len(CASES)
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {row.argv[0] if not row.argv[0].startswith("--") else row.argv[1] for row in CASES}
    assert set(subparsers.choices) <= covered, set(subparsers.choices) - covered


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_bad_input_fails_at_the_door_with_one_line(row: Case, outcomes):
    code, stderr, files, cwd = outcomes[row.id]
    assert code is not None, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == row.code, f"exit {code}, expected {row.code}:\n{stderr[-3000:]}"
    errors = [line for line in lines if line.startswith("livo: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    assert row.says in errors[0], f"{errors[0]!r} does not mention {row.says!r}"
    assert files == {}, f"left behind in {cwd}: {sorted(files)}"


def test_nothing_is_left_behind_in_the_inputs_or_the_store(outcomes):
    fixtures_before, fixtures_after = outcomes["__fixtures__"]
    assert fixtures_after == fixtures_before
    objects_before, objects_after = outcomes["__objects__"]
    assert objects_after == objects_before


def test_a_reader_that_closes_the_pipe_early_is_not_an_error(tmp_path):
    """`livo retrieve --file - | head -1`: livo stops quietly (no BrokenPipeError traceback) and exits 141."""
    prompts = tmp_path / "prompts.txt"  # ~1 MB of output: far more than a pipe holds
    prompts.write_text("\n".join(f"a photo of a nurse number {i}" for i in range(20000)) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "livo.cli", "retrieve", "--no-semantic", "--file", str(prompts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_base_env(tmp_path), cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line, as `head -1` does
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.strip(), stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-3000:]
    assert "livo: error" not in stderr
    assert code == 141


def test_judge_hints_name_the_options_key_of_the_calling_config():
    from livo.errors import JudgeUnavailable
    from livo.evaluation.judges import judge_options_key, load_pretrained

    def hint() -> str:
        with pytest.raises(JudgeUnavailable) as caught:
            load_pretrained(object, object, "/no/such/model", judge="clip-zero-shot", option="model")
        return str(caught.value)

    assert "`judges.options.clip-zero-shot.model=" in hint()
    with judge_options_key("judging.options"):
        assert "`judging.options.clip-zero-shot.model=" in hint()
    assert "`judges.options.clip-zero-shot.model=" in hint()
