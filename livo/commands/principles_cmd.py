"""`livo principles validate FILE`: check a principles file and print its content hash and a summary."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "principles", help="check principles files",
        description="Principles files (YAML) define the values a LiVO model is aligned to; see docs/architecture.md.",
    )
    actions = parser.add_subparsers(dest="principles_command", metavar="ACTION")
    validate = actions.add_parser(
        "validate", help="validate a principles file; print its content hash and a summary",
        description="Validate a principles file (local path or s3://bucket/key). Prints the content hash "
                    "(unchanged by key order, whitespace and comments) and one line per principle. Exit code 2 "
                    "with a message naming the file, the entry and the field when the file is invalid.",
    )
    validate.add_argument("file", metavar="FILE", help="principles YAML (path or s3://bucket/key)")
    validate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    validate.set_defaults(func=run_validate)
    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def summarize(principle) -> dict:
    retrieval = principle.retrieval
    evaluation = principle.evaluation
    return {
        "id": principle.id,
        "text": principle.text,
        "category": principle.category,
        "inference_dropout": principle.inference_dropout,
        "retrieval": {"keywords": len(retrieval.keywords), "examples": len(retrieval.examples),
                      "counter_examples": len(retrieval.counter_examples), "exclude": len(retrieval.exclude),
                      "person": retrieval.person, "min_confidence": retrieval.min_confidence},
        "evaluation": evaluation.model_dump(exclude_none=True, exclude_defaults=True),
        "generation": principle.generation is not None,
    }


def run_validate(args: argparse.Namespace) -> int:
    from livo.principles import load_principles

    principle_set = load_principles(args.file)
    summaries = [summarize(p) for p in principle_set]
    if args.json:
        print(json.dumps({"source": principle_set.source, "valid": True, "hash": principle_set.hash,
                          "version": principle_set.version, "principles": summaries}))
        return 0
    print(f"valid: {principle_set.source}")
    print(f"hash: {principle_set.hash}")
    print(f"{len(principle_set)} principle(s):")
    for s in summaries:
        r = s["retrieval"]
        hints = ", ".join(filter(None, [
            "person" if r["person"] else "",
            f"{r['keywords']} keywords" if r["keywords"] else "",
            f"{r['examples']} examples" if r["examples"] else "",
            f"{r['counter_examples']} counter-examples" if r["counter_examples"] else "",
            f"min confidence {r['min_confidence']}" if r["min_confidence"] else "",
        ]))
        evaluation = s["evaluation"]
        judged = (f"{evaluation['attribute']} {list(evaluation.get('classes', []))}" if "attribute" in evaluation
                  else f"concept {evaluation['concept']!r}" if "concept" in evaluation else "-")
        print(f"  {s['id']:<20} {s['category']:<9} dropout {s['inference_dropout']:<4} {s['text']!r}; "
              f"retrieval: {hints}; evaluation: {judged}; generation: {'yes' if s['generation'] else 'no'}")
    return 0
