"""Per-organization request rate limits: a token bucket per organization.

One instance is shared by every ingress replica (the RateLimiter deployment holds it), so
the limit holds for the organization as a whole, not per replica. An ingress replica that sees
several requests of an organization a second takes a few tokens at once (a lease,
:class:`Leases`), so that it asks the shared limiter about once a second for that organization
rather than once per request.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

# How long an ingress replica may spend tokens it took ahead (a lease); unspent ones lapse.
LEASE_S = 1.0
# Leases only for organizations whose burst holds at least this many tokens, and only out of the
# top half of the bucket: a small limit is counted one request at a time, and a lease held by one
# replica can never be why an organization near its limit is refused by another.
LEASE_MIN_BURST = 20.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets refilled at ``rpm / 60`` per second, holding at most ``burst`` tokens.

    Args:
        burst_s: Seconds of the rate a bucket may save up (burst = rpm * burst_s / 60, at least 1).
        max_keys: Buckets kept; the least recently used are forgotten beyond it.
    """

    def __init__(self, burst_s: float = 10.0, max_keys: int = 100_000) -> None:
        self.burst_s = burst_s
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, rpm: int, now: float | None = None) -> float:
        """Take one token for ``key``.

        Returns:
            0 when allowed, else the seconds until a token is available.
        """
        return self.take(key, rpm, 1, now)[0]

    def take(self, key: str, rpm: int, want: int, now: float | None = None) -> tuple[float, int]:
        """Take one token for ``key`` and, as a lease, up to ``want - 1`` more while its bucket
        holds more than half its burst and the burst is at least ``LEASE_MIN_BURST``.

        Returns:
            ``(0, tokens taken)`` when allowed, else ``(seconds until a token is available, 0)``.
        """
        if rpm <= 0:
            return 0.0, max(1, want)
        now = time.monotonic() if now is None else now
        rate = rpm / 60.0
        burst = max(1.0, rpm * self.burst_s / 60.0)
        bucket = self._buckets.pop(key, None) or _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        self._buckets[key] = bucket  # re-inserted: most recently used last
        if len(self._buckets) > self.max_keys:
            self._buckets.pop(next(iter(self._buckets)))
        if bucket.tokens >= 1.0:
            extra = 0
            if want > 1 and burst >= LEASE_MIN_BURST:
                extra = max(0, min(want - 1, math.floor(bucket.tokens - 1.0 - burst / 2)))
            bucket.tokens -= 1.0 + extra
            return 0.0, 1 + extra
        return (1.0 - bucket.tokens) / rate, 0


class Leases:
    """The tokens an ingress replica took ahead from the shared limiter, per organization.

    Each request of an organization first spends a leased token if one is left and not older
    than ``lease_s``; otherwise the limiter is asked, for as many tokens as the replica has seen
    requests of that organization within the last ``lease_s`` (the next second will likely bring
    as many), and what it grants beyond the one spent now is kept.

    Args:
        lease_s: How long leased tokens may be spent; the rest lapse unspent.
        max_keys: Organizations remembered; the least recently seen are forgotten beyond it.
    """

    def __init__(self, lease_s: float = LEASE_S, max_keys: int = 10_000) -> None:
        self.lease_s = lease_s
        self.max_keys = max_keys
        self._held: dict[str, tuple[int, float]] = {}  # tokens left, and until when
        self._seen: dict[str, deque[float]] = {}

    def take(self, key: str, now: float | None = None) -> bool:
        """Count a request of ``key``; spend a leased token for it if one is held."""
        now = time.monotonic() if now is None else now
        seen = self._seen.pop(key, None) or deque()
        seen.append(now)
        while seen[0] < now - self.lease_s:
            seen.popleft()
        self._seen[key] = seen  # re-inserted: most recently seen last
        if len(self._seen) > self.max_keys:
            oldest = next(iter(self._seen))
            del self._seen[oldest]
            self._held.pop(oldest, None)
        tokens, until = self._held.get(key, (0, 0.0))
        if tokens > 0 and now < until:
            self._held[key] = (tokens - 1, until)
            return True
        self._held.pop(key, None)
        return False

    def want(self, key: str) -> int:
        """Tokens to ask the limiter for: the requests of ``key`` seen within ``lease_s``."""
        return max(1, len(self._seen.get(key, ())))

    def give(self, key: str, tokens: int, now: float | None = None) -> None:
        """Keep ``tokens`` leased for ``key`` for the next ``lease_s``."""
        if tokens > 0:
            self._held[key] = (tokens, (time.monotonic() if now is None else now) + self.lease_s)


def retry_after_header(wait_s: float) -> int:
    """Whole seconds for ``Retry-After`` (at least 1)."""
    return max(1, math.ceil(wait_s))


class DenialCache:
    """What an ingress replica remembers of the shared limiter's refusals.

    After the limiter answers "wait ``w`` seconds" for an organization, the replica answers that
    organization's next requests itself until then, without asking the limiter again: an
    organization over its limit costs one hop per refusal period, not one per request.

    Args:
        max_keys: Organizations remembered; the oldest are forgotten beyond it.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._until: dict[str, float] = {}

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds ``key`` must still wait (0 when the limiter should be asked)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        now = time.monotonic() if now is None else now
        if now >= until:
            del self._until[key]
            return 0.0
        return until - now

    def deny(self, key: str, wait_s: float, now: float | None = None) -> None:
        """Remember that ``key`` was refused for ``wait_s`` seconds."""
        now = time.monotonic() if now is None else now
        self._until.pop(key, None)
        self._until[key] = now + wait_s
        if len(self._until) > self.max_keys:
            self._until.pop(next(iter(self._until)))
