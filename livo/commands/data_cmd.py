"""`livo data import|verify|info`: bring the authors' released data into our format; check and describe datasets."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="import, verify and describe preference datasets",
                                   description="Preference datasets: import the authors' layout, verify hashes, "
                                               "describe a manifest.")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    importer = commands.add_parser(
        "import", help="convert the authors' <type>/<scene>/metadata.jsonl layout into a livo dataset",
        description="Convert the LiVO authors' released data (<type>/<scene>/metadata.jsonl with file_name, prompt, "
                    "value, label; label 1 = aligned) into parquet shards + manifest.json. Their principle spellings "
                    "are mapped to our ids (typo variants included); --map settles others.")
    importer.add_argument("source", metavar="DIR", help="the authors' data folder")
    importer.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    importer.add_argument("--principles", help="principles file whose ids the data maps to (default: shipped default)")
    importer.add_argument("--map", action="append", default=[], metavar="TEXT=ID",
                          help="map one of their principle texts to our id (repeatable)")
    importer.add_argument("--name", default="authors", help="dataset name recorded in the manifest")
    importer.add_argument("--shards", type=int, help="number of shards (default: one per 2000 rows)")
    importer.add_argument("--seed", type=int, default=0,
                          help="seed of the uniform draw of each aligned image's violating image from its scene "
                               "(the authors' loader draws anew at every step; the seed makes the import reproducible)")
    importer.add_argument("--json", action="store_true", help="print the report as JSON")
    importer.set_defaults(func=handle_import)

    verify = commands.add_parser(
        "verify", help="check hashes, schema and every image of a dataset",
        description="Check a dataset as training will read it: the manifest's required keys, every shard's sha256 "
                    "against the manifest, the columns and their types, and that every image decodes. Exit 2 when "
                    "the data is bad (malformed manifest, wrong schema, undecodable image: the message names the "
                    "shard, row and column), 1 when a shard is missing or its sha256 differs (storage damage).")
    verify.add_argument("uri", metavar="URI", help="dataset directory or s3://bucket/prefix")
    verify.add_argument("--hashes-only", action="store_true",
                        help="only compare sha256s (no download of a remote dataset, no image decoding)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=handle_verify)

    info = commands.add_parser("info", help="print a dataset's manifest summary")
    info.add_argument("uri", metavar="URI", help="dataset directory or s3://bucket/prefix")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(func=handle_info)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def handle_import(args: argparse.Namespace) -> int:
    from livo.data.importer import import_authors_dataset

    uri, report = import_authors_dataset(args.source, args.out, principles_file=args.principles, mappings=args.map,
                                         name=args.name, num_shards=args.shards, seed=args.seed)
    if args.json:
        print(json.dumps({"uri": uri, **report}, indent=2, sort_keys=True))
    else:
        print(f"imported {report['rows']} pairs from {report['scenes']} scenes into {uri}")
        for spelling, pid in report["spellings"].items():
            print(f"  {spelling!r} -> {pid}")
        for skipped in report["skipped_scenes"]:
            print(f"  skipped {skipped}")
    return 0


def handle_verify(args: argparse.Namespace) -> int:
    from livo.data.dataset import verify_dataset

    result = verify_dataset(args.uri, decode_images=not args.hashes_only)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        decoded = "" if args.hashes_only else f", schema ok, {result['images_decoded']} images decode"
        print(f"ok: {result['uri']}: {result['shards']} shards, {result['num_rows']} rows, every sha256 matches"
              f"{decoded} (manifest {result['manifest_sha256']})")
    return 0


def handle_info(args: argparse.Namespace) -> int:
    from livo.data.dataset import read_manifest

    manifest, _ = read_manifest(args.uri)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    print(f"{args.uri}: {manifest['name']} ({manifest.get('source', 'unknown source')}), {manifest['num_rows']} pairs in "
          f"{len(manifest['shards'])} shards")
    print(f"  principle set {manifest['principle_set_hash']}")
    print(f"  model {manifest.get('generator_model_hash')}, judges {manifest.get('judge_ids')}")
    for pid, count in manifest["counts"]["by_principle"].items():
        scenes = sum(1 for s in manifest["counts"]["by_scene"] if s.startswith(f"{pid}/"))
        print(f"  {pid}: {count} pairs, {scenes} scenes")
    return 0
