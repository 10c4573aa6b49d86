"""A full disk and an early SIGTERM, on the real `livo train` command (tiny preset, CPU, a subprocess each).

The full disk is real: a 1 MiB tmpfs (needs root; skipped elsewhere) holding the output, filled so that the write
probe at start-up passes and the first checkpoint does not fit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

TRAIN = [sys.executable, "-m", "livo.cli", "train", "--model", "tiny"]
OVERRIDES = ["per_device_batch_size=4", "seed=0", "optimizer.lr=1e-3", "log_every=1", "data_workers=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def full_disk(tmpfs):
    mount = tmpfs("size=1m")
    if mount is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    with open(mount / "filler", "wb") as handle:  # leave 8 KiB: the probe fits, a checkpoint does not
        handle.write(b"\0" * (shutil.disk_usage(mount).free - 8 * 1024))
    return mount


def test_a_full_disk_at_the_first_checkpoint_is_one_line(image_dataset, full_disk):
    out = full_disk / "run"
    done = subprocess.run(TRAIN + ["--dataset", image_dataset, "--output", str(out), "--max-steps", "2", *OVERRIDES,
                                   "checkpoint.every_steps=1"], capture_output=True, text=True, timeout=600,
                          env=_env())
    errors = [line for line in done.stderr.splitlines() if line.startswith("livo: error:")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "no space left on the device writing checkpoint step 1 to " + str(out / "checkpoints" / "step-00000001") \
        in errors[0]
    assert "it needs about" in errors[0]
    # Nothing half-written passes for a checkpoint: no commit object, so resume ignores it.
    assert not list(out.glob("checkpoints/*/COMPLETE.json")) and not (out / "result.json").exists()


def test_sigterm_before_the_first_step_says_nothing_was_saved(image_dataset, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(TRAIN + ["--dataset", image_dataset, "--output", str(out), "--max-steps", "50",
                                        *OVERRIDES],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stderr:  # the dataset is checked; models are about to load: stop the run now
        lines.append(line)
        if "training planned" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=300)
    log = "".join(lines) + rest
    assert process.returncode == 143, log[-3000:]
    assert "preempted before the first step: nothing to save" in log, log[-3000:]
    assert "checkpoint saved" not in log, log[-3000:]
    assert not list(out.glob("checkpoints/*/COMPLETE.json"))
