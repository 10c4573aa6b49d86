"""`livo generate`: build a preference dataset (prompt, aligned image, violating image, principle) with a base model.

Resumable: re-running the same command skips the shards already committed and regenerates the missing or partial
ones. `--shard-index/--shard-count` generate one shard (the KFP fan-out); `livo generate --merge-only` then writes
the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate a preference dataset (resumable, sharded)",
        description="Generate (prompt, aligned image, violating image, principle) pairs with a base model, confirm "
                    "each pair with a judge, and write parquet shards + manifest.json to a directory or the object "
                    "store. Settings: --config YAML and KEY=VALUE overrides (see docs/data.md).",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. candidates_per_scene=8 judging.accept_all=true")
    parser.add_argument("--preset", help="tiny | toy | toy-six | toy-sdxl | sd15 | sd21 | sdxl | preset YAML (default: tiny, or the config's preset)")
    parser.add_argument("--config", help="generation config YAML (fields in docs/data.md)")
    parser.add_argument("--out", help="output directory or s3://bucket/prefix (default: datasets/<name>/<id> in the "
                                      "object store when LIVO_S3_ENDPOINT is set, else under ./runs)")
    parser.add_argument("--principle", action="append", default=[], metavar="ID",
                        help="generate for this principle id (repeatable; default: all with a generation section)")
    parser.add_argument("--prompts", metavar="FILE",
                        help="prompt list: YAML {principle_id: [prompts]} or text, one prompt per line")
    parser.add_argument("--shard-index", type=int, help="generate only this shard (needs --shard-count)")
    parser.add_argument("--shard-count", type=int, help="number of shards (overrides num_shards)")
    parser.add_argument("--merge-only", action="store_true", help="only write the manifest of finished shards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from livo.data.generate import build_generate_config, merge_generated_dataset, prepare_generation, run_generation
    from livo.errors import ConfigError

    overrides = list(args.overrides)
    if args.preset:
        overrides.insert(0, f"preset={args.preset}")
    if args.principle:
        overrides.append(f"principles=[{','.join(args.principle)}]")
    if args.prompts:
        overrides.append(f"prompts_file={args.prompts}")
    if args.shard_count is not None:
        overrides.append(f"num_shards={args.shard_count}")
    if args.shard_index is not None and args.shard_count is None:
        raise ConfigError("--shard-index needs --shard-count (the total number of shards)")
    config = build_generate_config(args.config, overrides)
    if args.merge_only:
        if not args.out or args.shard_count is None:
            raise ConfigError("--merge-only needs --out and --shard-count")
        manifest = merge_generated_dataset(args.out, args.shard_count)
        _print({"location": args.out, "rows": manifest["num_rows"], "counts": manifest["counts"]["by_principle"],
                "stats": manifest["stats"]}, args.json)
        return 0
    plan = prepare_generation(config, out=args.out)
    indices = None if args.shard_index is None else [args.shard_index]
    summary = run_generation(plan, shard_indices=indices, merge=True, progress=not args.no_progress)
    _print(summary.as_dict(), args.json)
    return 0


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    lines = [f"dataset: {summary['location']}"]
    if "shard_count" in summary:
        lines.append(f"shards: {len(summary['shards_generated'])} generated, {len(summary['shards_skipped'])} already "
                     f"complete (of {summary['shard_count']})")
        lines.append(f"images: {summary['images_generated']} generated in {summary['generation_seconds']:.1f} s "
                     f"({summary['images_per_second']:.2f} img/s); wall {summary['wall_seconds']:.1f} s")
        if not summary["manifest_written"]:
            lines.append("manifest: not yet written (other shards pending; run with --merge-only when all are done)")
    if summary.get("counts"):
        lines.append(f"pairs: {summary['rows']} — " + ", ".join(f"{k}: {v}" for k, v in summary["counts"].items()))
    stats = summary.get("stats") or {}
    if stats:
        lines.append("judged: violating kept {}/{}, aligned kept {}/{}".format(
            stats.get("violating_kept", 0), stats.get("violating_candidates", 0), stats.get("aligned_kept", 0),
            stats.get("aligned_candidates", 0)))
        skipped = {k: v for k, v in stats.items() if k.startswith("scenes_skipped_")}
        if skipped:
            lines.append("scenes skipped: " + ", ".join(f"{k[len('scenes_skipped_'):]}: {v}"
                                                       for k, v in skipped.items()))
    print("\n".join(lines), file=sys.stdout)
