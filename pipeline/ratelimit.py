"""Per-organization request rate limits: a token bucket per organization.

One instance is shared by every ingress replica (the RateLimiter deployment holds it), so
the limit holds for the organization as a whole, not per replica.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


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
        if rpm <= 0:
            return 0.0
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
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


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
