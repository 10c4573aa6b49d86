"""`livo train --nproc 2` preempted by SIGTERM (what Kubernetes sends PID 1 before killing a pod): the launcher
forwards it, the ranks save a checkpoint, and the command exits 143 with one `livo: error:` line and no traceback,
so a KFP retry resumes. Real processes: the CLI, torchrun and two ranks on the tiny preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import write_latent_dataset  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_sigterm_to_livo_train_nproc_2_exits_143_with_one_line_and_a_checkpoint(tmp_path):
    dataset = write_latent_dataset(tmp_path / "dataset")
    output = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(LIVO_LOG_FORMAT="json", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "livo.cli", "train", "--nproc", "2", "--dataset", dataset, "--output",
               str(output), "model=tiny", "max_steps=100000", "global_batch_size=8", "log_every=1",
               "checkpoint.every_steps=100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    stepping = threading.Event()

    def read_stderr() -> None:
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if '"train step"' in line:
                stepping.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert stepping.wait(timeout=300), "no training step within 300 s:\n" + "\n".join(lines[-40:])
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)  # the parent only, as the kubelet does
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    stderr = "\n".join(lines)

    assert code == 143, stderr[-4000:]
    assert "Traceback" not in stderr and "SignalException" not in stderr, stderr[-4000:]
    errors = [line for line in lines if line.startswith("livo: error:")]
    assert errors == ["livo: error: training stopped by SIGTERM after saving a checkpoint; rerun with --resume"]
    assert lines[-1] == errors[0]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    preempted = [e for e in events if e.get("msg") == "preempted: checkpoint saved, exiting"]
    assert sorted(e["rank"] for e in preempted) == [0, 1]
    assert list((output / "checkpoints").glob("step-*")), "the ranks did not save a checkpoint before exiting"


def test_torchrun_exit_statuses_translate_to_the_contract():
    """The translation table itself (no processes): signal outcomes and rank exit codes."""
    from livo.errors import ConfigError, LivoError
    from livo.training.jobs import TrainingPreempted, _launcher_outcome, _ranks_exit_code

    assert _launcher_outcome(0, terminated=False) == 0
    for code, terminated in ((143, False), (-15, False), (1, True), (-9, True)):
        with pytest.raises(TrainingPreempted) as caught:
            _launcher_outcome(code, terminated=terminated)
        assert caught.value.exit_code == 143
    with pytest.raises(ConfigError):
        _launcher_outcome(2, terminated=False)
    with pytest.raises(LivoError, match="killed by SIGKILL") as caught:
        _launcher_outcome(-9, terminated=False)
    assert caught.value.exit_code == 1
    with pytest.raises(KeyboardInterrupt):
        _launcher_outcome(130, terminated=False)
    assert _ranks_exit_code({0: 143, 1: -15}) == 143
    assert _ranks_exit_code({0: 2, 1: 2}) == 2
    assert _ranks_exit_code({0: 1, 1: 143}) == 1
    assert _ranks_exit_code({0: -11}) == 1
