""".github/workflows: actionlint finds nothing, and release.yml builds and pushes both images on a version tag and
compiles the pipeline against the digest it pushed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
SHA_PINNED_RE = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def _actionlint() -> str:
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip("actionlint not installed: it comes with the dev extra (pip install -e '.[dev]')")
    return found


def test_actionlint_finds_nothing():
    assert WORKFLOWS, "no workflow under .github/workflows"
    result = subprocess.run([_actionlint(), "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_would_catch_a_finding(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - run: echo ${{ steps.nope.outputs.digest }}\n")
    result = subprocess.run([_actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "nope" in result.stdout


def _release() -> dict:
    return yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())


def _steps() -> list[dict]:
    (job,) = _release()["jobs"].values()
    return job["steps"]


def test_release_runs_on_version_tags_with_the_permissions_it_needs():
    workflow = _release()
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*"]}}
    assert workflow["permissions"] == {"contents": "write", "packages": "write"}


def test_every_action_is_pinned_to_a_commit():
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert SHA_PINNED_RE.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned to a SHA"


def test_release_pushes_both_images_and_compiles_with_the_pushed_digest():
    steps = _steps()
    builds = {step["with"]["file"]: step for step in steps if step.get("uses", "").startswith("docker/build-push-action@")}
    assert set(builds) == {"images/Dockerfile.cuda", "images/Dockerfile.cpu"}
    for file, step in builds.items():
        assert step["with"]["push"] is True and step["with"]["context"] == "."
        assert step["with"]["build-args"] == "GIT_COMMIT=${{ github.sha }}"
        assert step["with"]["tags"].endswith(f"-{file.rsplit('.', 1)[1]}")
    assert any(step.get("uses", "").startswith("docker/login-action@") and step["with"]["registry"] == "ghcr.io"
               for step in steps)
    cuda_id = builds["images/Dockerfile.cuda"]["id"]
    (compile_step,) = [step for step in steps if "livo compile" in step.get("run", "")]
    digest_vars = [name for name, value in compile_step["env"].items()
                   if value == f"${{{{ steps.{cuda_id}.outputs.digest }}}}"]
    assert len(digest_vars) == 1
    assert re.search(rf'livo compile --image "\$REPO@\${digest_vars[0]}" -o dist/livo_full\.yaml', compile_step["run"])
    order = [steps.index(builds["images/Dockerfile.cuda"]), steps.index(compile_step)]
    (upload,) = [step for step in steps if "gh release upload" in step.get("run", "")]
    assert order[0] < order[1] < steps.index(upload) and "dist/livo_full.yaml" in upload["run"]


def test_release_installs_livo_on_python_311_with_cpu_torch():
    steps = _steps()
    (python,) = [step for step in steps if step.get("uses", "").startswith("actions/setup-python@")]
    assert python["with"]["python-version"] == "3.11"
    install = next(step["run"] for step in steps if "pip install" in step.get("run", ""))
    assert "pip install -c constraints.txt torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    assert 'pip install -c constraints.txt -e ".[pipeline]"' in install
