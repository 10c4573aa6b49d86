"""A bounded queue with micro-batching: many concurrent requests, one worker, one generator call per batch.

`MicroBatcher.submit(item)` puts the item on a queue of at most `queue_size` waiting items and awaits its result;
when the queue is full it raises `Overloaded` at once (HTTP 503 with Retry-After), so memory stays bounded however
many clients call. A single worker task takes the first waiting item, then keeps taking items for up to `window_s`
seconds or until it holds `batch_size` of them, and runs `run_batch(items)` in one dedicated thread (the model is
never called from two threads at once). `run_batch` returns one result per item, or an exception instance for an item
that failed alone; an exception it raises fails every item of the batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from livo.serving.errors import Overloaded


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], *, queue_size: int, batch_size: int,
                 window_s: float, on_batch: Callable[[int, float], None] | None = None):
        if queue_size < 1 or batch_size < 1 or window_s < 0:
            raise ValueError("queue_size and batch_size must be >= 1 and window_s >= 0")
        self.run_batch = run_batch
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.window_s = window_s
        self.on_batch = on_batch  # called with (items in the batch, seconds it took)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="livo-generator")
        self._batch_seconds = 1.0  # running estimate of one batch's duration (for Retry-After)
        self.batches = 0

    def depth(self) -> int:
        """Items waiting (not counting the batch the worker runs)."""
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the batches ahead of it at the observed batch duration."""
        batches_ahead = 1 + math.ceil(self.depth() / self.batch_size)
        return max(1, math.ceil(self._batch_seconds * batches_ahead))

    def _ensure_worker(self) -> asyncio.Queue:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue(maxsize=self.queue_size)
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="livo-batcher")
        return self._queue

    async def submit(self, item: Any) -> Any:
        queue = self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        try:
            queue.put_nowait((item, future))
        except asyncio.QueueFull:
            wait = self.retry_after()
            raise Overloaded(f"the server is busy ({self.queue_size} requests are waiting); retry in {wait} s",
                             retry_after=wait) from None
        return await future

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[Any, asyncio.Future]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while len(batch) < self.batch_size:
            remaining = deadline - loop.time()
            try:
                batch.append(queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, future) for item, future in await self._collect(queue) if not future.done()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the generator returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # the whole batch failed: every waiting request gets the error
                results = [exc] * len(batch)
            elapsed = time.monotonic() - started
            self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * elapsed if self.batches else elapsed
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(len(batch), elapsed)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
