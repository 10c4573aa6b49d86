"""Fixtures of the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model's work is too small to share across threads; on a busy 2-core machine two OpenMP threads
    spinning against other processes made generation ~15× slower than one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real filesystem of 1 MiB (tmpfs; needs root), for out-of-space tests without filling a real disk.

    Yields (mount point, fill): `fill(free_bytes)` writes a filler file so that about `free_bytes` stay free."""
    import subprocess

    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")

    def fill(free_bytes: int) -> None:
        import os
        import shutil

        room = shutil.disk_usage(mount).free - free_bytes
        with open(mount / "filler", "wb") as handle:
            handle.write(b"\0" * max(room, 0))
            handle.flush()
            os.fsync(handle.fileno())

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
