"""Fixtures of the evaluation tests: tiny random CLIP / LLaVA models on disk (no hub), offline hub settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from livo.evaluation.tiny import build_tiny_clip, build_tiny_llava


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # A judge given a hub id must fail at once here, not after transformers' network retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))
