"""Benchmark and calibrate the value retriever (results and the command line go to docs/retrieval.md).

    .venv/bin/python benchmarks/retrieve.py                 # speed (1 000 prompts) + accuracy + paper baseline
    .venv/bin/python benchmarks/retrieve.py --tune          # re-choose thresholds and calibration on the dev splits
    .venv/bin/python benchmarks/retrieve.py --precision --plot docs/retrieval_pr.png   # operating point, PR curves
    .venv/bin/python benchmarks/retrieve.py --out result.json

Speed: the model is loaded first (timed separately), then `retrieve_all_many` runs on N distinct prompts `--repeat`
times; the best and median wall times and the process CPU time are reported (the build machines are shared, so wall
time is noisy; CPU time less so). `--threads` sets LIVO_RETRIEVER_THREADS, the torch threads used for embedding.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from benchlib import context, finished  # noqa: E402

LABELLED = REPO / "data" / "retrieval" / "labelled.jsonl"
HARMLESS_NEAR = REPO / "data" / "retrieval" / "harmless_near.jsonl"
HARMFUL_PARAPHRASES = REPO / "data" / "retrieval" / "harmful_paraphrases.jsonl"
SUFFIXES = ["", ", highly detailed", ", oil painting", ", at night", ", 35mm photo", ", in the style of a comic",
            ", soft light", ", wide angle"]

# The authors' retriever: substring keyword lists checked in this order (LIVO_METHOD.md §2), as a baseline for the
# toxicity decision. Their person/bias stage is an LLM and is not reproduced here.
PAPER_TOXIC_WORDS = {
    "nudity": ["nudity", "naked", "nude", "lewd", "erotic", "sexy", "pussy", "no clothes", "nsfw", "fuck", "fucked",
               "sex", "no panties", "orgasm", "porn", "making love", "boobs"],
    "bloody": ["bloody", "blood", "bloodied"],
    "zombie": ["zombie", "dead"],
}


def paper_toxicity(prompt: str) -> str | None:
    for principle_id, words in PAPER_TOXIC_WORDS.items():
        if re.search("|".join(map(re.escape, words)), prompt, re.IGNORECASE):
            return principle_id
    return None


def make_prompts(rows, n: int) -> list[str]:
    prompts = []
    for suffix in SUFFIXES * (n // (len(rows) * len(SUFFIXES)) + 1):
        prompts += [r.prompt + suffix for r in rows]
    return prompts[:n]


def time_batches(fn, prompts, repeat: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(prompts)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"prompts": len(prompts), "best_wall_s": round(min(walls), 3),
            "median_wall_s": round(statistics.median(walls), 3), "best_cpu_s": round(min(cpus), 3)}


def toxicity_accuracy(rows, predict) -> dict:
    correct = false_positives = 0
    for row in rows:
        expected = next((e for e in row.expected if e in PAPER_TOXIC_WORDS), None)
        predicted = predict(row.prompt)
        correct += predicted == expected
        false_positives += expected is None and predicted is not None
    return {"accuracy": round(correct / len(rows), 4), "false_positives": false_positives, "n": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="LIVO_RETRIEVER_THREADS for this run (default: the retriever's "
                                                     "own choice, livo.retriever.embedding_threads)")
    parser.add_argument("--tune", action="store_true",
                        help="re-choose the thresholds and the calibration on the dev splits")
    parser.add_argument("--precision", action="store_true",
                        help="operating point, per-principle precision/recall, calibration error, PR curves")
    parser.add_argument("--plot", help="with --precision: write the PR curves to this PNG")
    parser.add_argument("--cold", action="store_true",
                        help="time `livo retrieve --file` on --prompts prompts as new processes, load included "
                             "(first run with an empty anchor cache, then --repeat runs with it), one JSON line")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args()
    if args.cold:
        return cold(args)

    import os

    import torch

    if args.threads is not None:
        os.environ["LIVO_RETRIEVER_THREADS"] = str(args.threads)
    from livo.principles import load_principles
    from livo.retriever import ValueRetriever, evaluate_retrieval, load_labelled

    principles = load_principles()
    rows = load_labelled(LABELLED, principles)
    results: dict = {**context("retrieve.py"), "benchmark": "retrieve", "threads": args.threads or "default",
                     "torch_default_threads": torch.get_num_threads(), "principles_hash": principles.hash}

    started = time.perf_counter()
    retriever = ValueRetriever(principles)
    retriever.retrieve("a photo of a cat")
    results["load_s"] = round(time.perf_counter() - started, 2)

    if args.tune:
        results["tune"] = tune(retriever, principles)
        return _finish(results, args)
    if args.precision:
        results["precision"] = precision(retriever, principles, args.plot)
        return _finish(results, args, line={**results, "precision": {k: v for k, v in results["precision"].items()
                                                                      if k != "pr_curves"}})

    prompts = make_prompts(rows, args.prompts)
    assert len(set(prompts)) == len(prompts) == args.prompts
    results["batch_semantic"] = time_batches(retriever.retrieve_all_many, prompts, args.repeat)
    keyword_retriever = ValueRetriever(principles, semantic=False)
    results["batch_keywords_only"] = time_batches(keyword_retriever.retrieve_all_many, prompts, args.repeat)
    singles = prompts[:200]
    results["single_calls_semantic"] = time_batches(lambda ps: [retriever.retrieve(p) for p in ps], singles, 1)

    report = evaluate_retrieval(retriever, rows)
    keyword_report = evaluate_retrieval(keyword_retriever, rows)
    results["accuracy"] = {k: report[k] for k in ("accuracy", "accuracy_by_split", "all_exact_accuracy",
                                                   "accuracy_by_group", "threshold", "person_threshold")}
    results["accuracy_keywords_only"] = {k: keyword_report[k] for k in ("accuracy", "accuracy_by_split",
                                                                       "all_exact_accuracy")}

    def ours(prompt: str) -> str | None:
        chosen = retriever.retrieve(prompt)
        return chosen.id if chosen is not None and chosen.id in PAPER_TOXIC_WORDS else None

    results["toxicity_decision"] = {"paper_substring_rules": toxicity_accuracy(rows, paper_toxicity),
                                    "livo_retriever": toxicity_accuracy(rows, ours)}
    return _finish(results, args)


def cold(args) -> int:
    """What a user waits for: `livo retrieve --file P.txt --json` as a new process (interpreter start, imports, model,
    anchors, 1 000 prompts), wall time per run; the first run has an empty anchor cache (LIVO_CACHE_DIR in a temporary
    folder), the others reuse it. Threads: the default unless --threads is given explicitly."""
    import os
    import subprocess
    import tempfile

    from livo.retriever import load_labelled

    invocation = context("retrieve.py")
    prompts = make_prompts(load_labelled(LABELLED), args.prompts)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.txt"
        path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        env = {**os.environ, "LIVO_CACHE_DIR": str(Path(folder) / "cache")}
        if args.threads is not None:
            env["LIVO_RETRIEVER_THREADS"] = str(args.threads)
        command = [sys.executable, "-m", "livo.cli", "retrieve", "--file", str(path), "--json"]
        walls = []
        for _ in range(1 + args.repeat):
            started = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - started)
            if proc.returncode != 0 or len(proc.stdout.splitlines()) != len(prompts):
                raise SystemExit(f"livo retrieve failed: {proc.stderr[-500:]}")
    warm = walls[1:]
    result = {**invocation, "benchmark": "retrieve-cold", "measured": "livo retrieve --file P.txt --json",
              "prompts": len(prompts),
              "threads": env.get("LIVO_RETRIEVER_THREADS", "default"),
              "first_run_empty_cache_s": round(walls[0], 2),
              "cached_anchors_s": {"median": round(statistics.median(warm), 2), "min": round(min(warm), 2),
                                   "max": round(max(warm), 2), "runs": len(warm)}}
    result = finished(result)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return 0


def _finish(results: dict, args, line: dict | None = None) -> int:
    """Print one JSON line (`line`, default `results`) with the load average after the run; `--out` gets `results`."""
    results.update(finished({}))
    print(json.dumps({**(line or results), "load_average_after": results["load_average_after"]}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def scored_sets(retriever, principles) -> dict:
    from livo.retrieval_quality import Scored
    from livo.retriever import load_labelled

    return {name: Scored.of(retriever, load_labelled(path, principles))
            for name, path in (("labelled", LABELLED), ("harmless_near", HARMLESS_NEAR),
                               ("harmful_paraphrases", HARMFUL_PARAPHRASES))}


def tune(retriever, principles) -> dict:
    from livo.retrieval_quality import tune_defaults

    dev = {name: scored.split("dev") for name, scored in scored_sets(retriever, principles).items()}
    return tune_defaults(dev["labelled"], dev["harmless_near"], dev["harmful_paraphrases"])


def precision(retriever, principles, plot: str | None) -> dict:
    """The figures docs/retrieval.md quotes: the operating point on dev and test, precision/recall per principle (the
    three sets together), calibration error, the operating point at a few confidence floors, and the PR curve of each
    toxicity principle (PNG with `--plot`)."""
    from livo.retrieval_quality import (
        THRESHOLD_GRID,
        labelled_accuracy,
        operating_point,
        per_principle,
        pooled,
        pr_curve,
        reliability,
        toxicity_ids,
    )

    sets = scored_sets(retriever, principles)
    out: dict = {"threshold": retriever.threshold, "person_threshold": retriever.person_threshold,
                 "calibration": retriever.calibration.as_dict(), "principles_hash": principles.hash}
    for split in ("dev", "test"):
        part = {name: scored.split(split) for name, scored in sets.items()}
        everything = pooled(part.values())
        out[split] = {
            "operating_point": operating_point(part["harmless_near"], part["harmful_paraphrases"]),
            "labelled_accuracy": labelled_accuracy(part["labelled"]),
            "per_principle": per_principle(everything),
            "reliability": reliability(everything),
            "min_confidence": {str(floor): operating_point(part["harmless_near"], part["harmful_paraphrases"],
                                                           min_confidence=floor) for floor in (0.5, 0.7, 0.9)},
        }
    out["labelled_accuracy_all"] = labelled_accuracy(sets["labelled"])
    curves = {pid: {split: pr_curve(pooled(s.split(split) for s in sets.values()), pid, THRESHOLD_GRID)
                    for split in ("dev", "test")} for pid in toxicity_ids(retriever)}
    out["pr_curves"] = curves
    if plot:
        _plot_curves(curves, retriever.threshold, plot)
        out["plot"] = plot
    return out


def _plot_curves(curves: dict, threshold: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.0), sharey=True)
    for axis, (pid, by_split) in zip(axes, curves.items(), strict=True):
        for split, style in (("dev", "--"), ("test", "-")):
            points = by_split[split]
            axis.plot([p["recall"] for p in points], [p["precision"] for p in points], style, label=split)
            at = min(points, key=lambda p: abs(p["threshold"] - threshold))
            axis.plot([at["recall"]], [at["precision"]], "o", color="black")
        axis.set_title(f"{pid} (dot: threshold {threshold})")
        axis.set_xlabel("recall")
        axis.set_xlim(0.5, 1.005)
        axis.set_ylim(0.5, 1.005)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    axes[0].legend(loc="lower left")
    figure.suptitle("value retriever: semantic threshold swept (labelled + harmless-near + harmful paraphrases)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
