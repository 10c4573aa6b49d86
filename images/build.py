#!/usr/bin/env python3
"""Build (`make images`) or build and push (`make images-push`) livo's two container images with docker buildx.

    python3 images/build.py load --repo ghcr.io/livo-mlops/livo --git-commit "$(git rev-parse HEAD)"
    python3 images/build.py push --repo ghcr.io/livo-mlops/livo --git-commit "$(git rev-parse HEAD)"

Tags are `<repo>:<version>-<variant>`, the version read from pyproject.toml. `push` prints one `<repo>@sha256:<digest>`
line per pushed image on stdout (read from buildx's --metadata-file): the reference to compile the pipeline with
(`livo compile --image <ref>`). Standard library only, so a release machine needs just Python 3.11+ and Docker.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("cuda", "cpu")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class BuildError(Exception):
    """A one-line message for the user: what is wrong and how to fix it."""


def project_version(pyproject: Path = REPO_ROOT / "pyproject.toml") -> str:
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]


def buildx_command(variant: str, *, repo: str, version: str, git_commit: str, platform: str, push: bool,
                   metadata_file: Path | None = None) -> list[str]:
    command = ["docker", "buildx", "build", "--file", f"images/Dockerfile.{variant}",
               "--tag", f"{repo}:{version}-{variant}", "--build-arg", f"GIT_COMMIT={git_commit}",
               "--platform", platform]
    if push:
        command += ["--push", "--metadata-file", str(metadata_file)]
    else:
        command += ["--load"]
    return command + ["."]


def pushed_digest(metadata_file: Path) -> str:
    try:
        digest = json.loads(metadata_file.read_text(encoding="utf-8")).get("containerimage.digest", "")
    except (OSError, ValueError) as error:
        raise BuildError(f"cannot read buildx metadata {metadata_file} ({error}); is docker buildx >= 0.8?") from None
    if not DIGEST_RE.match(digest):
        raise BuildError(f"buildx metadata {metadata_file} has no containerimage.digest; was the image pushed?")
    return digest


def run(mode: str, *, repo: str, version: str, git_commit: str, platform: str, variants: tuple[str, ...]) -> list[str]:
    if shutil.which("docker") is None:
        raise BuildError("`docker` not found on PATH; install Docker with the buildx plugin to build the images")
    if not git_commit:
        raise BuildError("no git commit to record in the image; run inside the git checkout or pass GIT_COMMIT=<sha>")
    if not re.match(r"^[a-z0-9][a-z0-9._/:-]*$", repo) or repo.rsplit("/", 1)[-1].count(":"):
        raise BuildError(f"IMAGE_REPO={repo!r} is not an image repository (lower case, no tag), e.g. ghcr.io/org/livo")
    references = []
    with tempfile.TemporaryDirectory(prefix="livo-images-") as scratch:
        for variant in variants:
            metadata_file = Path(scratch) / f"{variant}.json"
            command = buildx_command(variant, repo=repo, version=version, git_commit=git_commit, platform=platform,
                                     push=mode == "push", metadata_file=metadata_file)
            print("+ " + " ".join(command), file=sys.stderr, flush=True)
            code = subprocess.run(command, cwd=REPO_ROOT).returncode
            if code != 0:
                raise BuildError(f"docker buildx build of images/Dockerfile.{variant} failed (exit {code}); see above")
            if mode == "push":
                reference = f"{repo}@{pushed_digest(metadata_file)}"
                references.append(reference)
                print(reference, flush=True)
    return references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("load", "push"), help="load into the local engine, or push to the registry")
    parser.add_argument("--repo", default="ghcr.io/livo-mlops/livo", help="image repository, without tag")
    parser.add_argument("--version", default="", help="tag prefix (default: the version in pyproject.toml)")
    parser.add_argument("--git-commit", default="", help="commit recorded in the image (LIVO_GIT_COMMIT, label)")
    parser.add_argument("--platform", default="linux/amd64")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="build only this variant (repeatable)")
    args = parser.parse_args(argv)
    try:
        run(args.mode, repo=args.repo, version=args.version or project_version(), git_commit=args.git_commit,
            platform=args.platform, variants=tuple(args.variant or VARIANTS))
    except BuildError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
