"""`livo compile` and `livo submit`: the Kubeflow pipeline `pipelines/livo_full.py` for a cluster.

    livo compile                     # writes pipelines/livo_full.yaml of the checkout you are in
    livo compile --check             # exit 1 when the committed package is stale
    livo compile --image REG/livo@sha256:<digest> -o dist/livo_full.yaml
    livo submit --host URL --image REG/livo@sha256:<digest> -p run_preset=sd15 -p data_shard_count=16

Both need a livo source checkout (pipelines/ and components/ are not part of the installed package): the one the
current directory is in, else $LIVO_SOURCE_DIR, else the one livo is installed from. The image of every task is
`--image`, else $LIVO_IMAGE, else the last published one (livo.images). The pipeline module and kfp are imported
inside the handlers, so `livo --help` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from livo.errors import ConfigError, LivoError

PIPELINE_FILE = Path("pipelines") / "livo_full.py"
DEFAULT_SERVICE_ACCOUNT = ""  # empty: KFP's default (pipeline-runner, or the profile's default-editor)


def _is_checkout(path: Path) -> bool:
    return (path / PIPELINE_FILE).is_file() and (path / "components").is_dir()


def checkout_dir() -> Path:
    """The livo source checkout that holds pipelines/ and components/: the one the current directory is in (so a
    second checkout never writes into the editable install's), else $LIVO_SOURCE_DIR, else the installed one."""
    from livo.paths import REPO_DIR

    here = Path.cwd().resolve()
    candidates = [here, *here.parents]
    if os.environ.get("LIVO_SOURCE_DIR"):
        candidates.append(Path(os.environ["LIVO_SOURCE_DIR"]))
    candidates.append(REPO_DIR)
    for candidate in candidates:
        if _is_checkout(candidate):
            return candidate.resolve()
    raise ConfigError(f"{PIPELINE_FILE} not found: run from a livo source checkout or set LIVO_SOURCE_DIR to one")


def load_pipeline_module() -> ModuleType:
    """Import pipelines/livo_full.py (and, through it, components/) from the checkout."""
    import importlib

    root = checkout_dir()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("pipelines.livo_full")


@contextlib.contextmanager
def pipeline_image(module: ModuleType, image: str) -> Iterator[Any]:
    """The `livo_full` pipeline rebuilt with `image` for every task and the TrainJob (kfp builds a pipeline's graph
    when it is decorated, so the graph is rebuilt from its function while `PIPELINE_IMAGE` is swapped)."""
    from kfp import dsl

    declared = module.livo_full
    saved = module.PIPELINE_IMAGE
    module.PIPELINE_IMAGE = image
    try:
        yield dsl.pipeline(name=declared.name, description=declared.description)(declared.pipeline_func)
    finally:
        module.PIPELINE_IMAGE = saved


def compile_pipeline(output: Path, image: str | None = None) -> Path:
    """Compile the pipeline to `output` with `image` (see livo.images.resolve_image) for every task; written to a
    temp file, checked, then renamed: never half-written."""
    from kfp import compiler

    from livo.images import resolve_image

    image = resolve_image(image)
    module = load_pipeline_module()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=output.parent, prefix=".tmp-", suffix=".yaml", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        with pipeline_image(module, image) as pipeline:
            compiler.Compiler().compile(pipeline, str(tmp_path))
        tmp_path.write_text(canonical_header(tmp_path.read_text(encoding="utf-8")), encoding="utf-8")
        found = package_image(tmp_path)
        if found != {image}:
            raise LivoError(f"the compiled package uses {sorted(found)}, not only {image}; a task in "
                            "pipelines/livo_full.py escaped cluster_task()")
        tmp_path.replace(output)
    finally:
        tmp_path.unlink(missing_ok=True)
    return output


_HEADER_DEFAULT_RE = re.compile(r"^(#\s+\w+: \w+ \[Default: )(.*)(\])$")


def canonical_header(text: str) -> str:
    """Sort the dict keys in the `# Inputs:` comment kfp writes atop the package.

    kfp renders defaults there from protobuf Structs, whose key order varies between processes; without this the
    package of a dict-valued default (train_tolerations) would differ on every compile and the staleness check
    would be meaningless. Only that comment changes; the spec below it is already deterministic.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = _HEADER_DEFAULT_RE.match(line)
        if match:
            try:
                value = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                continue
            lines[index] = f"{match.group(1)}{_sorted_repr(value)}{match.group(3)}"
    return "\n".join(lines)


def _sorted_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def committed_package() -> Path:
    return checkout_dir() / PIPELINE_FILE.with_suffix(".yaml")


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_param_overrides(items: list[str] | None) -> dict[str, Any]:
    """`name=value` strings -> {name: value}; values are YAML scalars/flow collections (`8`, `true`, `{a: b}`)."""
    import yaml

    values: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"parameter {item!r} is not of the form name=value (e.g. -p data_shard_count=16)")
        try:
            values[name.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"parameter {name}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return values


def read_package(package: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, platform spec) of a compiled package (two YAML documents; the second holds kfp-kubernetes
    settings and is empty without them)."""
    import yaml

    docs = list(yaml.safe_load_all(Path(package).read_text(encoding="utf-8")))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def pipeline_defaults(package: Path) -> dict[str, Any]:
    """The root parameters of a compiled package with their defaults."""
    spec, _ = read_package(package)
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: p.get("defaultValue") for name, p in params.items()}


def effective_arguments(package: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults of the package updated with `overrides`, checked the way the pipeline's first step checks them."""
    from livo.orchestration import PipelineParameters

    defaults = pipeline_defaults(package)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    values = {**defaults, **overrides}
    PipelineParameters.parse({k: v for k, v in values.items() if k in PipelineParameters.model_fields})
    return values


def package_image(package: Path) -> set[str]:
    from livo.images import package_images

    spec, _ = read_package(package)
    return package_images(spec)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# ------------------------------------------------------------------------------------------------------ handlers
def cmd_compile(args: argparse.Namespace) -> int:
    target = Path(args.output) if args.output else committed_package()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = compile_pipeline(Path(tmp) / "livo_full.yaml", args.image)
            if not target.is_file() or fresh.read_bytes() != target.read_bytes():
                print(f"{target} is stale: run `livo compile` and commit the result", file=sys.stderr)
                return 1
        print(f"{target} is up to date ({sha256_of(target)})")
        return 0
    compile_pipeline(target, args.image)
    print(f"compiled {target} ({sha256_of(target)}) with image {next(iter(package_image(target)))}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from livo.images import require_published, resolve_image

    overrides = parse_param_overrides(args.param)
    image = resolve_image(args.image)
    if not args.allow_unpublished_image:
        require_published(image, action="submit")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "livo_full.yaml", image)
        overrides.setdefault("run_pipeline_spec_sha256", sha256_of(package))
        arguments = effective_arguments(package, overrides)
        changed = {k: v for k, v in arguments.items() if k in overrides}
        if args.dry_run:
            print(f"would submit {package.name} ({arguments['run_pipeline_spec_sha256']}) in image {image} with "
                  f"{changed}")
            return 0
        run_id = submit_package(package, arguments=changed, host=args.host, namespace=args.namespace,
                                experiment=args.experiment, run_name=args.run_name,
                                service_account=args.service_account)
    print(f"submitted run {run_id}")
    return 0


def submit_package(package: Path, *, arguments: dict[str, Any], host: str | None, namespace: str | None,
                   experiment: str, run_name: str | None, service_account: str | None) -> str:
    """Create a KFP run from a compiled package; returns the run id."""
    import kfp

    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise ConfigError("no KFP endpoint: pass --host https://<kfp-host> or set KFP_HOST")
    try:
        client = kfp.Client(host=host, namespace=namespace or "kubeflow",
                            existing_token=os.environ.get("KFP_TOKEN") or None)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=service_account or None,
        )
    except Exception as exc:  # the KFP client raises ApiException, urllib3 and connection errors alike
        cause = " ".join(str(exc).split())[:300]
        raise LivoError(f"submitting to {host} failed ({type(exc).__name__}: {cause}); check --host, KFP_TOKEN "
                        "and that the KFP API server is reachable") from None
    return result.run_id


def register(subparsers: argparse._SubParsersAction) -> None:
    compile_parser = subparsers.add_parser(
        "compile", help="compile pipelines/livo_full.py to its YAML package",
        description="Compile the Kubeflow pipeline to pipelines/livo_full.yaml of the checkout you are in. Every task "
                    "and the TrainJob run in --image, else $LIVO_IMAGE, else the last published image.")
    compile_parser.add_argument("--output", "-o", help="where to write the package (default: pipelines/livo_full.yaml "
                                                       "of the checkout the current directory is in)")
    add_image_argument(compile_parser)
    compile_parser.add_argument("--check", action="store_true",
                                help="do not write; exit 1 when the package differs from a fresh compile")
    compile_parser.set_defaults(func=cmd_compile)

    submit_parser = subparsers.add_parser(
        "submit", help="compile and submit one run of the pipeline to a KFP cluster",
        description="Compile the pipeline, check the parameters as its first step would, and create a KFP run. "
                    "Authentication: KFP_TOKEN (a bearer token) or the client's in-cluster/kubeconfig credentials.")
    submit_parser.add_argument("--host", help="KFP API endpoint (default: $KFP_HOST)")
    add_image_argument(submit_parser)
    submit_parser.add_argument("--namespace", help="KFP namespace (multi-user deployments: your profile namespace)")
    submit_parser.add_argument("--experiment", default="livo", help="KFP experiment name (default: livo)")
    submit_parser.add_argument("--run-name", help="run display name (default: KFP's)")
    submit_parser.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                               help="service account of the run's pods (default: KFP's)")
    submit_parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                               help="pipeline parameter (repeatable), e.g. -p data_shard_count=16")
    submit_parser.add_argument("--dry-run", action="store_true", help="compile and check, print, submit nothing")
    submit_parser.add_argument("--allow-unpublished-image", action="store_true",
                               help="submit even if the image digest is the unpublished marker (it cannot pull)")
    submit_parser.set_defaults(func=cmd_submit)


def add_image_argument(parser: argparse.ArgumentParser) -> None:
    """`--image`, the same on compile, submit, schedule and run."""
    parser.add_argument("--image", metavar="REF",
                        help="container image of every task and the TrainJob, pinned by digest "
                             "(<registry>/<repo>[:tag]@sha256:<64 hex>, as printed by `make images-push`); "
                             "default: $LIVO_IMAGE, else the last published image")
