"""Admission to the pipeline: queue while the wait is short, refuse when it is not, fairly.

One :class:`FairAdmission` lives in each ingress replica. It lets ``slots`` requests into the
pipeline at once and queues the rest, one queue per organization, served round-robin: when a
slot frees, the next organization in turn sends its oldest request. An organization that
floods therefore gets one slot in turn like any other, and a polite organization's request
waits behind at most one request of each other organization that is waiting.

A request is refused (503 ``overloaded``) only when its *expected* wait exceeds
``max_wait_s``. The expected wait is its place in the round-robin order divided by the rate at
which this replica's pipeline finishes requests, measured: by Little's law a full pipeline of
``slots`` requests that each take ``W`` seconds finishes ``slots / W`` requests a second, and
``W`` is a moving average of the time admitted requests spent in the pipeline, quick to follow
a slowdown. The refusal's
``Retry-After`` is when the queue is expected to have drained enough to admit it.

:class:`RefusalPacer` keeps refusals cheap when clients ignore ``Retry-After``: refusals up to
a budget per second are answered at once; beyond it each is answered after a short delay, so
that a client retrying in a tight loop costs the service a bounded number of requests a second
instead of all of its CPU.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable

# Weight of the newest pipeline time in the moving average: a slower pipeline counts at once
# (an estimate that lags would queue more than the wait limit allows), a faster one gradually.
_EWMA_UP = 0.5
_EWMA_DOWN = 0.1
# A held refusal waits between this share of the delay and all of it: long enough that a client
# retrying at once comes back about once a delay, spread so that held clients do not synchronise.
HELD_SHARE_MIN = 0.8


class Overloaded(Exception):
    """The expected wait is longer than the limit; ``retry_after_s`` says when to come back."""

    def __init__(self, expected_wait_s: float, retry_after_s: int) -> None:
        super().__init__(f"expected wait {expected_wait_s:.1f} s")
        self.expected_wait_s = expected_wait_s
        self.retry_after_s = retry_after_s


class FairAdmission:
    """Pipeline slots of one ingress replica, with a fair queue in front of them.

    Args:
        slots: Requests in the pipeline at once.
        max_wait_s: Longest expected queueing time accepted; longer is refused.
        initial_pipeline_s: The pipeline time assumed before any request has finished.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, slots: int, max_wait_s: float, initial_pipeline_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self.max_wait_s = max_wait_s
        self.pipeline_s = initial_pipeline_s
        self.clock = clock
        self.inflight = 0
        self._queues: dict[str, deque[asyncio.Future]] = {}  # waiters per organization
        self._turns: deque[str] = deque()  # organizations with waiters, in round-robin order

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(q) for q in self._queues.values())

    def rate(self) -> float:
        """Requests per second this replica's full pipeline finishes (measured)."""
        return self.slots / max(self.pipeline_s, 1e-3)

    def expected_wait(self, org: str) -> float:
        """Seconds a new request of ``org`` would wait for a slot (0 when one is free)."""
        if self.inflight < self.slots and not self._turns:
            return 0.0
        own = len(self._queues.get(org, ()))
        # Round-robin serves every waiting organization once per round: the new request goes in
        # round own+1, behind up to own+1 requests of each other organization.
        ahead = own + 1 + sum(min(len(q), own + 1) for name, q in self._queues.items() if name != org)
        return ahead / self.rate()

    async def acquire(self, org: str) -> float:
        """Wait for a slot for ``org``.

        Returns:
            The monotonic time the slot was granted; pass it to :meth:`release`.

        Raises:
            Overloaded: When the expected wait is over ``max_wait_s``; nothing is queued.
        """
        if self.inflight < self.slots and not self._turns:
            self.inflight += 1
            return self.clock()
        wait = self.expected_wait(org)
        if wait > self.max_wait_s:
            raise Overloaded(wait, max(1, math.ceil(wait - self.max_wait_s)))
        waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(org, deque())
        if not queue:
            self._turns.append(org)
        queue.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), measure=False)  # granted as it was cancelled: pass it on
            else:
                self._forget(org, waiter)
            raise

    def release(self, granted_at: float, measure: bool = True) -> None:
        """Give a slot back and hand it to the next organization in turn.

        Args:
            granted_at: What :meth:`acquire` returned.
            measure: Count the time held into the pipeline-time average.
        """
        now = self.clock()
        if measure:
            held = now - granted_at
            self.pipeline_s += (_EWMA_UP if held > self.pipeline_s else _EWMA_DOWN) * (held - self.pipeline_s)
        while self._turns:
            org = self._turns.popleft()
            queue = self._queues[org]
            waiter = queue.popleft()
            if queue:
                self._turns.append(org)
            else:
                del self._queues[org]
            if not waiter.done():
                waiter.set_result(now)  # the slot passes on: inflight unchanged
                return
        self.inflight -= 1

    def _forget(self, org: str, waiter: asyncio.Future) -> None:
        queue = self._queues.get(org)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._queues[org]
            self._turns.remove(org)


class RefusalPacer:
    """Answers refusals at once up to a budget per second, later beyond it.

    A refusal costs the HTTP proxy and the ingress a few milliseconds of CPU. Clients that honour
    ``Retry-After`` come back later and stay within the budget; clients that retry at once would
    spend the CPU the admitted requests need. Holding their refusals for ``delay_s`` (a
    coroutine sleep, no CPU) caps how often each of them can come back.

    Args:
        per_s: Refusals a second answered at once (also the burst).
        delay_s: The most a paced refusal is held; it is held between ``HELD_SHARE_MIN`` of it and
            all of it (spread so that held clients do not come back in step).
        clock: Monotonic seconds.
    """

    def __init__(self, per_s: float, delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.delay_s = delay_s
        self.clock = clock
        self._tokens = per_s
        self._updated = clock()

    def delay(self, per_s: float | None = None) -> float:
        """Seconds to hold the refusal being made now (0 within the budget).

        Args:
            per_s: A new budget, e.g. from the measured service rate.
        """
        if per_s is not None:
            self.per_s = per_s
        now = self.clock()
        self._tokens = min(self.per_s, self._tokens + (now - self._updated) * self.per_s)
        self._updated = now
        if self._tokens >= 1 or self.delay_s <= 0:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return self.delay_s * random.uniform(HELD_SHARE_MIN, 1.0)
