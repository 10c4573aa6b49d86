"""benchmarks/gpu_session.sh, the one prepared script a device lease runs: every benchmark's JSON line is kept under
its label, a failure does not stop the rest, ONLY selects, and the session's deadline skips what no longer fits.

The benchmarks themselves need a CUDA GPU; here a stand-in `python3` on PATH prints what a benchmark prints (its
JSON line) — or fails for one label — while every `python3 -c` / `-m` the script runs itself goes to this Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LABELS = ["train-sd15-b8", "train-sd15-b32", "train-sdxl-b2", "generate-sd15", "evaluate-sd15",
          "train-sd15-b32-compiled", "train-sd15-b32-fused-cl", "train-sdxl-b8", "train-sd15-b8-refnockpt",
          "train-sd15-b64-compiled"]


def run_session(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    # a copy of the script in a bare folder: no .whl/ there, so nothing is installed
    work = tmp_path / "checkout"
    (work / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "gpu_session.sh", work / "benchmarks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        f'case "$1" in -c|-m) exec "{sys.executable}" "$@";; esac\n'
        'case "$*" in *generate.py*) echo "generate failed" >&2; exit 3;; esac\n'
        'echo "some log line"\n'
        'echo "{\\"command\\": \\"python $*\\", \\"samples_per_s\\": 1.5}"\n')
    (bin_dir / "python3").chmod(0o755)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=work, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                            "OUT": str(out), **env})
    return proc, out


def test_each_benchmark_is_labelled_and_a_failure_does_not_stop_the_rest(tmp_path):
    proc, out = run_session(tmp_path, ONLY="train-sd15-b8 generate-sd15 train-sdxl-b8")
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["label"] for r in results] == ["train-sd15-b8", "train-sdxl-b8"]
    assert results[0]["command"].startswith("python benchmarks/train_step.py --preset sd15-random --device cuda")
    assert results[0]["samples_per_s"] == 1.5
    log = (out / "log.txt").read_text()
    assert "generate-sd15: rc=3" in log and "generate failed" in log and "train-sdxl-b8: rc=0" in log
    assert "evaluate-sd15" not in log  # not selected
    assert "done: 2 results" in proc.stdout
    assert (out / "versions.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.jsonl", "versions.txt"]  # 3 files back


def test_the_deadline_skips_what_no_longer_fits(tmp_path):
    proc, out = run_session(tmp_path, BUDGET_S="0")
    assert proc.returncode == 0, proc.stderr
    for label in LABELS:
        assert f"skipped {label}:" in proc.stdout
    assert not (out / "results.jsonl").exists() and "done: 0 results" in proc.stdout
