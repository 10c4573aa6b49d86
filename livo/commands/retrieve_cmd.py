"""`livo retrieve`: which principle applies to a prompt (or to each line of a file); `--eval` scores a labelled set."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieve", help="choose the principle(s) for prompts",
        description="Prints the principle the value retriever chooses for each prompt (toxicity outranks bias) and "
                    "every principle that applies. Give one PROMPT, --file (one prompt per line; blank lines are "
                    "skipped; '-' reads stdin) or --eval LABELLED.jsonl (accuracy and a confusion table).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt (quote it)")
    source.add_argument("--file", metavar="PROMPTS.txt", help="one prompt per line (UTF-8); '-' for stdin")
    source.add_argument("--eval", metavar="LABELLED.jsonl",
                        help='labelled set: lines {"prompt", "expected": id|null|[ids], "all": [ids], "split"}')
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt (or one eval report)")
    parser.add_argument("--explain", action="store_true", help="add the stage that decided and its scores")
    parser.add_argument("--principles", metavar="FILE", help="principles file (default: the shipped default.yaml)")
    parser.add_argument("--no-semantic", action="store_true",
                        help="keywords and the person lexicon only (no sentence model; starts in ~1 s)")
    parser.add_argument("--threshold", type=float,
                        help="semantic classifier probability threshold (default: chosen for the operating point)")
    parser.add_argument("--min-confidence", type=_unit_interval, default=0.0, metavar="P",
                        help="withhold a principle chosen with a calibrated confidence below P (no token rather "
                             "than a doubtful one); each principle's retrieval.min_confidence applies too")
    parser.add_argument("--person-threshold", type=float, help="semantic person-vote threshold")
    parser.add_argument("--llm-endpoint", default=os.environ.get("LIVO_LLM_ENDPOINT"),
                        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (env LIVO_LLM_ENDPOINT; "
                             "API key from LIVO_LLM_API_KEY)")
    parser.add_argument("--llm-model", default=os.environ.get("LIVO_LLM_MODEL"),
                        help="model name for the LLM stage (env LIVO_LLM_MODEL)")
    parser.add_argument("--split", help="with --eval: only rows of this split (e.g. dev, test)")
    parser.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 file; a line that is not UTF-8 is an error naming the file and the line."""
    from livo.errors import ConfigError

    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory; pass a text file with one prompt per line") from None
    prompts = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not UTF-8 text (byte {exc.start} of the line); save the file as "
                              "UTF-8") from None
        line = line.removeprefix("\ufeff") if number == 1 else line
        if line.strip():
            prompts.append(line.strip())
    return prompts


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def run(args: argparse.Namespace) -> int:
    from livo.errors import ConfigError
    from livo.principles import load_principles
    from livo.retriever import ValueRetriever, evaluate_retrieval, load_labelled

    if args.prompt is None and args.file is None and args.eval is None:
        raise ConfigError("give a PROMPT, --file PROMPTS.txt or --eval LABELLED.jsonl (see `livo retrieve --help`)")
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("the prompt is empty; give the text of a prompt")
    principles = load_principles(args.principles)
    retriever = ValueRetriever(principles, semantic=not args.no_semantic, llm_endpoint=args.llm_endpoint,
                               llm_model=args.llm_model, threshold=args.threshold,
                               person_threshold=args.person_threshold, min_confidence=args.min_confidence)
    if args.eval is not None:
        rows = load_labelled(args.eval, principles)
        if args.split:
            rows = [r for r in rows if r.split == args.split]
            if not rows:
                raise ConfigError(f"{args.eval}: no rows with split {args.split!r}")
        report = evaluate_retrieval(retriever, rows)
        print(json.dumps(report) if args.json else format_report(report))
        return 0
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.file)
    explanations = retriever.explain_many(prompts)
    for explanation in explanations:
        chosen = principles.get(explanation["principle"]) if explanation["principle"] else None
        if args.json:
            line = {"prompt": explanation["prompt"],
                    "principle": ({"id": chosen.id, "text": chosen.text, "category": chosen.category}
                                  if chosen else None),
                    "confidence": explanation["confidence"],
                    "all": explanation["all"]}
            if args.explain:
                line["explain"] = explanation
            print(json.dumps(line, ensure_ascii=False))
        else:
            confidence = explanation["confidence"]
            print(f"{chosen.id if chosen else 'none':<18} {'-' if confidence is None else f'{confidence:.2f}':<5} "
                  f"all={','.join(explanation['all']) or '-':<48} {explanation['prompt']}")
            if args.explain:
                print("  " + json.dumps({k: v for k, v in explanation.items() if k != "prompt"},
                                        ensure_ascii=False))
    return 0


def format_report(report: dict) -> str:
    lines = [f"retrieve accuracy: {report['accuracy']:.4f} on {report['n']} prompts "
             f"(semantic={report['semantic']}, threshold={report['threshold']}, "
             f"person_threshold={report['person_threshold']})"]
    for split, accuracy in report["accuracy_by_split"].items():
        lines.append(f"  split {split}: {accuracy:.4f}")
    if report["all_exact_accuracy"] is not None:
        lines.append(f"retrieve_all exact-set accuracy: {report['all_exact_accuracy']:.4f}")
    lines.append("accuracy by group:")
    for group, accuracy in report["accuracy_by_group"].items():
        lines.append(f"  {group:<24} {accuracy:.4f}")
    confusion = report["confusion"]
    columns = sorted({c for row in confusion.values() for c in row})
    width = max(len(label) for label in confusion) + 2
    lines.append("confusion (rows: expected, columns: retrieved):")
    lines.append(" " * width + " ".join(f"{c:>16}" for c in columns))
    for label in sorted(confusion):
        lines.append(f"{label:<{width}}" + " ".join(f"{confusion[label].get(c, 0):>16}" for c in columns))
    lines.append(f"misses ({len(report['misses'])}):")
    for miss in report["misses"]:
        lines.append(f"  [{miss['split'] or '-'}] expected {miss['expected']}, got {miss['predicted']} "
                     f"(all: {','.join(miss['all']) or '-'}; expected all: {','.join(miss['expected_all']) or '-'})"
                     f": {miss['prompt']}")
    return "\n".join(lines)
