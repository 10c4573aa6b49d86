"""`livo.serving.batching.MicroBatcher` in-process: batches form as configured, a full queue refuses at once, a
failure reaches only the requests it belongs to."""

from __future__ import annotations

import asyncio
import time

import pytest

from livo.serving.batching import MicroBatcher
from livo.serving.errors import Overloaded


def run(coro):
    return asyncio.run(coro)


def test_concurrent_items_are_served_in_batches_of_at_most_batch_size() -> None:
    calls: list[list[int]] = []

    def work(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.05)
        return [i * 10 for i in items]

    async def main():
        batcher = MicroBatcher(work, queue_size=20, batch_size=3, window_s=0.2)
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        finally:
            batcher.close()

    assert run(main()) == [i * 10 for i in range(7)]
    assert [len(c) for c in calls] == [3, 3, 1] and sorted(sum(calls, [])) == list(range(7))


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    def work(items: list[int]) -> list[int]:
        time.sleep(0.3)
        return items

    async def main():
        batcher = MicroBatcher(work, queue_size=1, batch_size=1, window_s=0.0)
        try:
            first = asyncio.ensure_future(batcher.submit(1))
            await asyncio.sleep(0.05)  # the worker holds 1
            second = asyncio.ensure_future(batcher.submit(2))  # waits in the queue
            await asyncio.sleep(0)
            started = time.monotonic()
            with pytest.raises(Overloaded) as refused:
                await batcher.submit(3)
            assert time.monotonic() - started < 0.1 and refused.value.retry_after >= 1
            assert refused.value.http_status == 503
            return await first, await second
        finally:
            batcher.close()

    assert run(main()) == (1, 2)


def test_an_item_failure_reaches_only_its_request_and_a_batch_failure_every_one() -> None:
    def work(items: list[int]) -> list:
        if 99 in items:
            raise RuntimeError("batch broke")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    async def main():
        batcher = MicroBatcher(work, queue_size=8, batch_size=4, window_s=0.1)
        try:
            mixed = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
            broken = await asyncio.gather(batcher.submit(2), batcher.submit(99), return_exceptions=True)
            again = await batcher.submit(3)
            return mixed, broken, again
        finally:
            batcher.close()

    mixed, broken, again = run(main())
    assert mixed[0] == 1 and isinstance(mixed[1], ValueError)
    assert all(isinstance(e, RuntimeError) for e in broken)
    assert again == 3
