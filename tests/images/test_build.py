"""`make images` / `make images-push` (images/build.py) drive docker buildx as documented: run for real through make,
against a fake `docker` on PATH that records its argv and writes buildx's --metadata-file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed (apt-get install make)")

FAKE_DOCKER = """#!/usr/bin/env python3
import hashlib, json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
file = args[args.index("--file") + 1]
if file.endswith(os.environ.get("FAKE_DOCKER_FAIL", "-none-")):
    sys.exit(3)
if "--metadata-file" in args:
    tag = args[args.index("--tag") + 1]
    metadata = {} if os.environ.get("FAKE_DOCKER_NO_DIGEST") else {
        "containerimage.digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}
    with open(args[args.index("--metadata-file") + 1], "w") as out:
        json.dump(metadata, out)
"""


def _bin_dir(tmp_path: Path, *, docker: bool) -> Path:
    """A PATH holding only what the Makefile needs (python3, git) and, if asked, the fake docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # The real interpreter (shutil.which may find a pyenv shim, a script that needs more of PATH).
    tools = {"python3": os.path.realpath(sys.executable), "git": shutil.which("git")}
    for tool, found in tools.items():
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    if docker:
        (bin_dir / "docker").write_text(FAKE_DOCKER)
        (bin_dir / "docker").chmod(0o755)
    return bin_dir


def _make(tmp_path: Path, *args: str, docker: bool = True, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": str(_bin_dir(tmp_path, docker=docker)), "HOME": str(tmp_path),
                   "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"), **env}
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          env=environment, timeout=120)


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "docker.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_images_push_builds_both_variants_and_prints_the_pushed_digests(tmp_path):
    result = _make(tmp_path, "images-push", "IMAGE_REPO=registry.example.org/team/livo", "GIT_COMMIT=abc123")
    assert result.returncode == 0, result.stderr
    version = _version()
    calls = _calls(tmp_path)
    assert len(calls) == 2
    for call, variant in zip(calls, ("cuda", "cpu"), strict=True):
        metadata = call[call.index("--metadata-file") + 1]
        assert call == ["buildx", "build", "--file", f"images/Dockerfile.{variant}",
                        "--tag", f"registry.example.org/team/livo:{version}-{variant}",
                        "--build-arg", "GIT_COMMIT=abc123", "--platform", "linux/amd64",
                        "--push", "--metadata-file", metadata, "."]
    expected = ["registry.example.org/team/livo@sha256:"
                + hashlib.sha256(f"registry.example.org/team/livo:{version}-{variant}".encode()).hexdigest()
                for variant in ("cuda", "cpu")]
    assert result.stdout.splitlines() == expected
    from livo.images import is_digest_pinned, is_published

    assert all(is_digest_pinned(ref) and is_published(ref) for ref in expected)


def test_images_loads_locally_with_the_checkouts_commit(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    result = _make(tmp_path, "images", "IMAGE_VERSION=9.9.9")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # nothing pushed, nothing to report
    assert _calls(tmp_path) == [
        ["buildx", "build", "--file", f"images/Dockerfile.{variant}", "--tag", f"ghcr.io/livo-mlops/livo:9.9.9-{variant}",
         "--build-arg", f"GIT_COMMIT={head}", "--platform", "linux/amd64", "--load", "."]
        for variant in ("cuda", "cpu")
    ]


def test_make_images_is_phony():
    result = subprocess.run([MAKE, "-n", "-C", str(REPO), "images"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "Nothing to be done" not in result.stdout + result.stderr
    assert "images/build.py load" in result.stdout  # -n prints even @-silenced recipe lines


@pytest.mark.parametrize(
    ("target", "make_args", "env", "message"),
    [
        ("images", (), {"NO_DOCKER": "1"},
         "images: `docker` not found on PATH; install Docker with the buildx plugin to build the images"),
        ("images-push", (), {"FAKE_DOCKER_FAIL": "Dockerfile.cpu"},
         "images: docker buildx build of images/Dockerfile.cpu failed (exit 3); see above"),
        ("images-push", (), {"FAKE_DOCKER_NO_DIGEST": "1"}, "has no containerimage.digest; was the image pushed?"),
        ("images", ("IMAGE_REPO=ghcr.io/org/livo:1.0",), {}, "is not an image repository (lower case, no tag)"),
    ],
    ids=["no-docker", "build-fails", "no-digest", "repo-with-tag"],
)
def test_failures_say_what_is_wrong_in_one_line(tmp_path, target, make_args, env, message):
    result = _make(tmp_path, target, "GIT_COMMIT=abc123", *make_args, docker="NO_DOCKER" not in env, **env)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("images: ")]
    assert len(ours) == 1 and message in ours[0], result.stderr
    if "FAKE_DOCKER_FAIL" in env:
        assert len(result.stdout.splitlines()) == 1  # the CUDA image was pushed before the CPU build failed
