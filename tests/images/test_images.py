"""images/: the Dockerfiles meet the policy (offline; no Docker engine here), the policy check catches each
violation, and every KFP component runs on our image, referenced by digest."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
sys.path.insert(0, str(IMAGES))
import check_dockerfiles  # noqa: E402

DOCKERFILES = sorted(p for p in IMAGES.glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))
GOOD_IGNORE = "**\n!pyproject.toml\n!livo/**\n"


def test_both_variants_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cuda", "Dockerfile.cpu"}


def test_our_dockerfiles_pass_the_policy_check():
    result = subprocess.run([sys.executable, str(IMAGES / "check_dockerfiles.py")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout
    assert "checked 2 Dockerfile(s): 0 violation(s)" in result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(dockerfile):
    text = dockerfile.read_text()
    assert "COPY configs /opt/livo/configs" in text  # livo.paths looks there inside the image
    assert "LIVO_CONFIG_DIR=/opt/livo/configs" in text
    assert "-c constraints.txt \".[all]\"" in text
    instructions = check_dockerfiles.parse_dockerfile(text)
    assert instructions[-2].keyword == "USER" and instructions[-2].args == "10001:10001"


def test_dockerignores_match_and_keep_secrets_out():
    ignores = [p.with_name(p.name + ".dockerignore").read_text() for p in DOCKERFILES]
    assert ignores[0] == ignores[1]
    rules = ignores[0].splitlines()
    assert rules[rules.index("**") + 1:].count("!livo/**") == 1
    assert "**/.env" in rules and "!.venv" not in rules


BAD_CASES = {
    "pinned-base": "FROM python:3.11-slim\nUSER 1000\n",
    "no-latest": "FROM ubuntu:latest@sha256:" + "a" * 64 + "\nUSER 1000\n",
    "non-root-user": "FROM python@sha256:" + "a" * 64 + "\nUSER root\n",
    "no-secrets": "FROM python@sha256:" + "a" * 64 + "\nENV AWS_SECRET_ACCESS_KEY=abc\nCOPY .env /app/.env\nUSER 1\n",
    "no-remote-add": "FROM python@sha256:" + "a" * 64 + "\nADD https://example.org/x.tar.gz /x\nUSER 1\n",
    "pinned-deps": "FROM python@sha256:" + "a" * 64 + "\nRUN pip install \".[all]\"\nUSER 1\n",
    "apt-hygiene": "FROM python@sha256:" + "a" * 64 + "\nRUN apt-get update && apt-get install -y curl\nUSER 1\n",
}


@pytest.mark.parametrize("rule", sorted(BAD_CASES))
def test_policy_check_catches(rule, tmp_path):
    dockerfile = tmp_path / "Dockerfile.bad"
    dockerfile.write_text(BAD_CASES[rule])
    (tmp_path / "Dockerfile.bad.dockerignore").write_text(GOOD_IGNORE)
    rules = {v.rule for v in check_dockerfiles.check_dockerfile(dockerfile)}
    assert rule in rules


def test_policy_check_resolves_arg_defaults_and_stages(tmp_path):
    dockerfile = tmp_path / "Dockerfile.x"
    dockerfile.write_text(
        "ARG BASE=python:3.11@sha256:" + "b" * 64 + "\n"
        "FROM ${BASE} AS build\nRUN pip install -c constraints.txt \".[pipeline]\"\n"
        "FROM build\nUSER 10001\n"
    )
    (tmp_path / "Dockerfile.x.dockerignore").write_text(GOOD_IGNORE)
    assert check_dockerfiles.check_dockerfile(dockerfile) == []
    dockerfile.write_text("ARG BASE=python:3.11\nFROM ${BASE}\nRUN pip install -c constraints.txt \".[all]\"\nUSER 1\n")
    violations = check_dockerfiles.check_dockerfile(dockerfile)
    assert [v.rule for v in violations] == ["pinned-base"]
    assert "python:3.11" in violations[0].detail


def test_policy_check_missing_dockerignore_and_kfp(tmp_path):
    dockerfile = tmp_path / "Dockerfile.y"
    dockerfile.write_text("FROM python@sha256:" + "c" * 64 + "\nRUN pip install -c constraints.txt .\nUSER 1\n")
    assert {v.rule for v in check_dockerfiles.check_dockerfile(dockerfile)} == {"dockerignore", "kfp-inside"}


def _component_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / "components").glob("*.py") if not p.stem.startswith("_"))


def test_every_component_runs_on_the_livo_image():
    from kfp.dsl.base_component import BaseComponent

    from components._image import LIVO_IMAGE, is_digest_pinned

    assert is_digest_pinned(LIVO_IMAGE)
    found = {}
    for name in _component_modules():
        module = importlib.import_module(f"components.{name}")
        for attr in vars(module).values():
            if isinstance(attr, BaseComponent) and attr.component_spec.implementation.container is not None:
                found[attr.name] = attr.component_spec.implementation.container.image
    assert found, "no component found under components/"
    assert {name: image for name, image in found.items() if image != LIVO_IMAGE} == {}
    assert {"validate-inputs", "principles-changed", "record-outcome"} <= set(found)


def test_livo_image_is_overridable_at_compile_time_and_must_be_pinned():
    code = ("import components._image as m; print(m.LIVO_IMAGE, m.is_digest_pinned(m.LIVO_IMAGE), "
            "m.is_published(m.LIVO_IMAGE))")
    pushed = "registry.example.org/team/livo:1.0@sha256:" + "d" * 64
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"LIVO_IMAGE": pushed, "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == [pushed, "True", "True"], out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"LIVO_IMAGE": "registry.example.org/team/livo:1.0", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split()[1:] == ["False", "False"]
    from components._image import PUBLISHED_IMAGE, is_published

    assert not is_published(PUBLISHED_IMAGE)  # nothing published yet: `livo submit` refuses it
