"""livo/images.py: which image a package runs in (--image > LIVO_IMAGE > PUBLISHED_IMAGE), digest pinning, swapping
the image of an already compiled package, and what lineage records about the image a task ran in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from livo.errors import ConfigError
from livo.images import (
    PUBLISHED_IMAGE,
    is_published,
    package_images,
    require_published,
    resolve_image,
    retarget_package,
    running_image,
)

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines" / "livo_full.yaml"
PUSHED = "registry.example.org/team/livo:1.0@sha256:" + "d" * 64


def test_image_comes_from_the_flag_then_the_environment_then_the_published_default(monkeypatch):
    monkeypatch.delenv("LIVO_IMAGE", raising=False)
    assert resolve_image() == PUBLISHED_IMAGE and not is_published(PUBLISHED_IMAGE)
    monkeypatch.setenv("LIVO_IMAGE", PUSHED)
    assert resolve_image() == PUSHED
    other = PUSHED.replace("d" * 64, "a" * 64)
    assert resolve_image(other) == other
    monkeypatch.setenv("LIVO_IMAGE", "registry.example.org/team/livo:1.0")
    with pytest.raises(ConfigError, match=r"from LIVO_IMAGE\) is not pinned by digest"):
        resolve_image()
    with pytest.raises(ConfigError, match=r"from --image\) is not pinned by digest"):
        resolve_image("livo@sha256:abc")


def test_the_unpublished_marker_cannot_be_submitted():
    with pytest.raises(ConfigError, match="cannot submit with image .* not a published digest.*--image"):
        require_published(PUBLISHED_IMAGE, action="submit")
    require_published(PUSHED, action="submit")


def test_retargeting_a_compiled_package_replaces_every_occurrence_and_nothing_else():
    text = PACKAGE.read_text()
    occurrences = text.count(PUBLISHED_IMAGE)
    assert occurrences >= 10  # every executor plus the training and registration tasks' image inputs
    retargeted = retarget_package(text, PUSHED)
    assert retargeted.count(PUSHED) == occurrences and PUBLISHED_IMAGE not in retargeted
    assert package_images(next(yaml.safe_load_all(retargeted))) == {PUSHED}
    assert retargeted.replace(PUSHED, PUBLISHED_IMAGE) == text
    assert retarget_package(retargeted, PUSHED) == retargeted
    with pytest.raises(ConfigError, match="not pinned by digest"):
        retarget_package(text, "example.org/livo:1.0")


def test_lineage_names_an_image_only_when_the_task_ran_in_one(monkeypatch):
    monkeypatch.delenv("LIVO_IMAGE_VARIANT", raising=False)
    assert running_image(PUSHED) == {"reference": "", "variant": "", "ran_in": "local process (no container image)"}
    monkeypatch.setenv("LIVO_IMAGE_VARIANT", "cuda")
    assert running_image(PUSHED) == {"reference": PUSHED, "variant": "cuda", "ran_in": "container"}
