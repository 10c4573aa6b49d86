"""Fixtures for training tests (helpers live in training_helpers.py)."""

from __future__ import annotations

import os

import pytest
from training_helpers import free_port, write_image_dataset, write_latent_dataset


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory) -> str:
    return write_image_dataset(tmp_path_factory.mktemp("image-dataset"))


@pytest.fixture(scope="session")
def latent_dataset(tmp_path_factory) -> str:
    return write_latent_dataset(tmp_path_factory.mktemp("latent-dataset"))


@pytest.fixture
def single_rank_env(monkeypatch):
    """The variables a launcher would set, for a world of one on a port no other test uses."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)
