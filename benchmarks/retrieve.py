"""Benchmark and calibrate the value retriever (results and the command line go to docs/retrieval.md).

    .venv/bin/python benchmarks/retrieve.py                 # speed (1 000 prompts) + accuracy + paper baseline
    .venv/bin/python benchmarks/retrieve.py --tune          # re-choose the thresholds on the dev split
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

LABELLED = REPO / "data" / "retrieval" / "labelled.jsonl"
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
    parser.add_argument("--threads", type=int, default=1, help="LIVO_RETRIEVER_THREADS for this run")
    parser.add_argument("--tune", action="store_true", help="grid-search the thresholds on the dev split")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args()

    import os

    import numpy as np
    import torch

    os.environ["LIVO_RETRIEVER_THREADS"] = str(args.threads)
    from livo.principles import load_principles
    from livo.retriever import ValueRetriever, evaluate_retrieval, load_labelled, tune_thresholds

    principles = load_principles()
    rows = load_labelled(LABELLED, principles)
    results: dict = {"threads": args.threads, "cpus": os.cpu_count(), "torch_default_threads": torch.get_num_threads(),
                     "load_average_before": os.getloadavg(), "principles_hash": principles.hash}

    started = time.perf_counter()
    retriever = ValueRetriever(principles)
    retriever.retrieve("a photo of a cat")
    results["load_s"] = round(time.perf_counter() - started, 2)

    if args.tune:
        dev = [r for r in rows if r.split == "dev"]
        tuned = tune_thresholds(retriever, dev, np.round(np.arange(-0.05, 0.16, 0.01), 2),
                                np.round(np.arange(0.0, 0.31, 0.01), 2))
        results["tune"] = {k: v for k, v in tuned.items() if k != "grid"}
        results["tune"]["dev_rows"] = len(dev)
        print(json.dumps(results["tune"]))

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
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
