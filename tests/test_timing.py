"""Server-Timing: what each stage reports survives the header's round trip."""

from __future__ import annotations

from pipeline.timing import parse_server_timing, server_timing, timed


def test_server_timing_round_trip_and_accumulation():
    timings: dict[str, float] = {}
    with timed(timings, "encode"):
        pass
    with timed(timings, "encode"):
        pass
    assert list(timings) == ["encode"] and timings["encode"] >= 0
    timings.update(fetch=1.25, segment=310.0)
    header = server_timing(timings)
    assert header.startswith("encode;dur=") and "segment;dur=310.0" in header
    assert parse_server_timing(header) == {k: round(v, 1) for k, v in timings.items()}
    assert parse_server_timing('cache;desc="hit", db;dur=oops, app;dur=5') == {"app": 5.0}
