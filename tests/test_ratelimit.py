"""Token buckets: the rate, the burst, and the wait reported for Retry-After."""

from __future__ import annotations

from pipeline.ratelimit import TokenBuckets, retry_after_header


def test_burst_then_rate():
    buckets = TokenBuckets(burst_s=10)
    t = 1000.0
    allowed = [buckets.acquire("acme", 60, now=t) == 0 for _ in range(15)]
    assert allowed.count(True) == 10  # 10 s of 60/min
    wait = buckets.acquire("acme", 60, now=t)
    assert 0 < wait <= 1.0 and retry_after_header(wait) == 1
    assert buckets.acquire("acme", 60, now=t + 1.01) == 0  # one token per second comes back
    assert buckets.acquire("other", 60, now=t) == 0  # organizations are independent
    assert buckets.acquire("free", 0, now=t) == 0  # 0 = no limit


def test_memory_is_bounded():
    buckets = TokenBuckets(max_keys=100)
    for i in range(1000):
        buckets.acquire(f"org{i}", 60, now=1.0)
    assert len(buckets._buckets) == 100
