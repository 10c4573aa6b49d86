"""Load test of `livo serve` on loopback with the toy model, against direct `LiVOPipeline` calls (docs/serving.md,
"Measured").

    .venv/bin/python benchmarks/serve.py --out runs/bench/serve.json                 # ~11 min on 2 CPU cores
    .venv/bin/python benchmarks/serve.py --reps 1 --requests 4 --clients 1,2 --variant default= \\
        --set num_inference_steps=2 --overload-clients 0                            # a smoke run, seconds

The server is the real `livo serve` path — `livo.serving.server.serve`: KServe's REST server, request validation,
the bounded queue, the micro-batching worker, `RegisteredGenerator` with the sampler settings `livo serve` takes
(`livo.commands.serve_cmd.generation_settings`: the `toy` preset's 20 steps, CFG 3, 32x32, UNet batches of up to
50, unless `--set` says otherwise), PNG + base64 responses — run in its own process (`--server`). Only loading differs
from `livo serve MODEL`: the version is built in memory (the committed `toy` base model, a value encoder derived from
its text encoder, the toy principles, a keyword retriever) instead of being fetched from a registry and verified,
which costs nothing per request.

For each configuration (`--variant NAME=KEY=VALUE,...`: the server's settings, e.g. `batch_size=16`) and each number
of concurrent clients (`--clients`), a repetition is a pair, run back to back in alternating order (A/B, B/A, ...):
- server: `--requests` v1 requests (1 image each unless `--images`), `c` clients on keep-alive connections, stopped
  early after `--max-seconds`; a 503 is counted and its `Retry-After` honoured;
- direct: the same number of images from `LiVOPipeline.generate` in this process (one dedicated thread, like the
  server's worker), with the same sampler settings, prompt, principle and seeds, in calls of as many images as the
  server's micro-batches hold at that concurrency (`min(c, batch_size) x images`), also stopped after `--max-seconds`.
Defaults: 3 repetitions; 1, 4 and 16 clients; 64 requests per run, at most 20 s; configurations `default` (the
shipped settings: batch_size 4, batch_window_ms 10, queue_size 16) and `batch16` (batch_size=16).
Overhead = 1 - server images/s / direct images/s (medians over the repetitions; the range is that of the paired
per-repetition values). The goal (<= 15 %) is judged at the concurrency that fills batches (c >= batch_size).
Then `--overload-clients` clients against a server with `queue_size=--overload-queue`: every status is counted (503s
must carry Retry-After; nothing may time out).

Writes JSON (`--out`) and prints a Markdown table. Peak memory: the server process's VmHWM (/proc/<pid>/status).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a bloody nurse"  # the retriever chooses `bloody` (a toxicity principle: every image has the token)
GOAL = 0.15


# --- reporting (pure functions; tests/benchmarks/test_serve_benchmark.py) ---------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


def overhead(server_images_per_s: float, direct_images_per_s: float) -> float:
    """1 - server / direct: the share of the direct throughput that serving costs (negative: the server was faster)."""
    return 1.0 - server_images_per_s / direct_images_per_s if direct_images_per_s > 0 else math.nan


def failures(statuses: dict[str, int], *, overloaded_ok: bool) -> int:
    """Requests that failed: anything but 200, and 503 with Retry-After when the queue bound may be exceeded."""
    allowed = {"200", "503"} if overloaded_ok else {"200"}
    return sum(n for status, n in statuses.items() if status not in allowed)


def run_stats(latencies: list[float], images: int, statuses: dict[str, int], wall_s: float) -> dict[str, Any]:
    ok = statuses.get("200", 0)
    return {"requests_per_s": ok / wall_s, "images_per_s": images / wall_s, "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000, "images": images, "wall_s": wall_s, "statuses": statuses}


def summarize_pair_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repetitions of one (configuration, clients) pair: medians with min-max."""
    servers = [r["server"] for r in runs]
    directs = [r["direct"] for r in runs]
    statuses: Counter = Counter()
    for s in servers:
        statuses.update(s["statuses"])
    row = {key: spread([s[key] for s in servers]) for key in ("requests_per_s", "p50_ms", "p95_ms", "images_per_s")}
    row["requests_per_batch"] = spread([s.get("requests_per_batch", math.nan) for s in servers])
    row["direct_images_per_s"] = spread([d["images_per_s"] for d in directs])
    paired = [overhead(s["images_per_s"], d["images_per_s"]) for s, d in zip(servers, directs, strict=True)]
    row["overhead"] = {"value": overhead(row["images_per_s"]["median"], row["direct_images_per_s"]["median"]),
                       "paired_min": min(paired), "paired_max": max(paired)}
    row["statuses"] = dict(sorted(statuses.items()))
    row["failed"] = failures(row["statuses"], overloaded_ok=False)
    return row


def _fmt(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def fmt_spread(s: dict[str, float], digits: int = 1) -> str:
    if math.isnan(s["median"]):
        return "–"
    if s["min"] == s["max"]:
        return _fmt(s["median"], digits)
    return f"{_fmt(s['median'], digits)} ({_fmt(s['min'], digits)}–{_fmt(s['max'], digits)})"


def fmt_overhead(o: dict[str, float]) -> str:
    if math.isnan(o["value"]):
        return "–"
    return f"{o['value'] * 100:.0f} % ({o['paired_min'] * 100:.0f}…{o['paired_max'] * 100:.0f})"


def fmt_statuses(statuses: dict[str, int]) -> str:
    return " ".join(f"{status}×{n}" for status, n in sorted(statuses.items())) or "–"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table: one line per (configuration, clients)."""
    lines = ["| config | clients | requests/s | p50 ms | p95 ms | images/s | direct images/s (batch) | overhead | "
             "requests/batch | statuses | server peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        direct = (f"{fmt_spread(row['direct_images_per_s'], 2)} ({row['direct_batch']})"
                  if row.get("direct_images_per_s") else "–")
        rss = row.get("server_peak_rss_mib")
        lines.append(
            f"| {row['config']} | {row['clients']} | {fmt_spread(row['requests_per_s'], 2)} | "
            f"{fmt_spread(row['p50_ms'], 0)} | {fmt_spread(row['p95_ms'], 0)} | {fmt_spread(row['images_per_s'], 2)} | "
            f"{direct} | {fmt_overhead(row['overhead']) if row.get('overhead') else '–'} | "
            f"{fmt_spread(row['requests_per_batch'], 1) if row.get('requests_per_batch') else '–'} | "
            f"{fmt_statuses(row['statuses'])} | {'–' if rss is None else f'{rss:.0f} MiB'} |")
    return "\n".join(lines)


def fills_batches(clients: int, batch_size: int) -> bool:
    return clients >= batch_size


def goal_verdict(rows: list[dict[str, Any]], goal: float = GOAL) -> dict[str, Any]:
    """Whether overhead <= goal where batches fill (clients >= batch_size), per configuration."""
    verdict = {}
    for row in rows:
        if row.get("overhead") is None or not fills_batches(row["clients"], row["batch_size"]):
            continue
        entry = verdict.setdefault(row["config"], {"met_at": [], "missed_at": []})
        (entry["met_at"] if row["overhead"]["value"] <= goal else entry["missed_at"]).append(row["clients"])
    return verdict


def best_config(rows: list[dict[str, Any]]) -> str | None:
    """The configuration with the highest median images/s at the highest concurrency measured."""
    measured = [r for r in rows if r.get("overhead") is not None]
    if not measured:
        return None
    top = max(r["clients"] for r in measured)
    return max((r for r in measured if r["clients"] == top), key=lambda r: r["images_per_s"]["median"])["config"]


# --- the toy version, as the server and the direct calls use it ------------------------------------------------------


def toy_pipeline(threads: int | None):
    """A `RegisteredPipeline` on the committed toy base model (a value encoder derived from its text encoder: the same
    architecture and cost as a trained one), the toy principles and a keyword retriever."""
    import torch

    from livo.modeling import ValueEncoder
    from livo.presets import load_pipeline, load_preset_config
    from livo.principles import load_principles
    from livo.retriever import ValueRetriever
    from livo.serving.loading import RegisteredPipeline, VersionInfo

    if threads:
        torch.set_num_threads(threads)
    base = load_pipeline("toy")
    base.set_progress_bar_config(disable=True)
    encoder = ValueEncoder.from_text_encoder(base.text_encoder)
    principles = load_principles(load_preset_config("toy").principles_path())
    info = VersionInfo(model="livo-toy", version="v0", uri="s3://bench/models/livo-toy/v0/", lineage_sha256="",
                       report_uri="", weights_sha256="", base_model_id="toy", base_model_fingerprint="",
                       principle_set_hash=principles.hash, principle_ids=tuple(principles.ids), verified="skipped")
    return RegisteredPipeline(base, encoder, principles=principles,
                              retriever=ValueRetriever(principles, semantic=False), info=info)


def serve_config(overrides: list[str]):
    from livo.config import load_config
    from livo.serving.config import ServeConfig

    return load_config(ServeConfig, None, overrides)


def run_server(port: int, threads: int | None, overrides: list[str]) -> None:
    """`--server`: the toy version behind `livo.serving.server.serve`, as `livo serve` runs it."""
    from livo.commands.serve_cmd import generation_settings
    from livo.serving.generator import RegisteredGenerator
    from livo.serving.server import serve

    config = serve_config([*overrides, f"port={port}"])
    pipe = toy_pipeline(threads)
    serve(RegisteredGenerator(pipe, **generation_settings("toy", config)), config)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class Direct:
    """The same images from `LiVOPipeline.generate` calls in this process, made in one dedicated thread as the server's
    worker makes them (on a loaded 2-core machine, torch calls from the main thread with 2 intra-op threads stalled for
    seconds now and then; from a worker thread they did not)."""

    def __init__(self, threads: int | None, overrides: list[str]):
        from concurrent.futures import ThreadPoolExecutor

        from livo.commands.serve_cmd import generation_settings

        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")
        self.pipe = toy_pipeline(threads)
        settings = generation_settings("toy", serve_config(overrides))
        resolution = settings.pop("resolution")
        settings.pop("inference_dropout")
        self.settings = {**settings, "height": resolution, "width": resolution}
        self.text = self.pipe.choose_principle(PROMPT, "auto").text
        self.worker_threads = self.executor.submit(torch_threads).result()

    def run(self, images: int, per_call: int, max_seconds: float, seed0: int = 0) -> dict[str, Any]:
        return self.executor.submit(self._run, images, per_call, max_seconds, seed0).result()

    def _run(self, images: int, per_call: int, max_seconds: float, seed0: int) -> dict[str, Any]:
        started = time.perf_counter()
        deadline = started + max_seconds
        made = 0
        while made < images and time.perf_counter() < deadline:
            n = min(per_call, images - made)
            out = self.pipe.generate([PROMPT] * n, [self.text] * n, seeds=list(range(seed0 + made, seed0 + made + n)),
                                     inference_dropout=0.0, **self.settings)
            made += len(out.images)
        wall = time.perf_counter() - started
        return {"images": made, "per_call": per_call, "wall_s": wall, "images_per_s": made / wall}


# --- the server process and its clients ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


class Server:
    def __init__(self, overrides: list[str], threads: int | None, log: Path):
        self.port = free_port()
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--server", "--port", str(self.port),
                 *([f"--threads={threads}"] if threads else []), *(f"--set={o}" for o in overrides)],
                stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "LIVO_TRACKING": "none"})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {log.read_text()[-2000:]}")
            try:
                status, _ = self.request("GET", "/v2/health/ready", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not get ready in 180 s: {log.read_text()[-2000:]}")

    def request(self, method: str, path: str, timeout: float = 30) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def batch_metrics(self) -> tuple[float, float]:
        """(micro-batches, requests in them) so far, from /metrics."""
        _, body = self.request("GET", "/metrics")
        values = {}
        for line in body.decode().splitlines():
            if line.startswith(("livo_serve_batch_requests_count ", "livo_serve_batch_requests_sum ")):
                name, _, value = line.partition(" ")
                values[name] = float(value)
        return values.get("livo_serve_batch_requests_count", 0.0), values.get("livo_serve_batch_requests_sum", 0.0)

    def memory(self) -> dict[str, int]:
        return proc_status(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def load_test(server: Server, model: str, clients: int, requests: int, images: int, max_seconds: float,
              seed0: int = 0, timeout: float = 120.0) -> dict[str, Any]:
    """`clients` threads, each on its own keep-alive connection, send v1 requests until `requests` were sent or
    `max_seconds` passed; a 503 is counted and its Retry-After honoured."""
    path = f"/v1/models/{model}:predict"
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    statuses: Counter = Counter()
    received = [0]
    started = time.perf_counter()
    deadline = started + max_seconds

    def next_seed() -> int | None:
        with lock:
            if issued[0] >= requests or time.perf_counter() >= deadline:
                return None
            issued[0] += 1
            return seed0 + issued[0] * images

    def client() -> None:
        conn = None
        while (seed := next_seed()) is not None:
            body = json.dumps({"prompt": PROMPT, "seed": seed, "num_images": images}).encode()
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
                status = "timeout" if isinstance(exc, TimeoutError) else f"error:{type(exc).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            else:
                status = str(response.status)
                retry_after = response.getheader("Retry-After")
                if response.status == 200:
                    got = sum(len(p["images"]) for p in json.loads(data)["predictions"])
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        received[0] += got
                elif response.status == 503 and retry_after is None:
                    status = "503-without-Retry-After"
                elif response.status == 503:
                    time.sleep(max(0.0, min(float(retry_after), deadline - time.perf_counter())))
            with lock:
                statuses[status] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run_stats(latencies, received[0], dict(statuses), time.perf_counter() - started)


# --- the benchmark ---------------------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition("=")
    return name, [s for s in settings.split(",") if s]


def host_info(threads: int) -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": threads,
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "hostname": platform.node()}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    threads = args.threads
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    out = Path(args.out)
    variants = [parse_variant(v) for v in (args.variant or ["default=", "batch16=batch_size=16"])]
    direct = Direct(threads, args.overrides)
    result: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        "started_utc": started.isoformat(timespec="seconds"),
        "host": {**host_info(threads or torch.get_num_threads()), "torch_threads_worker": direct.worker_threads},
        "load_average_before": load_before, "prompt": PROMPT, "settings": direct.settings,
        "requests": args.requests, "images_per_request": args.images, "max_seconds": args.max_seconds,
        "reps": args.reps, "overrides": args.overrides, "configs": {}, "rows": [], "runs": []}
    for name, variant in variants:
        overrides = [*args.overrides, *variant]
        config = serve_config(overrides)
        server = Server(overrides, threads, out.with_name(f"{out.stem}-{name}.log"))
        try:
            model = config.model_name or "livo-toy"
            for clients in args.clients:  # warm-up: every batch shape once, on both sides
                load_test(server, model, clients, clients, args.images, args.max_seconds, seed0=10**6)
                direct.run(min(clients, config.batch_size) * args.images, min(clients, config.batch_size) * args.images,
                           args.max_seconds, seed0=10**6)
            memory_after_warmup = server.memory()
            pairs: dict[int, list[dict[str, Any]]] = {c: [] for c in args.clients}
            for rep in range(args.reps):
                for clients in args.clients:
                    per_call = min(clients, config.batch_size) * args.images
                    order = ("direct", "server") if (rep + clients) % 2 == 0 else ("server", "direct")
                    pair: dict[str, Any] = {"config": name, "clients": clients, "rep": rep, "order": list(order)}
                    for side in order:
                        if side == "direct":
                            pair["direct"] = direct.run(args.requests * args.images, per_call, args.max_seconds)
                        else:
                            batches0, requests0 = server.batch_metrics()
                            pair["server"] = load_test(server, model, clients, args.requests, args.images,
                                                       args.max_seconds)
                            batches1, requests1 = server.batch_metrics()
                            pair["server"]["batches"] = batches1 - batches0
                            pair["server"]["requests_per_batch"] = ((requests1 - requests0) / (batches1 - batches0)
                                                                    if batches1 > batches0 else math.nan)
                    pair["load_average"] = os.getloadavg()
                    pairs[clients].append(pair)
                    result["runs"].append(pair)
                    print(f"# {name} c={clients} rep {rep}: server {pair['server']['images_per_s']:.2f} img/s, "
                          f"direct {pair['direct']['images_per_s']:.2f} img/s, {pair['server']['statuses']}",
                          file=sys.stderr, flush=True)
            memory = server.memory()
        finally:
            server.stop()
        result["configs"][name] = {"overrides": overrides, "batch_size": config.batch_size,
                                   "batch_window_ms": config.batch_window_ms, "queue_size": config.queue_size,
                                   "server_memory_kib_after_warmup": memory_after_warmup, "server_memory_kib": memory}
        for clients in args.clients:
            row = summarize_pair_runs(pairs[clients])
            row.update(config=name, clients=clients, batch_size=config.batch_size,
                       direct_batch=min(clients, config.batch_size) * args.images,
                       server_peak_rss_mib=memory["VmHWM"] / 1024)
            result["rows"].append(row)
    if args.overload_clients:
        overrides = [*args.overrides, f"queue_size={args.overload_queue}"]
        server = Server(overrides, threads, out.with_name(f"{out.stem}-overload.log"))
        try:
            load_test(server, "livo-toy", 1, 1, args.images, args.max_seconds, seed0=10**6)
            runs = [load_test(server, "livo-toy", args.overload_clients, args.overload_requests, args.images,
                              args.max_seconds) for _ in range(args.reps)]
            memory = server.memory()
        finally:
            server.stop()
        statuses: Counter = Counter()
        for run in runs:
            statuses.update(run["statuses"])
        row = {key: spread([r[key] for r in runs]) for key in ("requests_per_s", "p50_ms", "p95_ms", "images_per_s")}
        row.update(config=f"queue_size={args.overload_queue}", clients=args.overload_clients,
                   batch_size=serve_config(overrides).batch_size, statuses=dict(sorted(statuses.items())),
                   failed=failures(dict(statuses), overloaded_ok=True), server_peak_rss_mib=memory["VmHWM"] / 1024,
                   overhead=None, requests_per_batch=None, direct_images_per_s=None, runs=runs)
        result["overload"] = row
        result["rows"].append(row)
    result["load_average_after"] = os.getloadavg()
    result["direct_peak_rss_mib"] = proc_status(os.getpid())["VmHWM"] / 1024
    result["finished_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result["goal"] = {"max_overhead": GOAL, "verdict": goal_verdict(result["rows"])}
    result["best_config"] = best_config(result["rows"])
    return result


def summary_line(result: dict[str, Any]) -> dict[str, Any]:
    """The one JSON line every benchmark prints (issue 17): command, host, load averages, the table's rows without
    their raw runs, the best configuration and the goal's verdict; results.json keeps everything."""
    keep = ("command", "host", "load_average_before", "load_average_after", "settings", "best_config", "goal")
    rows = [{k: v for k, v in row.items() if k != "runs"} for row in result["rows"]]
    return {"benchmark": "serve", **{k: result[k] for k in keep}, "rows": rows}


def report(result: dict[str, Any]) -> str:
    host = result["host"]
    lines = [markdown_table(result["rows"]), "",
             f"{result['started_utc']} – {result['finished_utc']}, {host['cpu']} ({host['cpus']} CPUs), torch "
             f"{host['torch']} with {host['torch_threads']} threads; load average before "
             f"{' '.join(f'{x:.2f}' for x in result['load_average_before'])}, after "
             f"{' '.join(f'{x:.2f}' for x in result['load_average_after'])}; {result['reps']} repetitions, "
             f"medians (min–max); direct process peak RSS {result['direct_peak_rss_mib']:.0f} MiB.",
             f"best configuration: {result['best_config']}; goal overhead ≤ {GOAL:.0%} where batches fill: "
             + "; ".join(f"{name}: met at {v['met_at'] or 'no concurrency'}, missed at {v['missed_at'] or 'none'}"
                         for name, v in result["goal"]["verdict"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/serve.json", help="JSON results (default runs/bench/serve.json)")
    parser.add_argument("--reps", type=int, default=3, help="A/B repetitions per configuration and concurrency")
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16],
                        help="concurrent clients, comma-separated (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=64, help="requests per server run (images: x --images)")
    parser.add_argument("--images", type=int, default=1, help="num_images per request")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="bound on each run's duration")
    parser.add_argument("--variant", action="append", metavar="NAME=KEY=VALUE,...",
                        help="a server configuration (repeatable; default: 'default=' and 'batch16=batch_size=16')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting for every configuration and the direct calls (num_inference_steps, ...)")
    parser.add_argument("--overload-clients", type=int, default=16, help="clients of the overload run (0: none)")
    parser.add_argument("--overload-queue", type=int, default=4, help="queue_size of the overload run")
    parser.add_argument("--overload-requests", type=int, default=64, help="requests (503s included) per overload run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, both sides (default: torch's own, as `livo serve`)")
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        run_server(args.port, args.threads, args.overrides)
        return 0
    result = benchmark(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(report(result))
    print(f"\nwrote {out}")
    print(json.dumps(summary_line(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
