"""Per-stage wall-clock timings of one request, reported in the ``Server-Timing`` header.

Each stage adds the milliseconds it spent under a short name (``fetch``, ``decode``,
``segment``, ``compose``, ``encode``, ``store``...); the ingress adds ``total`` and sends them
as a ``Server-Timing`` header (W3C Server Timing), which browsers' developer tools and
``make bench`` read. The JSON body is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

Timings = dict[str, float]


@contextmanager
def timed(timings: Timings, name: str) -> Iterator[None]:
    """Add the wall-clock milliseconds of the ``with`` block to ``timings[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + 1000.0 * (time.perf_counter() - started)


def server_timing(timings: Timings) -> str:
    """The ``Server-Timing`` header value: ``fetch;dur=1.2, decode;dur=8.5, ...``."""
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings.items())


def parse_server_timing(header: str) -> Timings:
    """The inverse of :func:`server_timing` (entries without ``dur`` are skipped)."""
    timings: Timings = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    timings[name] = float(value)
                except ValueError:
                    pass
    return timings
