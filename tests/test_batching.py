"""The segmenter's batches: at once for a lone image, together for images said to be on their way."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.batching import Batcher


class Recorder:
    """A ``run`` that records each batch it is given."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)  # the forward
        if self.fail:
            raise RuntimeError("the model failed")
        return [item.upper() for item in items]


def test_a_lone_image_runs_at_once_even_with_a_partner_wait():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_size=2, wait_s=0.0, partner_wait_s=5.0)
        started = time.monotonic()
        assert await batcher.submit("a") == "A"
        assert time.monotonic() - started < 1.0  # not the 5 s partner wait
        assert run.batches == [["a"]]

    asyncio.run(scenario())


def test_an_image_said_to_have_a_partner_on_its_way_waits_for_it_and_runs_with_it():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_size=2, wait_s=0.0, partner_wait_s=5.0)
        first = asyncio.create_task(batcher.submit("a", more_coming=True))
        await asyncio.sleep(0.05)  # the partner is still being fetched
        assert not first.done()
        second = asyncio.create_task(batcher.submit("b"))
        assert await asyncio.wait_for(asyncio.gather(first, second), 1.0) == ["A", "B"]
        assert run.batches == [["a", "b"]]

    asyncio.run(scenario())


def test_a_partner_that_never_comes_costs_at_most_the_partner_wait():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_size=2, wait_s=0.0, partner_wait_s=0.1)
        started = time.monotonic()
        assert await batcher.submit("a", more_coming=True) == "A"
        assert 0.1 <= time.monotonic() - started < 1.0
        assert run.batches == [["a"]]

    asyncio.run(scenario())


def test_batches_never_pass_the_size_and_what_waits_meanwhile_forms_the_next():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_size=2, wait_s=0.0, partner_wait_s=5.0)
        tasks = [asyncio.create_task(batcher.submit(x, more_coming=True)) for x in "abcde"]
        await asyncio.sleep(0)
        tail = asyncio.create_task(batcher.submit("f"))
        assert await asyncio.wait_for(asyncio.gather(*tasks, tail), 2.0) == list("ABCDEF")
        assert run.batches == [["a", "b"], ["c", "d"], ["e", "f"]]

    asyncio.run(scenario())


def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs():
    async def scenario():
        run = Recorder(fail=True)
        batcher = Batcher(run, max_size=2)
        results = await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        run.fail = False
        assert await batcher.submit("c") == "C"

    asyncio.run(scenario())


def test_a_call_cancelled_while_it_waits_is_left_out_of_its_batch():
    async def scenario():
        run = Recorder()
        batcher = Batcher(run, max_size=2, partner_wait_s=5.0)
        busy = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0)  # "a" runs; "b" and "c" wait behind it
        gone = asyncio.create_task(batcher.submit("b"))
        kept = asyncio.create_task(batcher.submit("c"))
        await asyncio.sleep(0)
        gone.cancel()
        assert await asyncio.wait_for(asyncio.gather(busy, kept), 1.0) == ["A", "C"]
        assert run.batches == [["a"], ["c"]]

    asyncio.run(scenario())


def test_the_size_is_checked():
    with pytest.raises(ValueError):
        Batcher(Recorder(), max_size=0)
