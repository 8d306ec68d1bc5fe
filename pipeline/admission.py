"""Admission to the pipeline: queue while the wait is short, refuse when it is not, fairly.

One :class:`FairAdmission` lives in each ingress replica. It lets ``slots`` requests into the
pipeline at once and queues the rest, served by start-time fair queueing (SFQ, Goyal, Vin and
Cheng 1996) over organizations with equal weights: every request gets a virtual start tag, the
later of the virtual time now (the tag of the request last let in) and the tag its
organization's previous request finishes at (its start + 1); a freed slot goes to the waiting
request with the smallest tag, the earliest arrival among equals. An organization that floods
runs its tags ahead of the virtual time, one per request it has queued; an organization that
sends one request at a time gets the virtual time now as its tag and goes next: it waits only
for a slot to free, never behind the flood's queue. Alone on the service, an organization
still uses every slot: the policy wastes no capacity. A request holds its slot until the model
is done with it and then hands it on (:class:`Slot`), so that the next image's forward does not
wait for this one's cutout to be stored.

An organization that has the replica to itself (no request of another one holds a slot or
waits for one, or did within ``ALONE_AFTER_S``) may use ``alone_slots`` instead of ``slots``:
on a CPU its images then reach the segmenter together and run side by side, one thread each,
which costs less CPU per image than one image on every thread after another (a single-thread
forward never waits at a barrier for a core that another process took). As soon as another
organization's request arrives, no request is let in past ``slots`` again: that request goes
next (its tag) and waits only for the slots already taken to free. The time a slot is held
side by side is measured apart (``alone_pipeline_s``): images side by side each take longer,
and a queue estimated on the one while the other applies would wait past the limit.

A request is refused (503 ``overloaded``) only when its *expected* wait exceeds ``max_wait_s``
(while the service is overloaded, taken with a margin for the estimate's error). The expected wait is the number of requests that would go before it, plus one,
divided by the rate at which this replica's pipeline finishes requests, measured: by Little's
law a full pipeline of ``slots`` requests that each take ``W`` seconds finishes ``slots / W``
requests a second, and ``W`` is a moving average of the time admitted requests spent in the
pipeline, quick to follow a slowdown. The estimate is then calibrated: the waits that queued
requests really had, against what was expected for them when they queued (a decayed ratio of
their sums), lengthen it, so that a pipeline slower between requests than inside them (the CPU
taken by a storm of refusals, the hand-over of a slot) does not let requests wait past the
limit. Calibrated, the estimate is right on average, but a wait is the sum of the pipeline
times ahead of it and runs past it now and then (when a storm of refusals begins, the pipeline
slows before its average shows it): while requests are being refused (the queue is at the
limit), a request is let in only while its expected wait, lengthened by ``WAIT_MARGIN``, is
within the limit, so that the waits' tail, not only their average, stays under it. Each time a slot frees while requests are being refused on arrival,
the requests still queued are estimated again from the new measure: one that the pipeline, now slower, would keep past the limit is refused
after all if it has waited less than ``SHED_WINDOW_S`` (so that its refusal still comes within
a second). That is for the start of a storm: the queue fills at once on the pipeline time
measured before it, and the pipeline then slows under the refusals' CPU. The refusal's
``Retry-After`` is when the queue is expected to have drained enough to admit it.

:class:`RefusalPacer` keeps refusals cheap when clients ignore ``Retry-After``: refusals up to
a budget per second are answered at once; beyond it each is answered after a short delay, so
that a client retrying in a tight loop costs the service a bounded number of requests a second
instead of all of its CPU.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# Weight of the newest pipeline time in the moving average: a slower pipeline counts at once
# (an estimate that lags would queue more than the wait limit allows), a faster one gradually.
_EWMA_UP = 0.5
_EWMA_DOWN = 0.3
# The calibration of expected waits: each finished wait's share of the sums decays by this
# factor per wait (about the last ten waits count), long waits weigh more than short ones, and
# the factor stays within these bounds: it only ever lengthens the estimate (waits shorter than
# expected are the rule while the queue is short, as the request in a slot is half done on
# average: lowering the estimate for them let a storm's first requests wait 6.5 s against a
# limit of 5), and never more than twofold.
_CALIBRATION_DECAY = 0.9
_CALIBRATION_BOUNDS = (1.0, 2.0)
# Admission lengthens the calibrated estimate by this factor before comparing it with the limit.
# In a storm of 32 clients retrying at once on 2 cores, waits of 2.5 s or more ran at 0.97x
# their calibrated estimate at the median, 1.16x at the 95th percentile and 1.23x at most (the
# longest ones queued as the storm began, on the unloaded pipeline time): with 1.2 the longest
# wait stays within about 3% of the limit, and the queue is still seconds deep, so the pipeline
# never idles for it.
WAIT_MARGIN = 1.2
# The margin applies, and queued requests may be refused (SHED_WINDOW_S), only while the service
# is overloaded: a request was refused on arrival within this many seconds. Below that the
# queue is short of the limit, and a margin would only refuse modest concurrency whenever one
# slow request lengthens the measure for a moment (eight clients back to back got 503s with it).
OVERLOAD_S = 1.0
# A queued request that the re-estimate made as each slot frees puts past the limit is refused
# while it has waited less than this: its refusal then still comes within a second. At the start
# of a storm of retrying clients on 2 cores the first slot freed 0.6 s after the queue had
# filled on the pipeline time measured before, and the pipeline ran at 0.55 s a request against
# the 0.30 s measured: the back half of that queue would have waited 7 s under a 5 s limit.
SHED_WINDOW_S = 0.8
# Waits expected shorter than this share of a pipeline time do not calibrate: a slot that frees
# a little sooner or later than average swamps them.
_CALIBRATION_MIN_SLOTS = 1.0
# Only waits expected at least this share of the longest that is let in now (the limit over the
# margin and the calibration) calibrate: the estimate matters near the limit, and short queues
# behind the odd large image would otherwise lengthen every estimate. Relative to what is let
# in, not to the limit itself, so that a raised calibration still gets waits to learn from.
_CALIBRATION_MIN_SHARE = 0.5
# The pipeline time assumed until one is measured: short, so that a burst at a cold service
# queues (at most max_wait_s / this) rather than being refused on a guess; the first request
# that finishes replaces it.
UNMEASURED_PIPELINE_S = 0.1
# An organization whose request held or waited for a slot less than this long ago still keeps
# another one from having the replica to itself: one that sends its requests one after the
# other is not gone between them, and so never has to wait for the alone slots to free.
ALONE_AFTER_S = 1.0
# A held refusal waits between this share of the delay and all of it: long enough that a client
# retrying at once comes back about once a delay, spread so that held clients do not synchronise.
HELD_SHARE_MIN = 0.8


def _follow(average: float | None, held: float) -> float:
    """The moving average of pipeline times with ``held`` in (it, if nothing was measured)."""
    if average is None:
        return held
    return average + (_EWMA_UP if held > average else _EWMA_DOWN) * (held - average)


class Overloaded(Exception):
    """The expected wait is longer than the limit; ``retry_after_s`` says when to come back."""

    def __init__(self, expected_wait_s: float, retry_after_s: int) -> None:
        super().__init__(f"expected wait {expected_wait_s:.1f} s")
        self.expected_wait_s = expected_wait_s
        self.retry_after_s = retry_after_s


@dataclass(order=True)
class _Waiter:
    start: float  # virtual start tag
    seq: int  # arrival order among equal tags
    org: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    queued_at: float = field(compare=False)
    expected_s: float | None = field(compare=False)  # the raw estimate when it queued, if measured


class FairAdmission:
    """Pipeline slots of one ingress replica, with a fair queue in front of them.

    Args:
        slots: Requests in the pipeline at once.
        max_wait_s: Longest queueing time accepted: a request whose expected wait (times
            ``WAIT_MARGIN`` while overloaded) is longer is refused.
        initial_pipeline_s: The pipeline time assumed until a request has finished; the first
            one measured replaces it.
        clock: Monotonic seconds (tests pass their own).
        alone_slots: Requests in the pipeline at once while they and every queued request are
            of one organization (0: ``slots``; never fewer).
    """

    def __init__(
        self,
        slots: int,
        max_wait_s: float,
        initial_pipeline_s: float = UNMEASURED_PIPELINE_S,
        clock: Callable[[], float] = time.monotonic,
        alone_slots: int = 0,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self.alone_slots = max(slots, alone_slots)
        self.max_wait_s = max_wait_s
        self.pipeline_s = initial_pipeline_s
        # the same while more than `slots` are held (images side by side: each takes longer,
        # more finish at once); until measured, the rate of `slots` stands
        self.alone_pipeline_s: float | None = None
        self._beside_at = -math.inf  # when more than `slots` were held last
        self.clock = clock
        self.inflight = 0
        self._holders: Counter[str] = Counter()  # slots held, by organization
        self._seen: dict[str, float] = {}  # each organization's last acquire or release, within ALONE_AFTER_S
        self._waiting: list[_Waiter] = []  # a heap by (start tag, arrival)
        self._vtime = 0.0  # the start tag of the request let in last
        self._finish: dict[str, float] = {}  # each organization's last finish tag, while ahead of the virtual time
        self._seq = itertools.count()
        self._waited = self._expected = 0.0  # decayed sums of real and expected waits
        self._measured = False
        self._refused_at = -math.inf  # when a request was last refused on arrival
        # room among the requests past their forward, being finished (Slot.hand_on)
        self.finishing = asyncio.Semaphore(self.alone_slots)

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for w in self._waiting if not w.future.done())

    def rate(self) -> float:
        """Requests per second this replica's full pipeline finishes (measured): ``alone_slots``
        over the time a slot is held beside others while one organization is alone and that
        has been measured, else ``slots`` over the time a slot is held."""
        if self.alone_pipeline_s is not None and self._open_slots() > self.slots:
            return self.alone_slots / max(self.alone_pipeline_s, 1e-3)
        return self.slots / max(self.pipeline_s, 1e-3)

    def _open_slots(self, org: str | None = None) -> int:
        """The slots open to ``org``'s next request (None: to the organization holding or
        waiting for every slot, if only one does): ``alone_slots`` while that organization has
        the replica to itself, else ``slots``."""
        if self.alone_slots == self.slots:
            return self.slots
        now = self.clock()
        for gone in [o for o, t in self._seen.items() if now - t > ALONE_AFTER_S]:
            del self._seen[gone]
        orgs = set(self._holders) | set(self._seen) | {w.org for w in self._waiting if not w.future.done()}
        if org is None:
            return self.alone_slots if len(orgs) == 1 else self.slots
        return self.alone_slots if orgs <= {org} else self.slots

    def _grant(self, org: str) -> None:
        self.inflight += 1
        self._holders[org] += 1
        if self.inflight > self.slots:
            self._beside_at = self.clock()
        if self.alone_slots > self.slots:
            self._seen[org] = self.clock()

    def overloaded(self) -> bool:
        """Whether a request was refused on arrival within the last ``OVERLOAD_S``."""
        return self.clock() - self._refused_at <= OVERLOAD_S

    def calibration(self) -> float:
        """Real waits over expected ones, recently (1.0 until queued requests have measured it)."""
        if self._expected < _CALIBRATION_MIN_SLOTS * self.pipeline_s:
            return 1.0
        low, high = _CALIBRATION_BOUNDS
        return min(high, max(low, self._waited / self._expected))

    def _start_tag(self, org: str) -> float:
        return max(self._vtime, self._finish.get(org, 0.0))

    def _raw_wait(self, org: str) -> float:
        if self.inflight < self._open_slots(org) and not self._waiting:
            return 0.0
        tag = self._start_tag(org)
        # the new request goes after every waiting request with a tag up to its own
        ahead = sum(1 for w in self._waiting if w.start <= tag and not w.future.done())
        return (ahead + 1) / self.rate()

    def expected_wait(self, org: str) -> float:
        """Seconds a new request of ``org`` would wait for a slot (0 when one is free)."""
        return self._raw_wait(org) * self.calibration()

    def _tag(self, org: str) -> float:
        """Give ``org``'s new request its start tag (and the organization its next finish)."""
        start = self._start_tag(org)
        self._finish[org] = start + 1.0
        return start

    def _let_in(self, start: float) -> None:
        self._vtime = max(self._vtime, start)
        # organizations whose finish the virtual time has passed start afresh from it
        for org in [o for o, f in self._finish.items() if f <= self._vtime]:
            del self._finish[org]

    async def acquire(self, org: str) -> float:
        """Wait for a slot for ``org``.

        Returns:
            The monotonic time the slot was granted; pass it to :meth:`release`.

        Raises:
            Overloaded: When the expected wait (times ``WAIT_MARGIN`` while overloaded) is over
                ``max_wait_s`` (nothing is queued); or within ``SHED_WINDOW_S`` of queueing, when a slot frees
                and the estimate from its measure puts the request past the limit.
        """
        if self.inflight < self._open_slots(org) and not self._waiting:
            self._grant(org)
            self._let_in(self._tag(org))
            return self.clock()
        raw, calibration, margin = self._refuse_if_too_long(org)
        # an estimate from the guess, before any measure, does not calibrate
        longest = self.max_wait_s / (margin * calibration)
        expected = raw if self._measured and raw >= _CALIBRATION_MIN_SHARE * longest else None
        waiter = _Waiter(self._tag(org), next(self._seq), org, asyncio.get_running_loop().create_future(), self.clock(), expected)
        heapq.heappush(self._waiting, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result(), org, measure=False)  # granted as it was cancelled: pass it on
            else:
                waiter.future.cancel()  # left in the heap, skipped when its turn comes
            raise

    def check(self, org: str) -> None:
        """Refuse now what :meth:`acquire` would refuse on arrival, without queueing anything:
        the ingress asks this before the rate limiter, so that a request the service has no
        room for neither costs the limiter's hop nor spends its organization's rate limit.

        Raises:
            Overloaded: As :meth:`acquire` on arrival (and the refusal counts as one).
        """
        if self.inflight < self._open_slots(org) and not self._waiting:
            return
        self._refuse_if_too_long(org)

    def _refuse_if_too_long(self, org: str) -> tuple[float, float, float]:
        """The raw expected wait of ``org``'s arrival, the calibration and the margin in force;
        Overloaded (and the service marked overloaded) when the wait is past the limit."""
        raw, calibration = self._raw_wait(org), self.calibration()
        margin = WAIT_MARGIN if self.overloaded() else 1.0
        wait = raw * calibration
        if wait * margin > self.max_wait_s:
            self._refused_at = self.clock()
            # back when the queue ahead has drained to what would be let in
            raise Overloaded(wait, max(1, math.ceil(wait - self.max_wait_s / WAIT_MARGIN)))
        return raw, calibration, margin

    def release(self, granted_at: float, org: str, measure: bool = True) -> None:
        """Give a slot back and hand the slots now open to the waiting requests with the
        smallest tags (usually the one freed to one request).

        Args:
            granted_at: What :meth:`acquire` returned.
            org: The organization whose request held it.
            measure: Count the time held into the pipeline-time average.
        """
        now = self.clock()
        if measure:
            held = now - granted_at
            if self.inflight > self.slots:
                self._beside_at = now
            if granted_at <= self._beside_at:  # held while more than `slots` were: side by side
                self.alone_pipeline_s = _follow(self.alone_pipeline_s, held)
            else:
                self.pipeline_s = _follow(self.pipeline_s if self._measured else None, held)
                self._measured = True
        self.inflight -= 1
        self._holders[org] -= 1
        if self._holders[org] <= 0:
            del self._holders[org]
        if self.alone_slots > self.slots:
            self._seen[org] = now
        granted = False
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.future.done():
                heapq.heappop(self._waiting)  # cancelled while it waited
                continue
            if self.inflight >= self._open_slots(waiter.org):
                break
            heapq.heappop(self._waiting)
            self._grant(waiter.org)
            waiter.future.set_result(now)
            self._let_in(waiter.start)
            if waiter.expected_s is not None:
                self._waited = _CALIBRATION_DECAY * self._waited + (now - waiter.queued_at)
                self._expected = _CALIBRATION_DECAY * self._expected + waiter.expected_s
            granted = True
        if granted:
            self._shed(now)

    def _shed(self, now: float) -> None:
        """Refuse the queued requests that the estimate from the latest measure puts past the
        limit, among those that have waited less than ``SHED_WINDOW_S``; only while requests
        are being refused on arrival (an overload), so that one slow request under a modest
        load, which lengthens the measure for a moment, does not turn queued requests away."""
        if not self.overloaded():
            return
        per_request = self.calibration() / self.rate()
        live = sorted(w for w in self._waiting if not w.future.done())
        for ahead, waiter in enumerate(live):
            waited = now - waiter.queued_at
            left = (ahead + 1) * per_request
            if waited < SHED_WINDOW_S and (waited + left) * WAIT_MARGIN > self.max_wait_s:
                retry_after = max(1, math.ceil(left - self.max_wait_s / WAIT_MARGIN))
                waiter.future.set_exception(Overloaded(waited + left, retry_after))


class Slot:
    """A request's pipeline slot, handed on to the next request once the model is done with it.

    The request holds the slot from admission through its forward; then :meth:`hand_on` waits
    for room among the requests that are finishing (compose, encode, store: at most ``slots``
    at once per replica) and passes the slot on. The next image's fetch and forward then run
    while this one is finished, and a finishing stage that falls behind (large images) holds
    the slots back instead of letting work pile up behind it: a replica never has more than
    twice ``slots`` requests past admission. The pipeline time that admission measures is the
    time a slot is held, the wait for room to finish included.

    Args:
        admission: Where the slot came from.
        granted_at: What :meth:`FairAdmission.acquire` returned.
        org: The organization it was granted to.
        waited_ms: How long the request queued for it (``admission`` in ``Server-Timing``).
    """

    def __init__(self, admission: FairAdmission, granted_at: float, org: str, waited_ms: float = 0.0) -> None:
        self.admission = admission
        self.org = org
        self.waited_ms = waited_ms
        self._granted: float | None = granted_at
        self._finishing = False

    @property
    def held(self) -> bool:
        """Whether this request still holds its pipeline slot."""
        return self._granted is not None

    def others(self) -> int:
        """How many other requests of this replica hold a slot (0 once this one has handed its
        own on). Asked as a request reaches the model: each of them is being fetched, or is at
        the model and frees its slot to a queued request as soon as it is done, so an image
        comes after this one soon, worth a moment's wait to run the two side by side."""
        return self.admission.inflight - 1 if self._granted is not None else 0

    async def hand_on(self) -> None:
        """The forward is done: wait for room to finish, then give the slot to the next request
        (a no-op after the first call)."""
        if self._granted is None:
            return
        await self.admission.finishing.acquire()
        self._finishing = True
        granted, self._granted = self._granted, None
        self.admission.release(granted, self.org)

    def close(self) -> None:
        """The request is answered: give back whatever it still holds."""
        if self._granted is not None:
            granted, self._granted = self._granted, None
            self.admission.release(granted, self.org)
        if self._finishing:
            self._finishing = False
            self.admission.finishing.release()


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
