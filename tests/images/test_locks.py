"""images/requirements-*.lock: hash-pinned, in step with constraints.txt and pyproject's `all` extra, without
torchvision or livo itself (`make locks` regenerates them; images/lock.sh says how)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = {variant: REPO / "images" / f"requirements-{variant}.lock" for variant in ("cuda", "cpu")}
HASH_RE = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def _entries(lock: Path) -> dict[str, tuple[str, str]]:
    """{canonical name: (version, the whole requirement with its continuation lines)}; every line checked."""
    entries: dict[str, tuple[str, str]] = {}
    logical = re.sub(r"\\\n", " ", lock.read_text())
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)\s", line + " ")
        assert match, f"{lock.name}: not pinned with ==: {line[:80]}"
        assert HASH_RE.search(line), f"{lock.name}: no --hash=sha256: for {match.group(1)}"
        assert not re.search(r"--hash=(?!sha256:[0-9a-f]{64}\b)", line), f"{lock.name}: bad hash for {match.group(1)}"
        entries[canonicalize_name(match.group(1))] = (match.group(2), line)
    return entries


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _all_extra_requirements() -> list[Requirement]:
    """The core dependencies plus the `all` extra, self-references (livo[...]) expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found, pending = [Requirement(r) for r in project["dependencies"]], ["all"]
    while pending:
        for text in extras[pending.pop()]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "livo":
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request):
    return request.param, _entries(LOCKS[request.param])


def test_every_line_is_pinned_and_hashed(lock):
    variant, entries = lock
    assert len(entries) > 50, f"{variant} lock looks truncated"


def test_torch_pin_matches_constraints(lock):
    variant, entries = lock
    torch = _constraints()["torch"]
    assert entries["torch"][0] == (f"{torch}+cpu" if variant == "cpu" else torch)


def test_no_torchvision_and_not_livo_itself(lock):
    _, entries = lock
    assert "torchvision" not in entries and "livo" not in entries


def test_not_stale_against_constraints(lock):
    _, entries = lock
    stale = {name: (entries[name][0], pin) for name, pin in _constraints().items()
             if name in entries and Version(entries[name][0]).public != Version(pin).public}
    assert stale == {}, f"run `make locks`: lock vs constraints.txt differ for {stale}"


def test_covers_the_all_extra_with_allowed_versions(lock):
    _, entries = lock
    missing = [str(r) for r in _all_extra_requirements() if canonicalize_name(r.name) not in entries]
    assert missing == [], "run `make locks`: missing from the lock"
    outside = {r.name: entries[canonicalize_name(r.name)][0] for r in _all_extra_requirements()
               if not r.specifier.contains(Version(entries[canonicalize_name(r.name)][0]), prereleases=True)}
    assert outside == {}, "run `make locks`: locked versions outside pyproject.toml's ranges"


def test_cuda_lock_brings_the_cuda_runtime_and_cpu_lock_does_not():
    cuda, cpu = _entries(LOCKS["cuda"]), _entries(LOCKS["cpu"])
    assert any(name.startswith("nvidia-cuda-runtime") for name in cuda)
    assert not [name for name in cpu if name.startswith("nvidia-") or name == "triton"]
    assert set(cpu) <= set(cuda)
    assert {name: v for name, (v, _) in cpu.items() if name != "torch" and cuda[name][0] != v} == {}


def test_cpu_torch_hash_is_the_published_wheels():
    torch = _constraints()["torch"]
    wheel = Path(f"/opt/wheels/torch-{torch}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    if not wheel.is_file():
        pytest.skip(f"{wheel} not on this machine (it is on the project's build machines)")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"--hash=sha256:{digest}" in _entries(LOCKS["cpu"])["torch"][1]
