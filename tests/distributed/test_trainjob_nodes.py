"""A two-node TrainJob, for real: two launches of exactly the command and arguments `trainjob_body` produces, each with
the environment the Kubeflow Trainer's torch policy gives a node (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR, PET_MASTER_PORT) plus the container env the body declares, resolved as the kubelet would from a Secret
and a ConfigMap. gloo on CPU, the tiny model, one output location shared by both nodes (as the object-store prefix is
in a cluster).

Proved: the ranks form one world of 2 (not two worlds of 1); both end with identical weights; the first step's
gradient is the mean of the two ranks' gradients (recomputed here from the same data, noise and initial weights);
only global rank 0, on node 0, writes the run's outputs, each of them once (every write into the output directory is
recorded by an audit hook in each process). Also: the launch module refuses to run alone under PET_NNODES=2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import PRINCIPLE_SET_HASH, free_port, write_latent_dataset  # noqa: E402

from livo.training import jobs  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]
NODE_TIMEOUT_S = 240  # one launch; a rendezvous that never completes fails the test instead of hanging CI
IMAGE = "ghcr.io/livo-mlops/livo:0.1.0@sha256:" + "0" * 64
# What the cluster holds: the Secret and ConfigMap the body's env references resolve against.
SECRETS = {jobs.DEFAULT_STORE_SECRET: {"accesskey": "test-access", "secretkey": "test-secret"}}
CONFIG_MAPS = {jobs.DEFAULT_STORE_CONFIG_MAP: {"endpoint": "http://127.0.0.1:9", "bucket": "unused-local-output"}}
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")

# Installed in every Python process of the test's launches (torchrun agents and ranks) through PYTHONPATH: records
# each write, rename, removal and directory creation under AUDIT_ROOT with the process's rank variables.
AUDIT_HOOK = textwrap.dedent('''
    import json, os, sys
    _root = os.environ.get("LIVO_TEST_AUDIT_ROOT")
    _log = os.environ.get("LIVO_TEST_AUDIT_LOG")
    _busy = [False]

    def _under_root(path):
        try:
            return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(_root)
        except Exception:
            return False

    def _hook(event, args):
        if _busy[0] or event not in ("open", "os.rename", "os.remove", "shutil.rmtree", "os.mkdir"):
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if not writing:
                return
            paths = [path]
        else:
            paths = [a for a in args[:2] if _under_root(a)] if event == "os.rename" else [args[0]]
        paths = [os.path.relpath(os.path.abspath(os.fsdecode(p)), _root) for p in paths if _under_root(p)]
        if not paths:
            return
        _busy[0] = True
        try:
            record = {"event": event, "paths": paths if event != "os.rename" else
                      [os.path.relpath(os.path.abspath(os.fsdecode(a)), _root) for a in args[:2]],
                      "pid": os.getpid(), "rank": os.environ.get("RANK"), "group_rank": os.environ.get("GROUP_RANK"),
                      "node": os.environ.get("PET_NODE_RANK")}
            with open(_log, "a") as handle:
                handle.write(json.dumps(record) + "\\n")
        finally:
            _busy[0] = False

    if _root and _log:
        _root = os.path.abspath(_root)
        sys.addaudithook(_hook)
''')

OVERRIDES = ["model=tiny", "max_steps=2", "global_batch_size=4", "optimizer.lr=1e-3", "log_every=1",
             "checkpoint.every_steps=2", "zero_stage=2", "seed=0"]


def resolve_container_env(declared: list[dict], secrets: dict, config_maps: dict) -> dict[str, str]:
    """The container env as the kubelet builds it from the body: values, Secret and ConfigMap keys (an optional key
    that is absent is left unset; a missing required one would be CreateContainerConfigError)."""
    env = {}
    for item in declared:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        kind, store = (("secretKeyRef", secrets) if "secretKeyRef" in source else ("configMapKeyRef", config_maps))
        ref = source[kind]
        value = store.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{item['name']}: {kind} {ref['name']}/{ref['key']} missing"
            continue
        env[item["name"]] = value
    return env


def runtime_container_env(workspace: Path) -> dict[str, str]:
    """The runtime's own container env (manifests/base/training-runtime.yaml), its /workspace emptyDir being
    `workspace` here (one directory per node, as each pod has its own)."""
    runtime = yaml.safe_load((REPO / "manifests" / "base" / "training-runtime.yaml").read_text())
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"].replace("/workspace", str(workspace)) for e in pod["containers"][0].get("env", [])}
    workspace.mkdir(parents=True, exist_ok=True)
    return env


def node_environment(body: dict, node_rank: int, port: int, audit_dir: Path, audit_root: Path,
                     secrets: dict = SECRETS, config_maps: dict = CONFIG_MAPS) -> dict[str, str]:
    # Not the test session's LIVO_TRACKING=none: a node runs with the default, tracking on (rank 0 only logs)
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and k != "LIVO_TRACKING" and not k.startswith(("PET_", "LIVO_S3_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the image: /opt/venv/bin on PATH
    env.update(OMP_NUM_THREADS="1", LIVO_LOG_FORMAT="json")
    env.update(runtime_container_env(audit_dir.parent / f"workspace-node-{node_rank}"))
    env.update(resolve_container_env(body["spec"]["trainer"]["env"], secrets, config_maps))
    trainer = body["spec"]["trainer"]
    # Exactly what the Trainer's torch policy injects into node `node_rank`'s trainer container.
    env.update(PET_NNODES=str(trainer["numNodes"]), PET_NPROC_PER_NODE=str(trainer["numProcPerNode"]),
               PET_NODE_RANK=str(node_rank), PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port))
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(audit_dir), env.get("PYTHONPATH")])),
               LIVO_TEST_AUDIT_ROOT=str(audit_root), LIVO_TEST_AUDIT_LOG=str(audit_dir / f"node-{node_rank}.jsonl"))
    return env


def prepare_audit(tmp_path: Path) -> Path:
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (audit_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    return audit_dir


def launch_nodes(body: dict, **env_settings) -> list[tuple[int, str, str]]:
    """Start both nodes at once; wait for both (each within NODE_TIMEOUT_S); return (exit code, stdout, stderr)."""
    trainer = body["spec"]["trainer"]
    command = [*trainer["command"], *trainer["args"]]
    port = free_port()
    processes = [subprocess.Popen(command, env=node_environment(body, rank, port, **env_settings), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
                 for rank in range(trainer["numNodes"])]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=NODE_TIMEOUT_S)
            results.append((process.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a node did not finish within {NODE_TIMEOUT_S} s (rendezvous or training hung)")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for node, (code, _, err) in enumerate(results):
        assert code == 0, f"node {node} exited {code}:\n{err[-4000:]}"
    return results


def events(lines: str) -> list[dict]:
    found = []
    for line in lines.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


def first_step_gradients(launch_args: list[str]):
    """Recompute step 1 here: each rank's loss and gradient on its own micro-batch, noise and initial weights."""
    import torch

    from livo.training.data import PairBatches, PairSchedule
    from livo.training.launch import build_parser, config_from_args
    from livo.training.trainer import load_models, noise_generator_seed, open_dataset, step_loss

    torch.set_num_threads(1)  # the nodes ran with OMP_NUM_THREADS=1: same reduction order
    config = config_from_args(build_parser().parse_args(launch_args))
    per_device, accumulation, _ = config.batch_layout(2)
    models = load_models(config, "cpu", "fp32", 0)
    dataset = open_dataset(config)
    schedule = PairSchedule.build(dataset.scenes, len(dataset), seed=config.seed, per_device=per_device,
                                  accumulation=accumulation, world_size=2)
    params = [p for p in models.value_encoder.parameters() if p.requires_grad]
    losses, grads = [], []
    for rank in (0, 1):
        batch = PairBatches(dataset.rows, schedule, rank, use_latents=True, use_prompt_embeds=True,
                            resolution=None)[0]
        generator = torch.Generator().manual_seed(noise_generator_seed(config.seed, rank))
        for p in params:
            p.grad = None
        loss, _ = step_loss(models, models.value_encoder, batch, generator, config.loss)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]).double())
    return losses, grads


def test_two_trainjob_nodes_form_one_world_average_gradients_and_write_once(tmp_path):
    import torch

    dataset = write_latent_dataset(tmp_path / "dataset")
    output = tmp_path / "shared-output"  # both nodes get the same location, as they share the object-store prefix
    launch_args = jobs.launch_arguments(dataset_uri=dataset, output_uri=str(output), principle_set_hash=PRINCIPLE_SET_HASH,
                                        overrides=OVERRIDES)
    body = jobs.trainjob_body(name="livo-train-two-nodes", namespace="test", image=IMAGE, launch_args=launch_args,
                              num_nodes=2, procs_per_node=1)
    assert body["spec"]["trainer"]["command"][0] == "torchrun"
    audit_dir = prepare_audit(tmp_path)

    results = launch_nodes(body, audit_dir=audit_dir, audit_root=output)

    # One world of two: the trainer recorded it, and global rank r ran on node r (static rendezvous on PET_NODE_RANK).
    record = json.loads((output / "result.json").read_text())
    assert record["world_size"] == 2 and record["metrics"]["world_size"] == 2
    by_rank = record["live_weights_sha256_by_rank"]
    assert len(by_rank) == 2 and by_rank[0] == by_rank[1]
    for node, (_, _, err) in enumerate(results):
        final = [e for e in events(err) if e.get("msg") == "final weights"]
        assert [e["rank"] for e in final] == [node], f"node {node} ran ranks {[e['rank'] for e in final]}"
    exports = [[e for e in events(err) if e.get("msg") == "value encoder exported"] for _, _, err in results]
    assert [len(e) for e in exports] == [1, 0]

    # Gradients averaged over the two ranks: the logged step-1 gradient norm is that of the mean gradient.
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2]
    losses, (g0, g1) = first_step_gradients(launch_args)
    mean_norm = float(torch.linalg.vector_norm((g0 + g1) / 2))
    logged = log[0]["grad_norm"]
    assert logged == pytest.approx(mean_norm, rel=1e-4), (logged, mean_norm)
    # ... and not what one rank alone, or a sum, would give (each differs by far more than the tolerance).
    for wrong in (float(torch.linalg.vector_norm(g0)), float(torch.linalg.vector_norm(g1)),
                  float(torch.linalg.vector_norm(g0 + g1))):
        assert abs(wrong - mean_norm) > 0.01 * mean_norm, (wrong, mean_norm)
    assert log[0]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4), (log[0]["loss"], losses)

    # Exactly one writer: everything outside checkpoints/ comes from global rank 0 on node 0, each output once.
    writes = [json.loads(line) for path in sorted(audit_dir.glob("node-*.jsonl"))
              for line in path.read_text().splitlines()]
    assert writes, "the audit hook recorded nothing"
    # Every rank checks at the door that it can write the output (a probe file it deletes at once; docs/training.md):
    # that is not an output, and is asserted below to leave nothing behind.
    probes = [w for w in writes if any(Path(p).name.startswith(".livo-write-probe-") for p in w["paths"])
              or (w["event"] == "os.mkdir" and w["paths"] == ["."])]  # ...after making sure the directory exists
    assert {w["rank"] for w in probes} == {"0", "1"}, probes
    writes = [w for w in writes if w not in probes]
    outside = [w for w in writes if not all(p.startswith("checkpoints") for p in w["paths"])]
    assert {(w["rank"], w["node"]) for w in outside} == {("0", "0")}, outside
    node1 = [w for w in writes if w["node"] == "1"]
    assert {w["rank"] for w in node1} <= {"1", None}  # None: node 1's torchrun agent (it writes nothing here)
    for w in node1:
        for path in w["paths"]:
            assert path.startswith("checkpoints/step-00000002"), w
            name = Path(path).name
            assert name in ("step-00000002", "checkpoints") or name.startswith((".rng-rank1.", "rng-rank1.")), w
    renamed_into = [w["paths"][1] for w in writes if w["event"] == "os.rename"]
    for final_name in ("result.json", "metrics.json", "value_encoder"):
        assert renamed_into.count(final_name) == 1, (final_name, renamed_into)
    # (torch.save writes through C++, unseen by the audit hook: DeepSpeed's shards are checked by name below.)
    # The shared location holds the run's files once, and both ranks' checkpoint shards.
    top = sorted(p.name for p in output.iterdir())
    # mlflow.db: rank 0's experiment-tracking store, written once (no MLFLOW_TRACKING_URI: SQLite in the output,
    # docs/tracking.md)
    assert top == ["checkpoints", "metrics.json", "mlflow.db", "result.json", "train_log.jsonl",
                   "training_config.json", "value_encoder"], top
    checkpoint = sorted(p.name for p in (output / "checkpoints" / "step-00000002").iterdir())
    assert {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "rng-rank0.safetensors", "rng-rank1.safetensors", "COMPLETE.json"} <= set(checkpoint), checkpoint


def test_a_node_started_without_torchrun_refuses_to_train_alone(tmp_path):
    """The bug this guards against: `python -m livo.training.launch` in a TrainJob node trains as a world of one."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(PET_NNODES="2", PET_NPROC_PER_NODE="8", PET_NODE_RANK="1", PET_MASTER_ADDR="127.0.0.1",
               PET_MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "livo.training.launch", "--dataset", str(tmp_path / "none"),
                             "--output", str(tmp_path / "out"), "model=tiny"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("livo: error:")]
    assert len(errors) == 1 and "ask for 16 processes" in errors[0] and "torchrun -m livo.training.launch" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.store
def test_two_nodes_write_checkpoints_under_the_object_store_prefix_without_a_shared_volume(tmp_path, store):
    """Output s3://bucket/prefix, the dataset in the store, the credentials from the Secret/ConfigMap references, each
    node with its own scratch (the runtime's emptyDir): each node uploads its own ranks' checkpoint shards, rank 0
    commits, and everything lands under the output prefix."""
    dataset_dir = write_latent_dataset(tmp_path / "dataset")
    store.upload_dir("datasets/d1", Path(dataset_dir), progress=False)
    prefix = "runs/r1/train"
    launch_args = jobs.launch_arguments(dataset_uri=store.uri("datasets/d1"), output_uri=store.uri(prefix),
                                        principle_set_hash=PRINCIPLE_SET_HASH, overrides=OVERRIDES)
    body = jobs.trainjob_body(name="livo-train-s3", namespace="test", image=IMAGE, launch_args=launch_args,
                              num_nodes=2, procs_per_node=1, store_secret_name="livo-object-store",
                              store_config_map_name="team-store")
    creds = store.env()
    secrets = {"livo-object-store": {"accesskey": creds["LIVO_S3_ACCESS_KEY"],
                                     "secretkey": creds["LIVO_S3_SECRET_KEY"]}}
    config_maps = {"team-store": {"endpoint": creds["LIVO_S3_ENDPOINT"], "bucket": creds["LIVO_S3_BUCKET"]}}
    audit_dir = prepare_audit(tmp_path)
    launch_nodes(body, audit_dir=audit_dir, audit_root=tmp_path / "no-shared-volume", secrets=secrets,
                 config_maps=config_maps)

    record = store.get_json(f"{prefix}/result.json")
    assert record["world_size"] == 2
    assert record["live_weights_sha256_by_rank"][0] == record["live_weights_sha256_by_rank"][1]
    assert record["value_encoder"]["uri"] == store.uri(f"{prefix}/value_encoder")
    keys = store.list("")
    assert all(k.startswith(("datasets/d1/", f"{prefix}/")) for k in keys), keys
    step = f"{prefix}/checkpoints/step-00000002"
    shards = {k.removeprefix(step + "/") for k in keys if k.startswith(step + "/")}
    assert {"COMPLETE.json", "trainer_state.json", "mp_rank_00_model_states.pt", "rng-rank0.safetensors",
            "rng-rank1.safetensors", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards, shards
    committed = store.get_json(f"{step}/COMPLETE.json")
    assert committed["world_size"] == 2 and set(committed["files"]) == shards - {"COMPLETE.json"}
    # Each node staged only its own ranks' files: node 1's shard reached the store through node 1's upload.
    staged = {node: {p.name for p in (tmp_path / f"workspace-node-{node}").rglob("step-00000002/*")} for node in (0, 1)}
    assert staged == {0: {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                          "rng-rank0.safetensors", "trainer_state.json"},
                      1: {"zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng-rank1.safetensors"}}, staged
    assert not (tmp_path / "no-shared-volume").exists()
