"""Preemption: SIGTERM in the middle of a run saves a checkpoint and exits 143; `--resume` then finishes the run with
final weights bit-identical to an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from training_helpers import load_exported

MAX_STEPS = 8
ARGS = ["max_steps=8", "per_device_batch_size=2", "optimizer.lr=1e-3", "log_every=1", "checkpoint.every_steps=5",
        "model=tiny", "seed=0"]


def launcher_env() -> dict[str, str]:
    """This environment without any launcher variables: the launch module must set them itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["LIVO_LOG_FORMAT"] = "json"
    env["OMP_NUM_THREADS"] = "1"  # one thread in every run, so the compared runs reduce in the same order
    return env


def launch(dataset: str, output, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "livo.training.launch", "--dataset", dataset, "--output", str(output), *ARGS, *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=launcher_env())


def events(lines: list[str], name: str) -> list[dict]:
    found = []
    for line in lines:
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == name:
                found.append(record)
    return found


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical(tmp_path, latent_dataset, single_rank_env):
    # The reference goes through the same launcher and environment as the interrupted run: an in-process run would
    # inherit whatever torch thread count earlier tests left, and CPU kernels reduce in a thread-dependent order.
    reference = tmp_path / "uninterrupted"
    uninterrupted = launch(latent_dataset, reference)
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-3000:]

    interrupted = tmp_path / "interrupted"
    process = launch(latent_dataset, interrupted)
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in process.stderr:
            seen.append(line.strip())
            steps = events(seen[-1:], "train step")
            if steps and steps[0]["step"] >= 2:
                process.send_signal(signal.SIGTERM)  # what Kubernetes does before killing a pod
                break
            assert time.monotonic() < deadline, "training did not start in time"
        seen.extend(line.strip() for line in process.stderr)
        assert process.wait(timeout=120) == 143, "\n".join(seen[-20:])
    finally:
        if process.poll() is None:
            process.kill()
    stopped = events(seen, "preempted: checkpoint saved, exiting")
    assert stopped, "\n".join(seen[-20:])
    stop_step = stopped[0]["step"]
    assert 2 <= stop_step < MAX_STEPS
    assert (interrupted / "checkpoints" / f"step-{stop_step:08d}" / "COMPLETE.json").is_file()
    assert not (interrupted / "value_encoder").exists()

    resumed = launch(latent_dataset, interrupted, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert events(err.splitlines(), "resumed")[0]["step"] == stop_step

    expected, actual = load_exported(reference), load_exported(interrupted)
    assert set(expected) == set(actual)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs after resume"
    steps = [json.loads(line)["step"] for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
