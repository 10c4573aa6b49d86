"""The serving load test's reporting (benchmarks/serve.py) on fixed numbers, and a tiny real run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("serve_benchmark", REPO / "benchmarks" / "serve.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("serve_benchmark", bench)
SPEC.loader.exec_module(bench)


def test_percentile_interpolates_between_ranks_like_numpy():
    values = [float(v) for v in range(10, 0, -1)]  # order does not matter
    assert bench.percentile(values, 50) == pytest.approx(5.5)
    assert bench.percentile(values, 95) == pytest.approx(9.55)
    assert bench.percentile(values, 0) == 1.0 and bench.percentile(values, 100) == 10.0
    assert bench.percentile([0.25], 95) == 0.25
    assert math.isnan(bench.percentile([], 50))


def test_spread_overhead_and_failures():
    assert bench.spread([3.0, 1.0, 2.0, math.nan]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert bench.overhead(8.5, 10.0) == pytest.approx(0.15)
    assert bench.overhead(11.0, 10.0) == pytest.approx(-0.1)  # the server was faster
    assert math.isnan(bench.overhead(1.0, 0.0))
    statuses = {"200": 10, "503": 3, "timeout": 1, "503-without-Retry-After": 1}
    assert bench.failures(statuses, overloaded_ok=False) == 5
    assert bench.failures(statuses, overloaded_ok=True) == 2


def test_run_stats_counts_only_successful_requests():
    stats = bench.run_stats([0.1, 0.2, 0.3, 0.4], images=8, statuses={"200": 4, "503": 2}, wall_s=2.0)
    assert stats["requests_per_s"] == 2.0 and stats["images_per_s"] == 4.0
    assert stats["p50_ms"] == pytest.approx(250.0) and stats["p95_ms"] == pytest.approx(385.0)


def _server(images_per_s, rpb=4.0, statuses=None):
    return {"requests_per_s": images_per_s, "images_per_s": images_per_s, "p50_ms": 400.0, "p95_ms": 500.0,
            "requests_per_batch": rpb, "statuses": statuses or {"200": 32}}


def _rows():
    runs = [{"server": _server(s), "direct": {"images_per_s": d}} for s, d in [(4.0, 5.0), (4.5, 5.0), (4.2, 4.0)]]
    row = bench.summarize_pair_runs(runs)
    row.update(config="default", clients=4, batch_size=4, direct_batch=4, server_peak_rss_mib=700.4)
    fast = bench.summarize_pair_runs([{"server": _server(9.0, 16.0), "direct": {"images_per_s": 9.5}}])
    fast.update(config="batch16", clients=16, batch_size=16, direct_batch=16, server_peak_rss_mib=800.0)
    slow = bench.summarize_pair_runs([{"server": _server(4.0), "direct": {"images_per_s": 5.0}}])
    slow.update(config="default", clients=16, batch_size=4, direct_batch=4, server_peak_rss_mib=700.4)
    single = bench.summarize_pair_runs([{"server": _server(1.0, 1.0), "direct": {"images_per_s": 2.0}}])
    single.update(config="default", clients=1, batch_size=4, direct_batch=1, server_peak_rss_mib=700.4)
    overload = {"config": "queue_size=4", "clients": 16, "batch_size": 4, "overhead": None,
                "requests_per_batch": None, "direct_images_per_s": None, "server_peak_rss_mib": 690.0,
                "statuses": {"200": 40, "503": 24}, **{k: bench.spread([1.0]) for k in
                                                      ("requests_per_s", "p50_ms", "p95_ms", "images_per_s")}}
    return row, [single, row, slow, fast, overload]


def test_pair_summary_uses_medians_and_paired_ranges():
    row, _ = _rows()
    assert row["images_per_s"] == {"median": 4.2, "min": 4.0, "max": 4.5}
    assert row["direct_images_per_s"]["median"] == 5.0
    assert row["overhead"]["value"] == pytest.approx(1 - 4.2 / 5.0)
    assert row["overhead"]["paired_min"] == pytest.approx(1 - 4.2 / 4.0)
    assert row["overhead"]["paired_max"] == pytest.approx(0.2)
    assert row["statuses"] == {"200": 96} and row["failed"] == 0


def test_markdown_table_goal_and_best_config():
    _, rows = _rows()
    table = bench.markdown_table(rows).splitlines()
    assert table[0].startswith("| config | clients | requests/s | p50 ms | p95 ms | images/s |")
    assert len(table) == 2 + len(rows)
    assert table[3] == ("| default | 4 | 4.20 (4.00–4.50) | 400 | 500 | 4.20 (4.00–4.50) | "
                        "5.00 (4.00–5.00) (4) | 16 % (-5…20) | 4.0 | 200×96 | 700 MiB |")
    assert table[-1].startswith("| queue_size=4 | 16 | 1.00 |")
    assert table[-1].endswith("| – | – | – | 200×40 503×24 | 690 MiB |")
    verdict = bench.goal_verdict(rows)
    assert verdict == {"default": {"met_at": [], "missed_at": [4, 16]},
                       "batch16": {"met_at": [16], "missed_at": []}}
    assert bench.best_config(rows) == "batch16"
    assert bench.parse_variant("batch16=batch_size=16,batch_window_ms=20") == (
        "batch16", ["batch_size=16", "batch_window_ms=20"])
    assert bench.parse_variant("default=") == ("default", [])


@pytest.mark.slow  # 18 s on 2 idle CPU cores, 26 s while CI ran: three processes load the toy model
def test_a_tiny_real_run_writes_json_and_the_table(tmp_path: Path):
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve.py"), "--reps", "1", "--requests", "4", "--clients", "1,2",
         "--variant", "default=", "--set", "num_inference_steps=1", "--max-seconds", "20", "--overload-clients", "4",
         "--overload-queue", "1", "--overload-requests", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["config"], r["clients"]) for r in result["rows"]] == [("default", 1), ("default", 2),
                                                                     ("queue_size=1", 4)]
    for row in result["rows"][:2]:
        assert row["statuses"] == {"200": 4} and row["failed"] == 0
        assert row["images_per_s"]["median"] > 0 and row["direct_images_per_s"]["median"] > 0
        assert row["server_peak_rss_mib"] > 50
    overload = result["overload"]
    assert overload["failed"] == 0 and overload["statuses"].get("200", 0) > 0  # 503s (with Retry-After) allowed
    assert result["settings"]["num_inference_steps"] == 1 and result["host"]["torch_threads"] >= 1
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    assert "| default | 1 |" in proc.stdout and "| queue_size=1 | 4 |" in proc.stdout
    line = json.loads(proc.stdout.strip().splitlines()[-1])  # the one JSON line, last
    assert line["benchmark"] == "serve" and line["command"] == result["command"]
    assert line["best_config"] == result["best_config"] and len(line["load_average_after"]) == 3
    assert [row["config"] for row in line["rows"]] == ["default", "default", "queue_size=1"]
    assert all("runs" not in row for row in line["rows"])
