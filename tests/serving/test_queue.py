"""The bounded queue and micro-batching of `livo serve`, on a real server process whose generator sleeps per batch
(tests/serving/tiny_server.py --slow): overload gets 503 + Retry-After at once, nothing hangs, concurrent requests
share generator calls."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_client import call, decode_png, delta, metrics, running_server  # noqa: E402

ROUTE = "/v1/models/slow:predict"


def burst(base: str, count: int, timeout: float = 30.0):
    """`count` requests at once; (answers, seconds until the last came back)."""
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda i: call(base + ROUTE, {"prompt": f"prompt {i}", "seed": i}, timeout=timeout),
                                range(count)))
    return answers, time.monotonic() - started


def test_a_full_queue_answers_503_with_retry_after_and_nothing_hangs(tmp_path: Path) -> None:
    args = ["--slow", "1.0", "--set", "queue_size=1", "--set", "batch_size=2", "--set", "batch_window_ms=200"]
    with running_server(args, tmp_path / "server.log") as base:
        before = metrics(base)
        answers, seconds = burst(base, 8)
        codes = sorted(a.status for a in answers)
        assert set(codes) <= {200, 503}, codes
        refused = [a for a in answers if a.status == 503]
        served = [a for a in answers if a.status == 200]
        # the worker holds at most one batch (2) and the queue one more: the rest is refused at once
        assert len(served) <= 3 and len(refused) >= 5, codes
        for answer in refused:
            assert int(answer.headers["retry-after"]) >= 1
            assert "\n" not in answer.body.decode().strip() and "busy" in json.loads(answer.body)["error"]
        for answer in served:
            assert decode_png(answer.json()["predictions"][0]["images"][0]).size == (8, 8)
        assert seconds < 10, seconds  # two batches of 1 s at most; nobody waited for a slot
        after = metrics(base)
        assert delta(before, after, "livo_serve_rejected_total") == len(refused)
        assert delta(before, after, 'livo_serve_requests_total{code="503",route="v1"}') == len(refused)
        # and it keeps serving
        assert call(base + ROUTE, {"prompt": "again"}).status == 200
        assert call(base + "/v2/health/ready").status == 200


def test_concurrent_requests_share_generator_calls(tmp_path: Path) -> None:
    args = ["--slow", "0.5", "--set", "queue_size=16", "--set", "batch_size=4", "--set", "batch_window_ms=300"]
    with running_server(args, tmp_path / "server.log") as base:
        before = metrics(base)
        answers, _ = burst(base, 8)
        assert [a.status for a in answers] == [200] * 8
        # each answer is its own request's: prompt and seed come back in place
        for i, answer in enumerate(answers):
            prediction = answer.json()["predictions"][0]
            assert (prediction["prompt"], prediction["seeds"]) == (f"prompt {i}", [i])
        after = metrics(base)
        batches = delta(before, after, "livo_serve_batches_total")
        assert delta(before, after, "livo_serve_batch_requests_sum") == 8
        assert 2 <= batches < 8, batches  # at most 4 per batch, and fewer generator calls than requests


def test_a_failing_generator_gives_a_one_line_500_and_the_server_goes_on(tmp_path: Path) -> None:
    with running_server(["--slow", "0"], tmp_path / "server.log") as base:
        answer = call(base + ROUTE, {"prompt": "fail"})
        assert answer.status == 500
        assert "\n" not in answer.body.decode().strip()
        assert json.loads(answer.body)["error"] == ("generation failed: RuntimeError: the generator broke; "
                                                    "on two lines")
        assert call(base + ROUTE, {"prompt": "fine"}).status == 200


@pytest.mark.parametrize("bad", [{"queue_size": 0}, {"batch_size": 0}, {"batch_window_ms": -1}, {"port": 70000},
                                 {"max_images_per_request": 0}, {"queues": 3}])
def test_bad_settings_are_refused_naming_the_field(bad: dict) -> None:
    from livo.config import load_config
    from livo.errors import ConfigError
    from livo.serving.config import ServeConfig

    key, value = next(iter(bad.items()))
    with pytest.raises(ConfigError, match=key):
        load_config(ServeConfig, None, [f"{key}={value}"])
