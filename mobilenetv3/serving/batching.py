"""Dynamic batching: requests that arrive together run through the model as one batch.

A model call costs less per image the more images it takes (on CPU too: fewer kernel launches, better use of
the cache and of every core), so concurrent requests are gathered: the first one waits at most max_wait for
others, up to max_batch, and the model runs while the next batch gathers. Nothing here knows HTTP or models.
"""
import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence


class Batcher:
    """Runs `run_batch(items) -> results` (blocking; one call at a time, in a thread of its own so the event
    loop keeps serving) on the items `submit`ted from the event loop, `max_batch` at most per call, waiting
    up to `max_wait` seconds after the oldest item arrived for more to join it, but only while
    `on_the_way()` says more are coming (requests still being read and decoded; None: always): a lone
    request does not wait for company that does not exist. start() and close() from the event loop that
    submits; close() finishes what was submitted before it returns."""

    def __init__(self, run_batch: Callable[[List], Sequence], max_batch: int, max_wait: float,
                 on_the_way: Optional[Callable[[], int]] = None):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and {max_wait}")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait
        self.on_the_way = on_the_way or (lambda: 1)
        self.batch_sizes = collections.Counter()  # how many calls ran with each batch size
        self._waiting = collections.deque()  # (arrival time, item, future)
        self._arrived = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task = None

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def submit(self, item):
        """The result of `run_batch` for `item`, or the exception it raised."""
        if self._closing:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((loop.time(), item, future))
        self._arrived.set()
        return await future

    async def close(self):
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown()

    async def _run_forever(self):
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            if not self._waiting:
                if self._closing:
                    return
                self._arrived.clear()
                continue
            deadline = self._waiting[0][0] + self.max_wait
            while (len(self._waiting) < self.max_batch and not self._closing and loop.time() < deadline
                   and self.on_the_way() > 0):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                    break
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            await self._run(loop, batch)

    async def _run(self, loop, batch):
        batch = [entry for entry in batch if not entry[2].cancelled()]  # their clients went away
        if not batch:
            return
        self.batch_sizes[len(batch)] += 1
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [item for _, item, _ in batch])
        except Exception as err:  # every request of the batch fails with it; the next batch may not
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, _, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
