"""`livo models mirror|verify|fetch|show|ls`: model weights in the object store, for clusters without a hub.

    livo models mirror stable-diffusion-v1-5/stable-diffusion-v1-5 s3://mlpipeline/models/sd15
    livo models mirror ./clip-vit-large-patch14 s3://mlpipeline/models/clip-vit-l14
    livo models verify s3://mlpipeline/models/sd15     # recompute every sha256; exit 1 naming each bad file
    livo models fetch s3://mlpipeline/models/sd15      # fill the local model cache, print its directory
    livo models ls s3://mlpipeline/models              # every mirror under a prefix

The object store comes from `LIVO_S3_*` (the URI's bucket is used). Pipelines load a mirror wherever a model source
is accepted (`LIVO_SD15_PATH`, `model=s3://...`, `judges.options.<judge>.model=s3://...`).
"""

from __future__ import annotations

import argparse
import json

from livo.errors import LivoError


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def cmd_mirror(args: argparse.Namespace) -> int:
    from livo.models.mirror import mirror_model

    manifest = mirror_model(args.source, args.uri, revision=args.revision, excludes=args.exclude,
                            overwrite=args.overwrite, progress=not args.no_progress)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    revision = f"@{manifest['revision']}" if manifest.get("revision") else ""
    print(f"mirrored {manifest['kind']} model {manifest['source']}{revision} to {args.uri.rstrip('/')}: "
          f"{manifest['file_count']} files, {_size(manifest['total_bytes'])}, content {manifest['content_hash']}")
    for item in manifest["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from livo.models.mirror import MANIFEST_NAME, verify_mirror

    manifest, problems = verify_mirror(args.uri, progress=not args.no_progress)
    uri = args.uri.rstrip("/")
    if args.json:
        print(json.dumps({"uri": uri, "ok": not problems, "files": manifest["file_count"],
                          "content_hash": manifest["content_hash"], "mismatches": problems}, indent=2))
        return 1 if problems else 0
    if problems:
        raise LivoError(f"{uri}: {len(problems)} of {manifest['file_count']} file(s) differ from {MANIFEST_NAME}: "
                        f"{'; '.join(problems)}; mirror the model again with `livo models mirror`")
    print(f"{uri}: OK ({manifest['file_count']} files, {_size(manifest['total_bytes'])}, every sha256 matches "
          f"{MANIFEST_NAME})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from livo.models.mirror import fetch_model

    print(fetch_model(args.uri, kind=args.kind, progress=not args.no_progress))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from livo.models.mirror import read_manifest

    manifest = read_manifest(args.uri)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    rows = [("uri", args.uri.rstrip("/")), ("kind", manifest["kind"]), ("source", manifest.get("source")),
            ("revision", manifest.get("revision") or "-"), ("files", manifest["file_count"]),
            ("size", _size(manifest["total_bytes"])), ("content hash", manifest["content_hash"]),
            ("created", manifest.get("created_at")), ("livo version", manifest.get("livo_version"))]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for rel, entry in sorted(manifest["files"].items()):
        print(f"  {rel}  {_size(entry['size'])}  {entry['sha256']}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from livo.models.mirror import list_mirrors

    mirrors = list_mirrors(args.uri)
    if args.json:
        print(json.dumps([{"uri": uri, **{k: m.get(k) for k in ("kind", "source", "revision", "file_count",
                                                                 "total_bytes", "content_hash", "created_at")}}
                          for uri, m in mirrors], indent=2))
        return 0
    if not mirrors:
        print(f"no mirrors under {args.uri}")
    for uri, manifest in mirrors:
        print(f"{uri}  {manifest.get('kind')}  {manifest.get('source')}  {_size(manifest.get('total_bytes', 0))}  "
              f"{manifest.get('created_at')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="mirror model weights into the object store (air-gapped clusters)",
        description="Copy diffusers pipelines and transformers models into the object store (LIVO_S3_*) with a "
                    "livo-mirror.json manifest of sha256 hashes, verify them, and fetch them into the local model "
                    "cache (LIVO_MODEL_CACHE). Every model source livo accepts may then be an s3:// mirror.")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    mirror = sub.add_parser(
        "mirror", help="copy a model folder or hub id into the object store",
        description="Copy SOURCE (a diffusers pipeline folder with model_index.json, a transformers model folder "
                    "with config.json, or a hub id resolved with huggingface_hub: from the local HF cache when "
                    "HF_HUB_OFFLINE=1) to URI, then write URI/livo-mirror.json last. Safetensors weights only: "
                    "pickle files (.bin, .pt, .ckpt, ...) are skipped and a folder with only pickle weights is "
                    "refused. For diffusers, only model_index.json and the component folders it names are copied.")
    mirror.add_argument("source", metavar="SOURCE", help="local model folder or hub id (org/name)")
    mirror.add_argument("uri", metavar="URI", help="destination prefix, s3://bucket/prefix")
    mirror.add_argument("--revision", default=None, help="hub revision (branch, tag or commit); default main")
    mirror.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="skip files whose relative path matches GLOB (repeatable), e.g. 'safety_checker/*' "
                             "or '*.fp16.safetensors'")
    mirror.add_argument("--overwrite", action="store_true",
                        help="replace objects under URI that are not part of an earlier mirror")
    mirror.add_argument("--json", action="store_true", help="print the manifest written")
    mirror.add_argument("--no-progress", action="store_true", help="no progress bar")
    mirror.set_defaults(func=cmd_mirror)

    verify = sub.add_parser(
        "verify", help="recompute every sha256 of a mirror",
        description="Stream every file livo-mirror.json lists and compare its sha256 and size; exit 1 naming each "
                    "file that differs or is missing, exit 2 when URI has no manifest.")
    verify.add_argument("uri", metavar="URI", help="s3://bucket/prefix of the mirror")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(func=cmd_verify)

    fetch = sub.add_parser(
        "fetch", help="download a mirror into the local model cache and print its directory",
        description="Download and verify a mirror into LIVO_MODEL_CACHE (else $LIVO_CACHE_DIR/models, else "
                    "~/.cache/livo/models), keyed by its content hash; a cached copy is reused.")
    fetch.add_argument("uri", metavar="URI", help="s3://bucket/prefix of the mirror")
    fetch.add_argument("--kind", choices=("diffusers", "transformers"), default=None,
                       help="refuse a mirror of another kind")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(func=cmd_fetch)

    show = sub.add_parser("show", help="print a mirror's manifest",
                          description="Print the kind, source, revision, size, content hash and files of a mirror.")
    show.add_argument("uri", metavar="URI", help="s3://bucket/prefix of the mirror")
    show.add_argument("--json", action="store_true", help="print livo-mirror.json as stored")
    show.set_defaults(func=cmd_show)

    ls = sub.add_parser("ls", help="list the mirrors under a prefix",
                        description="Every complete mirror (one with livo-mirror.json) under URI.")
    ls.add_argument("uri", metavar="URI", help="s3://bucket or s3://bucket/prefix")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    ls.set_defaults(func=cmd_ls)
