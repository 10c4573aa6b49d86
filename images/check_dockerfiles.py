#!/usr/bin/env python3
"""Policy check for livo's Dockerfiles; runs offline (no Docker engine needed).

    python images/check_dockerfiles.py                  # checks images/Dockerfile.*
    python images/check_dockerfiles.py path/Dockerfile  # checks the given files

Rules (each violation is printed as `FILE:LINE: rule: detail`; exit status 1 when any is found):
- pinned-base:      every FROM names an image pinned by `@sha256:<64 hex>` (directly, through an ARG default, or by
                    naming an earlier build stage);
- no-latest:        no image reference uses the `:latest` tag;
- non-root-user:    the final stage ends with `USER <numeric uid>` other than 0 (Kubernetes `runAsNonRoot` can only
                    verify numeric users);
- no-secrets:       no ENV/ARG whose name looks like a credential carries a value, no literal cloud keys, and no
                    credential files (.env, keys, .netrc, .aws, .ssh) are copied in;
- no-remote-add:    ADD never fetches a URL (unverified download; use a pinned package instead);
- python-311:       every base image is python:3.11 (the Python the tests run on);
- pinned-deps:      every `pip install` of the project (`.[...]`) is constrained by `-c constraints.txt`;
- locked-deps:      dependencies are installed with `pip install --require-hashes --no-deps -r <file>.lock` before the
                    first `COPY livo` (a code change then reuses the dependency layers), and every other `pip install`
                    uses `--no-deps` (nothing is resolved outside the hash-pinned lock);
- kfp-inside:       kfp gets into the image (the project's `pipeline`/`all` extra, or a `kfp==` pin in the copied lock
                    file), so KFP components can run with `install_kfp_package=False`;
- apt-hygiene:      `apt-get install` uses `--no-install-recommends` and the same RUN removes /var/lib/apt/lists;
- dockerignore:     a `<Dockerfile>.dockerignore` exists beside it and excludes everything by default (`**`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
SECRET_NAME_RE = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_?KEY|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.I)
LITERAL_KEY_RES = (
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),  # GitHub token
)
CREDENTIAL_FILE_RE = re.compile(r"(^|/)(\.env|[^/\s]*\.env|\.netrc|\.aws|\.ssh|id_rsa[^/\s]*|[^/\s]*\.pem|[^/\s]*\.key)$")
VARIABLE_RE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
PYTHON_311_RE = re.compile(r"(^|/)python:3\.11(?![0-9])")
LOCK_INSTALL_RE = re.compile(r"(-r|--requirement)[ =](\S+\.lock)\b")


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where the instruction starts
    keyword: str  # upper-case: FROM, RUN, ...
    args: str  # arguments with line continuations joined


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining `\\` continuations and dropping comment lines."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            joined = " ".join(part for part in pending if part)
            keyword, _, args = joined.partition(" ")
            instructions.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    if pending:
        joined = " ".join(part for part in pending if part)
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    return instructions


def _split_assignments(args: str) -> list[tuple[str, str]]:
    """`A=1 B="x y"` or the legacy `A value` form -> [(name, value)]."""
    if "=" not in args.split(" ", 1)[0]:
        name, _, value = args.partition(" ")
        return [(name, value.strip())]
    pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\'[^\']*\'|\S*)', args)
    return [(name, value.strip("\"'")) for name, value in pairs]


def _image_of_from(args: str) -> tuple[str, str | None]:
    """`[--platform=..] IMAGE [AS name]` -> (IMAGE, stage name or None)."""
    words = [w for w in args.split() if not w.startswith("--")]
    image = words[0] if words else ""
    stage = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return image, stage


def check_dockerfile(path: Path) -> list[Violation]:
    text = path.read_text(encoding="utf-8")
    instructions = parse_dockerfile(text)
    violations: list[Violation] = []

    def flag(line: int, rule: str, detail: str) -> None:
        violations.append(Violation(path, line, rule, detail))

    arg_defaults: dict[str, str] = {}
    stages: set[str] = set()
    last_from_index = -1
    for index, ins in enumerate(instructions):
        if ins.keyword == "ARG" and last_from_index < 0:
            for name, value in _split_assignments(ins.args):
                arg_defaults[name] = value
        if ins.keyword == "FROM":
            last_from_index = index
            image, stage = _image_of_from(ins.args)
            variable = VARIABLE_RE.match(image)
            resolved = arg_defaults.get(variable.group(1), "") if variable else image
            if image in stages:
                pass  # an earlier build stage: pinned wherever it was defined
            elif not DIGEST_RE.search(resolved):
                shown = f"{image} (= {resolved!r})" if variable else image
                flag(ins.line, "pinned-base", f"FROM {shown} is not pinned by @sha256 digest")
            elif not PYTHON_311_RE.search(resolved):
                flag(ins.line, "python-311", f"FROM {resolved or image} is not a python:3.11 image (the tests' Python)")
            if stage:
                stages.add(stage)

    for ins in instructions:
        if re.search(r"[\w./-]+:latest\b", ins.args):
            flag(ins.line, "no-latest", f"{ins.keyword} uses a :latest image tag")
        if ins.keyword in ("ENV", "ARG"):
            for name, value in _split_assignments(ins.args):
                if SECRET_NAME_RE.search(name) and value:
                    flag(ins.line, "no-secrets", f"{ins.keyword} {name} holds a value; pass credentials at run time")
        for pattern in LITERAL_KEY_RES:
            if pattern.search(ins.args):
                flag(ins.line, "no-secrets", f"{ins.keyword} contains what looks like a literal credential")
        if ins.keyword in ("COPY", "ADD"):
            sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
            for source in sources:
                if CREDENTIAL_FILE_RE.search(source.rstrip("/")):
                    flag(ins.line, "no-secrets", f"{ins.keyword} copies credential file {source!r} into the image")
            if ins.keyword == "ADD" and any(re.match(r"^(https?|git)://", s) or s.startswith("git@") for s in sources):
                flag(ins.line, "no-remote-add", "ADD downloads a URL; install a pinned package or COPY a file")
        if ins.keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", ins.args):
                if re.search(r"pip3? install", command) and re.search(r"\.\[[^\]]*\]", command):
                    if not re.search(r"(-c|--constraint)[ =]\S*constraints\.txt", command):
                        flag(ins.line, "pinned-deps", "pip install of the project without -c constraints.txt")
            if "apt-get install" in ins.args:
                if "--no-install-recommends" not in ins.args:
                    flag(ins.line, "apt-hygiene", "apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists" not in ins.args:
                    flag(ins.line, "apt-hygiene", "apt lists not removed in the same RUN")

    lock_files = _check_locked_deps(path, instructions, flag)

    installs = [re.findall(r"\.\[([^\]]*)\]", ins.args) for ins in instructions if ins.keyword == "RUN"]
    extras = {extra.strip() for found in installs for group in found for extra in group.split(",")}
    locked_kfp = any(re.search(r"^kfp==", lock.read_text(encoding="utf-8"), re.M) for lock in lock_files)
    if not extras & {"pipeline", "all"} and not locked_kfp:
        flag(1, "kfp-inside", "neither the `pipeline`/`all` extra nor a lock file pinning kfp== is installed")

    final_users = [ins for ins in instructions[last_from_index + 1 :] if ins.keyword == "USER"]
    if not final_users:
        flag(instructions[last_from_index].line if instructions else 1, "non-root-user", "final stage sets no USER")
    else:
        user = final_users[-1].args.split(":")[0].strip()
        if not user.isdigit():
            flag(final_users[-1].line, "non-root-user", f"USER {user!r} is not numeric (runAsNonRoot needs a uid)")
        elif int(user) == 0:
            flag(final_users[-1].line, "non-root-user", "USER is root (uid 0)")

    ignore_file = path.with_name(path.name + ".dockerignore")
    if not ignore_file.is_file():
        flag(1, "dockerignore", f"{ignore_file.name} is missing beside the Dockerfile")
    else:
        rules = [r.strip() for r in ignore_file.read_text(encoding="utf-8").splitlines()]
        if "**" not in rules:
            flag(1, "dockerignore", f"{ignore_file.name} does not exclude everything by default (`**`)")
    return violations


def _pip_installs(instructions: list[Instruction]) -> list[tuple[Instruction, str]]:
    return [(ins, command.strip()) for ins in instructions if ins.keyword == "RUN"
            for command in re.split(r"&&|;|\|\|", ins.args) if re.search(r"pip3? install", command)]


def _check_locked_deps(path: Path, instructions: list[Instruction], flag) -> list[Path]:
    """The locked-deps rule; returns the lock files (found in the build context) that the Dockerfile copies in."""
    first_livo_copy = next((i for i, ins in enumerate(instructions) if ins.keyword == "COPY"
                            and any(s.strip("./") == "livo" for s in ins.args.split()[:-1])), len(instructions))
    locked = [(ins, cmd) for ins, cmd in _pip_installs(instructions) if LOCK_INSTALL_RE.search(cmd)]
    good = [ins for ins, cmd in locked if "--require-hashes" in cmd and "--no-deps" in cmd]
    if not good:
        flag(1, "locked-deps", "no `pip install --require-hashes --no-deps -r <file>.lock` installs the dependencies")
    elif instructions.index(good[0]) > first_livo_copy:
        flag(good[0].line, "locked-deps", "dependencies are installed after `COPY livo` (a code change reinstalls them)")
    for ins, cmd in _pip_installs(instructions):
        if (ins, cmd) not in locked and "--no-deps" not in cmd:
            flag(ins.line, "locked-deps", f"`{cmd}` resolves dependencies outside the lock; add --no-deps")
    # The build context is the repository root; Dockerfiles live in images/ (or at the root).
    roots = [path.parent.parent, path.parent]
    lock_files = []
    for ins in instructions:
        if ins.keyword == "COPY" and "--from" not in ins.args:
            for source in [s for s in ins.args.split() if not s.startswith("--")][:-1]:
                if source.endswith(".lock"):
                    found = next((root / source for root in roots if (root / source).is_file()), None)
                    if found is None:
                        flag(ins.line, "locked-deps", f"{source} not found in the build context; run `make locks`")
                    else:
                        lock_files.append(found)
    return lock_files


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args] or sorted(
        p for p in Path(__file__).resolve().parent.glob("Dockerfile.*") if not p.name.endswith(".dockerignore")
    )
    if not paths:
        print("check_dockerfiles: no Dockerfile found", file=sys.stderr)
        return 2
    violations = [v for path in paths for v in check_dockerfile(path)]
    for violation in violations:
        print(violation)
    print(f"checked {len(paths)} Dockerfile(s): {len(violations)} violation(s)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
