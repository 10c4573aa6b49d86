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
- pinned-deps:      every `pip install` of the project (`.[...]`) is constrained by `-c constraints.txt`;
- kfp-inside:       the project is installed with the `pipeline` (or `all`) extra, so KFP components can run with
                    `install_kfp_package=False`;
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

    installs = [re.findall(r"\.\[([^\]]*)\]", ins.args) for ins in instructions if ins.keyword == "RUN"]
    extras = {extra.strip() for found in installs for group in found for extra in group.split(",")}
    if not extras & {"pipeline", "all"}:
        flag(1, "kfp-inside", "the project is not installed with the `pipeline` or `all` extra (kfp missing)")

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
