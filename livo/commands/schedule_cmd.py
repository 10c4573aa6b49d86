"""`livo schedule`: retrain on a cron schedule when the principle set changes (a KFP recurring run).

    livo schedule --host https://kfp.example.org --cron "0 0 3 * * *" --image REG/livo@sha256:<digest> \
        --principles s3://mlpipeline/livo/principles/prod.yaml --model-name livo-sd15 -p data_shard_count=16

The recurring run always runs the latest version of the `livo-full` pipeline. The package is compiled with the
image (`--image`, else $LIVO_IMAGE, else the last published one; `--package FILE` is retargeted to it) and uploaded
as the pipeline, or as its new latest version when the server's latest differs. Each run checks the principle-set hash against the latest registered model first and
finishes as `skipped` when nothing changed. Authentication: KFP_TOKEN (bearer token).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from livo.commands.pipeline_cmd import add_image_argument
from livo.errors import ConfigError


def cmd_schedule(args: argparse.Namespace) -> int:
    from livo.images import require_published, resolve_image
    from livo.orchestration import validate_kfp_cron

    cron = validate_kfp_cron(args.cron)
    image = resolve_image(args.image)
    if not args.allow_unpublished_image:
        require_published(image, action="schedule runs")
    with tempfile.TemporaryDirectory(prefix="livo-schedule-") as tmp:
        package = Path(tmp) / "livo_full.yaml"
        if args.package:
            from livo.images import retarget_package

            if not Path(args.package).is_file():
                raise ConfigError(f"{args.package}: no such pipeline package; run `livo compile` or drop --package")
            package.write_text(retarget_package(Path(args.package).read_text(encoding="utf-8"), image),
                               encoding="utf-8")
        else:
            from livo.commands.pipeline_cmd import compile_pipeline

            compile_pipeline(package, image)
        return _schedule(args, cron, image, package)


def _schedule(args: argparse.Namespace, cron: str, image: str, package: Path) -> int:
    from livo.commands.pipeline_cmd import effective_arguments, parse_param_overrides
    from livo.registry.schedule import kfp_api_client, schedule_retraining

    overrides = parse_param_overrides(args.param)
    overrides["run_principles_uri"] = args.principles
    overrides["run_schedule_cron"] = cron
    if args.model_name:
        overrides["registry_model_name"] = args.model_name
    arguments = effective_arguments(package, overrides)  # unknown names and bad values fail here, not at 3 a.m.
    parameters = {k: v for k, v in arguments.items() if k in overrides}
    name = args.name or f"livo-retrain-{arguments.get('registry_model_name', 'model')}"
    if args.dry_run:
        print(f"would create recurring run {name!r} ({cron}) of the latest {args.pipeline_name!r} in image {image} "
              f"with {parameters}")
        return 0
    host = args.host or os.environ.get("KFP_HOST")
    if not host:
        raise ConfigError("no KFP endpoint: pass --host https://<kfp-host> or set KFP_HOST")
    result = schedule_retraining(
        kfp_api_client(host, os.environ.get("KFP_TOKEN") or None), cron=cron, parameters=parameters,
        display_name=name, pipeline_name=args.pipeline_name, experiment=args.experiment, namespace=args.namespace,
        package=package, max_concurrency=args.max_concurrency, catchup=args.catchup, replace=args.replace,
        service_account=args.service_account)
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print(f"scheduled {result.display_name!r} ({result.cron}): recurring run {result.recurring_run_id} of the "
              f"latest {args.pipeline_name!r} in experiment {args.experiment!r}"
              + f" in image {image}"
              + (" (pipeline uploaded)" if result.pipeline_uploaded else "")
              + (f" (version {result.version_uploaded} uploaded)" if result.version_uploaded else "")
              + (f" (replaced {result.replaced})" if result.replaced else ""))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule", help="create a KFP recurring run that retrains when the principles change",
        description="Create a KFP recurring run of the latest livo-full pipeline version (kfp_server_api). Each run "
                    "skips all work when the principle set is unchanged since the latest registered model. "
                    "Authentication: KFP_TOKEN (bearer token).")
    parser.add_argument("--cron", required=True,
                        help="KFP cron: 6 fields, seconds first, e.g. '0 0 3 * * *' (03:00 daily), or '@every 24h'")
    parser.add_argument("--principles", required=True, help="principles file the runs read (s3:// URI or image path)")
    parser.add_argument("--model-name", help="registry model name (pipeline parameter registry_model_name)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="another pipeline parameter (repeatable), e.g. -p data_shard_count=16")
    parser.add_argument("--host", help="KFP API endpoint (default: $KFP_HOST)")
    parser.add_argument("--namespace", help="KFP namespace (multi-user deployments)")
    parser.add_argument("--experiment", default="livo", help="experiment of the recurring run (default: livo)")
    parser.add_argument("--name", help="recurring run name (default: livo-retrain-<model name>)")
    parser.add_argument("--pipeline-name", default="livo-full", help="pipeline on the server (default: livo-full)")
    parser.add_argument("--package", help="a compiled package to upload instead of compiling one (its image is "
                                          "replaced by the chosen one)")
    add_image_argument(parser)
    parser.add_argument("--allow-unpublished-image", action="store_true",
                        help="schedule even if the image is the unpublished marker (the runs cannot pull it)")
    parser.add_argument("--max-concurrency", type=int, default=1, help="runs allowed at once (default 1)")
    parser.add_argument("--catchup", action="store_true", help="run missed intervals after a pause (default: no)")
    parser.add_argument("--replace", action="store_true", help="replace a recurring run of the same name")
    parser.add_argument("--service-account", help="Kubernetes service account of the runs")
    parser.add_argument("--dry-run", action="store_true", help="validate and print, create nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_schedule)
