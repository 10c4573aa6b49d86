"""images/: the Dockerfiles meet the policy and hadolint (offline; no Docker engine here), the policy check catches
each violation, and every KFP component runs on our image, referenced by digest."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import os
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
PINNED_PY311 = "python:3.11-slim@sha256:" + "a" * 64
HADOLINT = Path(sys.executable).with_name("hadolint")
# A Dockerfile that passes every rule; the policy cases below break one thing each.
GOOD = (f"FROM {PINNED_PY311} AS build\nCOPY deps.lock /tmp/r.lock\n"
        "RUN pip install --require-hashes --no-deps -r /tmp/r.lock\nCOPY livo ./livo\nRUN pip install --no-deps .\n"
        "FROM build\nUSER 10001\n")


def _write(tmp_path, text: str, lock: str | None = "kfp==2.17.3 --hash=sha256:" + "e" * 64 + "\n") -> Path:
    dockerfile = tmp_path / "Dockerfile.t"
    dockerfile.write_text(text)
    (tmp_path / "Dockerfile.t.dockerignore").write_text(GOOD_IGNORE)
    if lock is not None:
        (tmp_path / "deps.lock").write_text(lock)
    return dockerfile


def test_both_variants_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cuda", "Dockerfile.cpu"}


def test_our_dockerfiles_pass_the_policy_check():
    result = subprocess.run([sys.executable, str(IMAGES / "check_dockerfiles.py")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout
    assert "checked 2 Dockerfile(s): 0 violation(s)" in result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(dockerfile):
    variant = dockerfile.suffix[1:]
    text = dockerfile.read_text()
    assert "COPY configs /opt/livo/configs" in text  # livo.paths looks there inside the image
    assert "LIVO_CONFIG_DIR=/opt/livo/configs" in text
    assert f"LIVO_IMAGE_VARIANT={variant}" in text and "LIVO_GIT_COMMIT=${GIT_COMMIT}" in text
    assert "torchvision" not in text.replace("! pip show torchvision", "").replace("torchvision got installed", "")
    instructions = check_dockerfiles.parse_dockerfile(text)
    assert instructions[-2].keyword == "USER" and instructions[-2].args == "10001:10001"
    args = [(ins.keyword, ins.args) for ins in instructions]
    lock_copy = args.index(("COPY", f"images/requirements-{variant}.lock /tmp/requirements.lock"))
    lock_install = next(i for i, (k, a) in enumerate(args)
                        if k == "RUN" and a.startswith("pip install --require-hashes --no-deps -r /tmp/requirements.lock"))
    livo_copy = args.index(("COPY", "livo ./livo"))
    assert lock_copy < lock_install < livo_copy < args.index(("RUN", "pip install --no-deps . && pip check"))
    # The CPU build of torch is only on the PyTorch index; the CUDA image takes PyPI's (CUDA) torch.
    assert ("download.pytorch.org/whl/cpu" in args[lock_install][1]) == (variant == "cpu")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile, tmp_path):
    result = _hadolint(dockerfile, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_catch_a_finding(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER root\n")
    result = _hadolint(bad, tmp_path)
    assert result.returncode == 1 and {"DL3006", "DL3008", "DL3002"} <= set(result.stdout.split())


def _hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing; reinstall the dev extra: pip install -c constraints.txt -e '.[dev]'")
    # No user config (HOME/XDG point at an empty folder): every rule counts, down to `style`.
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=home)


def test_dockerignores_match_and_keep_secrets_out():
    ignores = [p.with_name(p.name + ".dockerignore").read_text() for p in DOCKERFILES]
    assert ignores[0] == ignores[1]
    rules = ignores[0].splitlines()
    assert rules[rules.index("**") + 1:].count("!livo/**") == 1
    assert "**/.env" in rules and "!.venv" not in rules
    allowed = [rule[1:] for rule in rules[rules.index("**") + 1:] if rule.startswith("!")]
    for dockerfile in DOCKERFILES:  # everything the Dockerfile copies from the context is let in
        for ins in check_dockerfiles.parse_dockerfile(dockerfile.read_text()):
            if ins.keyword == "COPY" and "--from" not in ins.args:
                for source in ins.args.split()[:-1]:
                    assert any(fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source + "/x", p) for p in allowed), source


BAD_CASES = {
    "pinned-base": "FROM python:3.11-slim\nUSER 1000\n",
    "python-311": "FROM python:3.12-slim@sha256:" + "a" * 64 + "\nUSER 1000\n",
    "locked-deps": GOOD.replace("COPY livo ./livo\n", "").replace("COPY deps.lock", "COPY livo ./livo\nCOPY deps.lock"),
    "kfp-inside": GOOD.replace("COPY deps.lock", "COPY missing.lock"),
    "no-latest": "FROM ubuntu:latest@sha256:" + "a" * 64 + "\nUSER 1000\n",
    "non-root-user": "FROM python@sha256:" + "a" * 64 + "\nUSER root\n",
    "no-secrets": "FROM python@sha256:" + "a" * 64 + "\nENV AWS_SECRET_ACCESS_KEY=abc\nCOPY .env /app/.env\nUSER 1\n",
    "no-remote-add": "FROM python@sha256:" + "a" * 64 + "\nADD https://example.org/x.tar.gz /x\nUSER 1\n",
    "pinned-deps": "FROM python@sha256:" + "a" * 64 + "\nRUN pip install \".[all]\"\nUSER 1\n",
    "apt-hygiene": "FROM python@sha256:" + "a" * 64 + "\nRUN apt-get update && apt-get install -y curl\nUSER 1\n",
}


@pytest.mark.parametrize("rule", sorted(BAD_CASES))
def test_policy_check_catches(rule, tmp_path):
    rules = {v.rule for v in check_dockerfiles.check_dockerfile(_write(tmp_path, BAD_CASES[rule]))}
    assert rule in rules


def test_good_example_passes_and_each_lock_rule_bites(tmp_path):
    assert check_dockerfiles.check_dockerfile(_write(tmp_path, GOOD)) == []
    unhashed = GOOD.replace("--require-hashes ", "")
    assert [v.rule for v in check_dockerfiles.check_dockerfile(_write(tmp_path, unhashed))] == ["locked-deps"]
    resolving = GOOD.replace("pip install --no-deps .", "pip install .")
    violations = check_dockerfiles.check_dockerfile(_write(tmp_path, resolving))
    assert [(v.rule, v.line) for v in violations] == [("locked-deps", 5)]
    no_kfp = check_dockerfiles.check_dockerfile(_write(tmp_path, GOOD, lock="torch==2.13.0 --hash=sha256:" + "f" * 64))
    assert [v.rule for v in no_kfp] == ["kfp-inside"]


def test_policy_check_resolves_arg_defaults_and_stages(tmp_path):
    dockerfile = _write(tmp_path, "ARG BASE=python:3.11@sha256:" + "b" * 64 + "\n" + GOOD.replace(PINNED_PY311, "${BASE}"))
    assert check_dockerfiles.check_dockerfile(dockerfile) == []
    dockerfile = _write(tmp_path, "ARG BASE=python:3.11\n" + GOOD.replace(PINNED_PY311, "${BASE}"))
    violations = check_dockerfiles.check_dockerfile(dockerfile)
    assert [v.rule for v in violations] == ["pinned-base"]
    assert "python:3.11" in violations[0].detail
    dockerfile = _write(tmp_path, "ARG BASE=ubuntu:24.04@sha256:" + "b" * 64 + "\n" + GOOD.replace(PINNED_PY311, "${BASE}"))
    assert [v.rule for v in check_dockerfiles.check_dockerfile(dockerfile)] == ["python-311"]


def test_policy_check_missing_dockerignore_and_kfp(tmp_path):
    dockerfile = tmp_path / "Dockerfile.y"
    dockerfile.write_text("FROM python:3.11@sha256:" + "c" * 64 + "\nRUN pip install -c constraints.txt .\nUSER 1\n")
    rules = {v.rule for v in check_dockerfiles.check_dockerfile(dockerfile)}
    assert rules == {"dockerignore", "kfp-inside", "locked-deps"}


def _component_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / "components").glob("*.py") if not p.stem.startswith("_"))


def test_every_component_runs_on_the_livo_image():
    from kfp.dsl.base_component import BaseComponent

    from components._image import LIVO_IMAGE
    from livo.images import PUBLISHED_IMAGE, is_digest_pinned

    assert LIVO_IMAGE == PUBLISHED_IMAGE and is_digest_pinned(LIVO_IMAGE)
    found = {}
    for name in _component_modules():
        module = importlib.import_module(f"components.{name}")
        for attr in vars(module).values():
            if isinstance(attr, BaseComponent) and attr.component_spec.implementation.container is not None:
                found[attr.name] = attr.component_spec.implementation.container.image
    assert found, "no component found under components/"
    assert {name: image for name, image in found.items() if image != LIVO_IMAGE} == {}
    assert {"validate-inputs", "principles-changed", "record-outcome"} <= set(found)


def test_published_image_names_what_make_images_push_tags():
    from livo.images import IMAGE_REPOSITORY, PUBLISHED_IMAGE

    # By path: a plain `import build` could find PyPA's `build` package instead.
    spec = importlib.util.spec_from_file_location("livo_images_build", IMAGES / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)

    makefile = (REPO / "Makefile").read_text()
    assert f"IMAGE_REPO     ?= {IMAGE_REPOSITORY}\n" in makefile
    assert PUBLISHED_IMAGE.startswith(f"{IMAGE_REPOSITORY}:{build.project_version()}-cuda@sha256:")
