"""Session-wide fixtures shared by every test package.

`seaweed_store`: one embedded SeaweedFS server for the whole session (started on first use), as an ObjectStore.
`store`: a fresh, empty bucket on that server for one test. Neither sets environment variables; a test that needs
`LIVO_S3_*` in a subprocess takes them from `store.env()`.
Every test also gets back the `print` and torch thread count it started with (see `_isolate_process_state`).

Experiment tracking is off in tests (`LIVO_TRACKING=none`, inherited by subprocesses) unless a test turns it on:
each MLflow-tracked stage costs 2-4 s of CPU. The tracking tests (tests/test_tracking.py,
tests/training/test_tracking_server.py) clear it, and `livo run` end to end (tests/pipelines/test_local_run.py) runs
with the default, tracking on.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from livo.store import EmbeddedSeaweedFS, ObjectStore

os.environ.setdefault("LIVO_TRACKING", "none")


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweedFS]:
    with EmbeddedSeaweedFS(tmp_path_factory.mktemp("seaweedfs"), bucket="livo-session", stop_grace_s=2.0) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_store(seaweed_server: EmbeddedSeaweedFS) -> ObjectStore:
    return seaweed_server.store()


@pytest.fixture
def store(seaweed_store: ObjectStore) -> ObjectStore:
    fresh = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    fresh.ensure_bucket()
    return fresh


@pytest.fixture(autouse=True)
def _isolate_process_state() -> Iterator[None]:
    """Undo process-wide state a test may leave behind: kfp.local swaps `builtins.print` to indent task logs and, when
    ParallelFor tasks finish in start order, leaves its indenting print installed; a `tracking: none` stage leaves
    livo.tracking's guard that keeps mlflow unimported and any recorded tracking failure; tests that pin torch threads for
    speed must not change the numerics of the tests after them."""
    import torch

    original_print, threads = builtins.print, torch.get_num_threads()
    yield
    builtins.print = original_print
    if "livo.tracking" in sys.modules:  # a `tracking: none` stage keeps mlflow unimportable in its process; not here
        sys.modules["livo.tracking"].reset()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path | None]]:
    """`tmpfs("size=1m")` mounts a real tmpfs with those options under tmp_path and returns its mount point, or None
    where mounting is impossible (not root); every mount is undone after the test. For out-of-space and read-only
    tests without touching a real disk."""
    mounts: list[Path] = []

    def mount(options: str) -> Path | None:
        point = tmp_path / f"tmpfs-{len(mounts)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode != 0:
            return None
        mounts.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounts:
            subprocess.run(["umount", "-l", str(point)], check=False)

