"""`livo generate` / `livo data` from the command line: errors, and a real SIGKILL in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livo.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
TINY_ARGS = [
    f"principles_file={FIXTURES / 'principles_colour.yaml'}",
    "judging.attribute=toy-attribute",
    "judging.concept=toy-concept",
    "judging.accept_all=true",
    "num_inference_steps=2",
    "max_prompts_per_principle=null",  # every fixture prompt, whatever the tiny preset's own cap
]


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    code = main(["generate", "--out", str(tmp_path / "x"), "--principle", "gender-equity", *TINY_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown principle id 'gender-equity'" in err and "known ids: colour-equality, bloody" in err
    assert main(["generate", "--shard-index", "1", *TINY_ARGS]) == 2
    assert "--shard-index needs --shard-count" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "x"), "candidates_per_scene=0", *TINY_ARGS]) == 2
    assert "candidates_per_scene" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["data", "verify", str(tmp_path / "missing")]) == 2  # a dataset that is not there: bad input
    assert "no manifest.json" in capsys.readouterr().err


def _livo(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "livo.cli", "generate", "--no-progress", "--json", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIVO_RUNS_DIR": str(tmp_path / "runs")}
    env.pop("LIVO_S3_ENDPOINT", None)
    args = [*TINY_ARGS, "num_shards=5", "candidates_per_scene=6"]
    whole = _livo(["--out", str(tmp_path / "whole"), *args], env)

    killed_dir = tmp_path / "killed"
    victim = _livo(["--out", str(killed_dir), *args], env)
    first_commit = killed_dir / "shard-00000-of-00005" / "shard.json"
    deadline = time.monotonic() + 300
    while not first_commit.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert first_commit.exists(), "the run died before its first shard"
    assert not (killed_dir / "manifest.json").exists(), "the run finished before it could be killed"

    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    resumed = subprocess.run([sys.executable, "-m", "livo.cli", "generate", "--no-progress", "--json", "--out",
                              str(killed_dir), *args], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    import json

    summary = json.loads(resumed.stdout)
    assert 0 in summary["shards_skipped"] and summary["manifest_written"]
    assert (killed_dir / "manifest.json").read_bytes() == (tmp_path / "whole" / "manifest.json").read_bytes()
    assert main(["data", "verify", str(killed_dir)]) == 0
