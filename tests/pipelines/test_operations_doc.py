"""docs/operations.md cannot drift from the code: every `livo` command in it parses against the real CLI, every
pipeline parameter it names exists (and every parameter is documented), and the offline commands it shows run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
# Need a cluster (or a served model: `curl` against an InferenceService); their offline part is `kubectl kustomize`.
CLUSTER_ONLY = ("kubectl apply ", "kubectl create ", "kubectl -n livo create ", "kubectl wait ", "kubectl get ",
                "curl ")


def doc_commands() -> list[str]:
    """Commands of the ```bash blocks, continuation lines joined, trailing comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", command).strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def test_doc_has_commands_for_every_operation():
    commands = doc_commands()
    for prefix in ("python images/check_dockerfiles.py", "make images-push", "livo compile --image",
                   "kubectl kustomize manifests/overlays/",
                   "livo submit", "livo run", "livo schedule", "livo lineage show", "livo lineage verify"):
        assert any(c.startswith(prefix) for c in commands), prefix
    known = ("livo ", "kubectl kustomize ", "python images/", "make ") + CLUSTER_ONLY
    assert [c for c in commands if not c.startswith(known)] == []


@pytest.mark.parametrize("command", [c for c in doc_commands() if c.startswith("livo ")])
def test_livo_commands_parse_against_the_cli(command):
    from livo.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])  # SystemExit (status 2) on an unknown flag
    assert callable(args.func)


def test_parameters_named_in_the_doc_exist_and_all_are_documented():
    spec = next(yaml.safe_load_all((REPO / "pipelines" / "livo_full.yaml").read_text()))
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    text = DOC.read_text()
    named = set(re.findall(r"-p '?([a-z_]+)=", text))
    assert named and named <= params, named - params
    undocumented = {p for p in params if f"`{p}`" not in text}
    assert undocumented == set()


@pytest.mark.parametrize("command", [c for c in doc_commands()
                                     if c.startswith(("kubectl kustomize ", "python images/"))])
def test_offline_commands_run(command):
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif not Path("/usr/bin/kubectl").exists():
        pytest.skip("kubectl is not installed")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [c for c in doc_commands() if c.startswith("make ")])
def test_make_targets_in_the_doc_exist(command):
    """`make -n` resolves the target and its variables without running it (building needs Docker, tested with a
    fake one in tests/images/test_build.py)."""
    result = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" not in result.stdout
