"""Two ranks on CPU (torchrun, gloo, ZeRO-2): weights stay in sync, the loss falls, and the exported value encoder
equals both the live weights and DeepSpeed's consolidation of the sharded ZeRO-2 checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import held_out_loss, load_exported, write_latent_dataset  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(LIVO_LOG_FORMAT="json", OMP_NUM_THREADS="1")
    # --standalone: a private rendezvous on a free port, so concurrent tests never collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "livo.training.launch", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_stay_in_sync_learn_and_export_the_consolidated_weights(tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from livo.modeling import ValueEncoder
    from livo.presets import build_tiny_pipeline

    dataset = write_latent_dataset(tmp_path / "dataset")
    output = tmp_path / "run"
    result = torchrun("--dataset", dataset, "--output", str(output), "model=tiny", "max_steps=16",
                      "global_batch_size=8", "optimizer.lr=1e-3", "log_every=4", "checkpoint.every_steps=8",
                      "zero_stage=2")
    assert result.returncode == 0, result.stderr[-4000:]

    record = json.loads((output / "result.json").read_text())
    assert record["world_size"] == 2 and record["zero_stage"] == 2
    by_rank = record["live_weights_sha256_by_rank"]
    assert len(by_rank) == 2 and by_rank[0] == by_rank[1]  # parameters in sync across ranks

    final = output / "checkpoints" / "step-00000016"
    assert sorted(p.name for p in final.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(output / "checkpoints"), tag=final.name)
    exported = load_exported(output)
    assert set(exported) == {k.removeprefix("text_model.") for k in consolidated}
    for key, tensor in consolidated.items():
        assert torch.equal(exported[key.removeprefix("text_model.")], tensor), key

    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 8, 12, 16]
    assert all(line["samples_per_s"] > 0 and line["grad_norm"] > 0 for line in lines)

    before = held_out_loss(ValueEncoder.from_text_encoder(build_tiny_pipeline(0).text_encoder), dataset, "livo")
    after = held_out_loss(ValueEncoder.from_pretrained(output / "value_encoder"), dataset, "livo")
    assert after < before - 0.03, (before, after)


def test_deepspeed_launcher_with_zero3_exports_the_gathered_weights(tmp_path):
    """The deepspeed launcher (passes --local_rank) and ZeRO-3 (parameters partitioned across ranks)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from training_helpers import free_port

    dataset = write_latent_dataset(tmp_path / "dataset")
    output = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    deepspeed = Path(sys.executable).with_name("deepspeed")
    result = subprocess.run(
        [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "livo.training.launch",
         "--dataset", dataset, "--output", str(output), "model=tiny", "max_steps=4", "per_device_batch_size=2",
         "optimizer.lr=1e-3", "checkpoint.every_steps=2", "zero_stage=3"],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    record = json.loads((output / "result.json").read_text())
    assert record["zero_stage"] == 3 and record["world_size"] == 2
    assert record["live_weights_sha256_by_rank"][0] == record["live_weights_sha256_by_rank"][1]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(output / "checkpoints"), tag="step-00000004")
    exported = load_exported(output)
    assert len(consolidated) == len(exported)
    for key, tensor in consolidated.items():
        assert torch.equal(exported[key.removeprefix("text_model.")], tensor), key
