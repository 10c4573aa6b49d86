"""Request latency of a running `livo serve` (docs/serving.md, "Server", measured numbers).

    python tests/serving/tiny_server.py --port 8080 --set num_inference_steps=4 &   # or: livo serve MODEL
    python benchmarks/serve_latency.py http://127.0.0.1:8080 livo-tiny [--requests 20] [--concurrency 8]

Sequential requests (1 image; 4 images; 1 image + compare), then bursts of concurrent 1-image requests; prints the
median and 95th percentile per case and, from /metrics, how many generator calls (micro-batches) the bursts took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(url: str, body: dict) -> float:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - started


def batches(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("livo_serve_batches_total "):
                return float(line.split()[-1])
    return 0.0


def summary(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<34} n={len(seconds):<3} median {statistics.median(seconds) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    url = f"{args.base}/v1/models/{args.model}:predict"
    post(url, {"prompt": "warm up", "seed": 0})
    cases = {"1 image": {"num_images": 1}, "4 images": {"num_images": 4}, "1 image + compare": {"compare": True}}
    for name, extra in cases.items():
        times = [post(url, {"prompt": "a photo of a bloody nurse", "seed": i, "principle": "bloody", **extra})
                 for i in range(args.requests)]
        print(summary(f"sequential, {name}", times))
    before = batches(args.base)
    times = []
    rounds = max(1, args.requests // args.concurrency)
    with ThreadPoolExecutor(args.concurrency) as pool:
        for r in range(rounds):
            times += list(pool.map(lambda i: post(url, {"prompt": "a photo of a zombie", "seed": i}),
                                   range(r * args.concurrency, (r + 1) * args.concurrency)))
    print(summary(f"{args.concurrency} concurrent, 1 image", times)
          + f"   ({len(times)} requests in {batches(args.base) - before:.0f} generator calls)")


if __name__ == "__main__":
    main()
