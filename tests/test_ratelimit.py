"""Token buckets: the rate, the burst, and the wait reported for Retry-After."""

from __future__ import annotations

from pipeline.ratelimit import LEASE_S, Leases, TokenBuckets, retry_after_header


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


def test_a_lease_comes_only_out_of_the_top_half_of_a_large_bucket():
    buckets = TokenBuckets(burst_s=10)
    t = 1000.0
    assert buckets.take("acme", 600, 4, now=t) == (0.0, 4)  # 100 tokens: three more leased
    taken = 4
    while buckets.take("acme", 600, 4, now=t)[1] == 4:
        taken += 4
    assert 48 <= taken <= 52  # about half the burst goes out in leases...
    assert buckets.take("acme", 600, 4, now=t) == (0.0, 1)  # ...then one token per request
    small = [buckets.take("small", 60, 4, now=t) for _ in range(10)]
    assert small == [(0.0, 1)] * 10  # a burst of 10: never leased
    assert buckets.take("small", 60, 4, now=t)[1] == 0


def test_leased_tokens_are_spent_within_the_lease_and_its_size_follows_the_requests_seen():
    leases = Leases()
    t = 1000.0
    assert not leases.take("acme", now=t) and leases.want("acme") == 1  # the first: ask for one
    assert not leases.take("acme", now=t + 0.1) and leases.want("acme") == 2
    leases.give("acme", 2, now=t + 0.1)
    assert leases.take("acme", now=t + 0.2) and leases.take("acme", now=t + 0.3)
    assert not leases.take("acme", now=t + 0.4)  # spent
    assert leases.want("acme") == 5  # five requests within the last second
    leases.give("acme", 3, now=t + 0.4)
    assert not leases.take("acme", now=t + 0.4 + LEASE_S + 0.01)  # lapsed unspent
    assert leases.want("acme") == 1  # only that one within the last second
    assert not leases.take("other", now=t)  # organizations are independent


def test_leases_remember_a_bounded_number_of_organizations():
    leases = Leases(max_keys=10)
    for i in range(100):
        leases.take(f"org{i}", now=1.0)
        leases.give(f"org{i}", 3, now=1.0)
    assert len(leases._seen) == 10 and len(leases._held) <= 11
