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
def small_tmpfs(tmpfs):
    """A real filesystem of 1 MiB (tmpfs; needs root), for out-of-space tests without filling a real disk.

    Returns (mount point, fill): `fill(free_bytes)` writes a filler file so that about `free_bytes` stay free."""
    import os
    import shutil

    mount = tmpfs("size=1m")
    if mount is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def fill(free_bytes: int) -> None:
        room = shutil.disk_usage(mount).free - free_bytes
        with open(mount / "filler", "wb") as handle:
            handle.write(b"\0" * max(room, 0))
            handle.flush()
            os.fsync(handle.fileno())

    return mount, fill
