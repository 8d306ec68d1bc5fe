"""Batches for the segmenter: calls grouped into one run, waiting for partners only when told.

Serve's ``@serve.batch`` waits the same time for every batch to fill. On a CPU that is a bad
trade: a lone client would pay the wait on every image, while the ingress knows when another
image is coming (other requests of its replica hold pipeline slots:
:meth:`Slot.others <pipeline.admission.Slot.others>`). So each call says whether more are
coming, and a batch waits up to ``partner_wait_s`` for them only while its newest call said so;
``wait_s`` is the plain wait of ``@serve.batch``, for many ingress replicas feeding one GPU.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Call(Generic[T]):
    item: T
    more_coming: bool
    future: asyncio.Future


class Batcher(Generic[T, R]):
    """Runs ``run`` on batches of the items submitted, one batch at a time.

    A batch is formed as soon as the previous one is done: it takes what is waiting, up to
    ``max_size``, and waits for more while it is not full, for at most ``wait_s`` from when it
    began to form, or ``partner_wait_s`` while the newest call said more are coming.

    Args:
        run: Coroutine from a batch's items to their results, in order.
        max_size: Most items in a batch.
        wait_s: How long a batch waits to fill in any case.
        partner_wait_s: How long it waits while the newest call said more are coming.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        max_size: int,
        wait_s: float = 0.0,
        partner_wait_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.run = run
        self.max_size = max_size
        self.wait_s = wait_s
        self.partner_wait_s = partner_wait_s
        self.clock = clock
        self._pending: deque[_Call[T]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def submit(self, item: T, more_coming: bool = False) -> R:
        """The result for ``item``, once its batch has run (its exception if the batch failed).

        Args:
            item: What ``run`` takes.
            more_coming: More items are on their way: the batch may wait a moment for them.
        """
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())
        call: _Call[T] = _Call(item, more_coming, asyncio.get_running_loop().create_future())
        self._pending.append(call)
        self._arrived.set()
        return await call.future

    def _live(self) -> int:
        """Drop the calls cancelled while they waited; the number left."""
        if any(c.future.done() for c in self._pending):
            self._pending = deque(c for c in self._pending if not c.future.done())
        return len(self._pending)

    async def _fill(self) -> None:
        """Wait while the batch being formed may still grow."""
        opened = self.clock()
        while 0 < self._live() < self.max_size:
            deadline = opened + self.wait_s
            if self._pending[-1].more_coming:
                deadline = max(deadline, opened + self.partner_wait_s)
            left = deadline - self.clock()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _loop(self) -> None:
        while True:
            if not self._live():
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill()
            batch = [self._pending.popleft() for _ in range(min(self.max_size, self._live()))]
            if not batch:
                continue
            try:
                results = await self.run([c.item for c in batch])
            except BaseException as exc:  # the batch's callers hear of it, whatever it was
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("the batch was cancelled"))
                if not isinstance(exc, Exception):
                    raise  # the loop itself is cancelled (the replica stops); the next call starts another
                continue
            for call, result in zip(batch, results):
                if not call.future.done():
                    call.future.set_result(result)
