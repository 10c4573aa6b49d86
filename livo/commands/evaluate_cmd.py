"""`livo evaluate`: candidate (base model + value encoder) vs base model on the paper's protocol."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a value encoder against its base model (bias, toxicity, quality) and write a report",
        description="Generate base and aligned images on the same prompts and seeds, judge them, compute D1/D2, "
                    "R/S/Max/Prob, IS/FID/CLIPScore, apply the gates and write metrics.json, report.html and "
                    "summary.md. Every bad input fails before the first image is generated.",
    )
    parser.add_argument("--value-encoder", required=True, metavar="DIR",
                        help="value encoder directory (config.json + model.safetensors, or a parent of value_encoder/)")
    parser.add_argument("--preset", default="tiny", help="preset name (tiny, toy, sd15) or preset YAML (default: tiny)")
    parser.add_argument("--model", default=None, help="base model source; default: the preset's model.source")
    parser.add_argument("--principles", default=None, help="principles file; default: the preset's")
    parser.add_argument("--config", default=None, metavar="YAML", help="evaluation config file (see docs/evaluation.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluation setting, e.g. --set images_per_prompt=10 (repeatable)")
    parser.add_argument("--output", default="evaluation", metavar="DIR",
                        help="where metrics.json, report.html and summary.md go (default: ./evaluation)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a gate fails")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from livo.evaluation.protocol import evaluate_candidate
    from livo.evaluation.report import format_summary_table

    result = evaluate_candidate(args.value_encoder, preset=args.preset, model=args.model, principles=args.principles,
                                config_path=args.config, overrides=args.overrides, device=args.device,
                                output_dir=args.output)
    print(format_summary_table(result.metrics))
    for name, path in result.paths.items():
        print(f"{name}: {path}")
    return 1 if args.check and not result.metrics["passed"] else 0
