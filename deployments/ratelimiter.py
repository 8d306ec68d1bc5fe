"""RateLimiter deployment: one replica holding every organization's token bucket."""

from __future__ import annotations

from ray import serve

from pipeline.ratelimit import TokenBuckets


@serve.deployment(name="RateLimiter", num_replicas=1, max_ongoing_requests=1000)
class RateLimiter:
    """Shared by all ingress replicas, so a limit is per organization, not per replica."""

    def __init__(self, burst_s: float) -> None:
        self.buckets = TokenBuckets(burst_s=burst_s)

    def acquire(self, org: str, rpm: int) -> float:
        """0 if the request may proceed, else seconds until it may."""
        return self.buckets.acquire(org, rpm)

    def lease(self, org: str, rpm: int, want: int) -> tuple[float, int]:
        """``(0, tokens)`` with one token for this request and up to ``want - 1`` more to spend
        within a second (see ``pipeline.ratelimit.Leases``), else ``(seconds until one, 0)``."""
        return self.buckets.take(org, rpm, want)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
