"""Dynamic micro-batching: the images of concurrent requests go through the model together.

Off by default (`--max-batch-size 1`). With `--max-batch-size N --max-latency-ms T`, every request's
images are queued and one batch of at most N images runs at a time, on one thread. A batch waits at
most T ms for more images, and only while other requests are still being decoded (they are known to
be on their way): a lone request never waits, so latency at concurrency 1 is unchanged. A request
with more than N images runs in a batch of its own. It needs a model exported with `--dynamic`.
The gain is the model's own: one call of 8 images costs less per image than 8 single calls. On
this project's 2-core CPU that did not show through the server (docs/benchmarks.md#micro-batching),
hence off by default.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

import numpy as np


class MicroBatcher:
    """Queue of [n, ...] inputs; `run` sees their concatenation, each caller gets its own rows back.

    Runs in one event loop: `submit` and `coming` are called from coroutines of that loop.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_s: float,
        executor: Executor,
        on_wait: Callable[[float], None] | None = None,
    ):
        """`on_wait(seconds)` is called for each request when its batch starts, with the time it waited in the queue."""
        if max_batch_size < 1 or max_latency_s < 0:
            raise ValueError(f"max_batch_size {max_batch_size} must be >= 1 and max_latency_s {max_latency_s} >= 0")
        self._run, self._executor, self._on_wait = run, executor, on_wait
        self.max_batch_size, self.max_latency_s = int(max_batch_size), float(max_latency_s)
        self._queue: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()  # input, its future, arrival time
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: list[tuple[np.ndarray, asyncio.Future, float]] = []  # the batch in the model now
        self.coming_count = 0  # requests being decoded that will submit images
        self.batches: list[int] = []  # sizes of the last batches run (tests, debugging); bounded

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Around a request's decoding: while it lasts, a batch may wait (up to max_latency) for it."""
        self.coming_count += 1
        try:
            yield
        finally:
            self.coming_count -= 1
            if self._wake is not None:
                self._wake.set()  # a batch waiting for this request need not wait any more if it failed

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Run `x` ([n, ...]) in the next batch; returns `run`'s rows for it."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve(), name="kubedistill-batcher")
        fut = loop.create_future()
        self._queue.append((x, fut, loop.time()))
        self._wake.set()
        return await fut

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        """The next batch: whole requests in arrival order, up to max_batch_size images (at least one request)."""
        items, n = [], 0
        while self._queue:
            x, fut, _ = self._queue[0]
            if fut.done():  # its request was cancelled (client gone)
                self._queue.popleft()
                continue
            if items and n + len(x) > self.max_batch_size:
                break
            items.append(self._queue.popleft())
            n += len(x)
        return items

    def _queued(self) -> int:
        return sum(len(x) for x, fut, _ in self._queue if not fut.done())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                deadline = self._queue[0][2] + self.max_latency_s  # the oldest request waits at most max_latency
                while self._queued() < self.max_batch_size and self.coming_count > 0 and loop.time() < deadline:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                items = self._take()
                if not items:
                    continue
                self.batches = self.batches[-99:] + [sum(len(x) for x, _, _ in items)]
                self._running = items
                if self._on_wait is not None:
                    now = loop.time()
                    for _, _, arrived in items:
                        self._on_wait(now - arrived)
                try:
                    batch = np.concatenate([x for x, _, _ in items]) if len(items) > 1 else items[0][0]
                    raw = await loop.run_in_executor(self._executor, self._run, batch)
                except (
                    Exception
                ) as e:  # the model (or joining the inputs) failed: every request of this batch gets the error
                    self._running = []
                    for _, fut, _ in items:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self._running, start = [], 0
                for x, fut, _ in items:
                    if not fut.done():
                        fut.set_result(raw[start : start + len(x)])
                    start += len(x)

    async def close(self) -> None:
        """Stop the batching task; requests still queued or running get an error (none are left after a
        graceful drain). A later `submit` (the app started again, in a new event loop) starts afresh."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut, _ in [*self._running, *self._queue]:
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()
        self._running, self._task, self._wake = [], None, None
