"""Admission by expected wait, the fair queue, refusal pacing and the limiter's denial cache."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.admission import ALONE_AFTER_S, SHED_WINDOW_S, WAIT_MARGIN, FairAdmission, Overloaded, RefusalPacer, Slot
from pipeline.ratelimit import DenialCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _queue(admission: FairAdmission, org: str, granted: list[str]) -> asyncio.Task:
    async def go() -> None:
        await admission.acquire(org)
        granted.append(org)

    task = asyncio.create_task(go())
    await asyncio.sleep(0)
    return task


def test_requests_past_the_slots_queue_instead_of_being_refused():
    async def scenario():
        admission = FairAdmission(slots=2, max_wait_s=5.0, initial_pipeline_s=1.0)  # finishes 2/s
        first = [await admission.acquire("acme") for _ in range(2)]
        granted: list[str] = []
        waiting = [await _queue(admission, "acme", granted) for _ in range(6)]  # 3 s of queue
        assert admission.inflight == 2 and admission.queued == 6 and granted == []
        admission.release(first[0], "acme")
        await asyncio.sleep(0)
        assert granted == ["acme"] and admission.inflight == 2 and admission.queued == 5
        for task in waiting:
            task.cancel()

    asyncio.run(scenario())


def test_a_request_expected_to_wait_too_long_is_refused_with_when_to_come_back():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=2.0 * WAIT_MARGIN, initial_pipeline_s=1.0)  # finishes 1/s
        await admission.acquire("acme")
        granted: list[str] = []
        tasks = [await _queue(admission, "acme", granted) for _ in range(2)]  # waits 1 s and 2 s
        with pytest.raises(Overloaded) as refused:
            await admission.acquire("acme")  # would wait 3 s
        assert refused.value.expected_wait_s == pytest.approx(3.0)
        assert refused.value.retry_after_s == 1  # the queue has room for it in about 1 s
        assert admission.queued == 2  # the refused request left nothing behind
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_while_requests_are_refused_one_is_let_in_only_while_its_wait_with_the_margin_is_within_the_limit():
    clock = Clock()

    async def scenario():
        # finishes 1/s; the limit 5 s
        admission = FairAdmission(slots=1, max_wait_s=5.0, initial_pipeline_s=1.0, clock=clock)
        await admission.acquire("acme")
        granted: list[str] = []
        tasks = [await _queue(admission, "acme", granted) for _ in range(5)]  # not overloaded: up to 5 s
        with pytest.raises(Overloaded):
            await admission.acquire("acme")  # 6 s: refused, and now the service is overloaded
        for task in tasks[3:]:
            task.cancel()
        await asyncio.sleep(0)
        tasks[3] = await _queue(admission, "acme", granted)  # 4 s x 1.2 is within the limit
        with pytest.raises(Overloaded) as refused:
            await admission.acquire("acme")  # 5 s: within the limit, not with the margin
        assert refused.value.expected_wait_s == pytest.approx(5.0)
        assert refused.value.retry_after_s == 1  # room once one more has left the queue
        assert admission.queued == 4
        clock.now += 1.5  # a second and more without a refusal: the margin is off again
        tasks[4] = await _queue(admission, "acme", granted)
        assert admission.queued == 5
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_when_the_pipeline_slows_the_back_of_a_fresh_queue_is_refused_and_the_rest_kept():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=5.0, initial_pipeline_s=0.3, clock=clock)
        admission._measured = True  # 0.3 s measured before the storm
        held = await admission.acquire("acme")
        outcomes: dict[int, object] = {}

        async def wait(k: int) -> None:
            try:
                await admission.acquire("acme")
                outcomes[k] = "granted"
            except Overloaded as exc:
                outcomes[k] = exc

        tasks = []
        while admission.expected_wait("acme") <= 5.0:  # the queue fills at once on 0.3 s
            tasks.append(asyncio.create_task(wait(len(tasks))))
            await asyncio.sleep(0)
        assert len(tasks) == 16
        with pytest.raises(Overloaded):  # the storm's other clients are refused on arrival
            await admission.acquire("acme")
        clock.now += 0.6  # the storm's CPU: the first slot frees after 0.6 s, not 0.3
        admission.release(held, "acme")
        await asyncio.sleep(0)
        refused = sorted(k for k, o in outcomes.items() if isinstance(o, Overloaded))
        assert outcomes[0] == "granted"
        # the estimate from the new measure (0.45 s) keeps those it can serve within the limit
        kept = admission.queued
        assert refused == list(range(1 + kept, 16)) and kept >= 6
        assert (0.6 + kept * admission.pipeline_s) * WAIT_MARGIN <= 5.0
        assert all(outcomes[k].retry_after_s >= 1 for k in refused)
        # once past the window, a queued request is no longer refused: it is served
        clock.now += SHED_WINDOW_S
        admission.release(clock.now - 1.0, "acme")  # slower still
        await asyncio.sleep(0)
        assert admission.queued == kept - 1 and len(refused) == sum(isinstance(o, Overloaded) for o in outcomes.values())
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_one_slow_request_under_a_modest_load_turns_no_queued_request_away():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=5.0, initial_pipeline_s=0.3, clock=clock)
        admission._measured = True
        await admission.acquire("acme")
        granted: list[str] = []
        tasks = [await _queue(admission, "acme", granted) for _ in range(7)]  # eight clients
        clock.now += 0.5  # the queue waited 0.5 s behind a large image that took 1.9 s:
        admission.release(clock.now - 1.9, "acme")  # the measure jumps to 1.1 s, and 7 x 1.1 x 1.2 > 5
        await asyncio.sleep(0)
        assert admission.pipeline_s > 0.8 and granted == ["acme"] and admission.queued == 6
        assert not any(t.done() for t in tasks[1:])  # nobody refused: nothing was refused on arrival
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_a_polite_organization_goes_before_a_floods_queue():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0)
        held = await admission.acquire("flood")
        granted: list[str] = []
        tasks = [await _queue(admission, "flood", granted) for _ in range(5)]
        tasks.append(await _queue(admission, "polite", granted))
        for org in ("flood", "polite", "flood"):  # who holds the slot
            admission.release(held, org)
            await asyncio.sleep(0)
            held = admission.clock()
        # the polite organization's one request went in first, not after the flood's five
        assert granted == ["polite", "flood", "flood"]
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_a_polite_organization_is_not_refused_while_another_floods():
    async def scenario():
        admission = FairAdmission(slots=2, max_wait_s=3.0, initial_pipeline_s=1.0)  # 2/s
        for _ in range(2):
            await admission.acquire("flood")
        granted: list[str] = []
        tasks = []
        for _ in range(6):  # the flood's queue fills to its limit...
            tasks.append(await _queue(admission, "flood", granted))
        with pytest.raises(Overloaded):
            await admission.acquire("flood")  # ...and the flood is refused
        assert admission.expected_wait("polite") == pytest.approx(0.5)  # only until a slot frees
        tasks.append(await _queue(admission, "polite", granted))
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_organizations_that_all_flood_take_turns_and_one_alone_takes_every_slot():
    async def scenario():
        admission = FairAdmission(slots=2, max_wait_s=60.0)
        held = [await admission.acquire("a"), await admission.acquire("a")]  # alone: both slots
        assert admission.inflight == 2
        granted: list[str] = []
        tasks = [await _queue(admission, org, granted) for org in ["a"] * 4 + ["b"] * 4]
        for org in ["a", "a", "b", "a", "b", "a"]:  # who holds the slot freed
            admission.release(held[0], org)
            await asyncio.sleep(0)
        # "b" starts from the virtual time now: the two take turns, "b" first
        assert granted == ["b", "a", "b", "a", "b", "a"]
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_an_organization_alone_takes_its_alone_slots_and_another_one_goes_next_behind_them():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0, initial_pipeline_s=1.0, clock=clock, alone_slots=2)
        held = [await admission.acquire("flood"), await admission.acquire("flood")]  # alone: two at once
        assert admission.inflight == 2
        granted: list[str] = []
        tasks = [await _queue(admission, "flood", granted) for _ in range(3)]
        tasks.append(await _queue(admission, "polite", granted))
        admission.release(held[0], "flood")
        await asyncio.sleep(0)
        # no flood request takes the freed slot: the polite one is next and waits for one slot
        assert granted == [] and admission.inflight == 1
        admission.release(held[1], "flood")
        await asyncio.sleep(0)
        assert granted == ["polite"] and admission.inflight == 1
        admission.release(held[0], "polite")
        await asyncio.sleep(0)
        # the polite organization may send its next request at once: one slot still
        assert granted == ["polite", "flood"] and admission.inflight == 1
        clock.now += ALONE_AFTER_S + 0.1  # it did not: the flood is alone again
        admission.release(held[0], "flood")
        await asyncio.sleep(0)
        assert granted == ["polite", "flood", "flood", "flood"] and admission.inflight == 2
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_the_rate_of_the_alone_slots_is_measured_apart_from_the_one_slots():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0, initial_pipeline_s=1.0, clock=clock, alone_slots=2)
        admission._measured = True  # one at a time, a request holds its slot 1 s
        pair = [await admission.acquire("acme"), await admission.acquire("acme")]
        # side by side, not measured yet: no faster than one at a time (a storm that began now
        # would otherwise queue on a rate twice what the pipeline gives)
        assert admission.rate() == pytest.approx(1.0)
        clock.now += 1.6
        admission.release(pair[0], "acme")  # two images side by side take 1.6 s each
        assert admission.rate() == pytest.approx(2 / 1.6)
        admission.release(pair[1], "acme")
        assert admission.pipeline_s == pytest.approx(1.0)  # the one-slot time is its own
        await admission.acquire("other")  # another organization: one slot at a time again
        assert admission.rate() == pytest.approx(1.0)

    asyncio.run(scenario())


def test_a_slot_knows_how_many_other_requests_hold_one():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0, initial_pipeline_s=1.0, alone_slots=2)
        first = Slot(admission, await admission.acquire("acme"), "acme")
        lone = first.others()
        second = Slot(admission, await admission.acquire("acme"), "acme")
        assert lone == 0 and first.others() == 1 and second.others() == 1
        await first.hand_on()
        assert first.others() == 0 and second.others() == 0  # the first is past the model
        first.close()
        second.close()
        assert admission.inflight == 0

    asyncio.run(scenario())


def test_an_organization_back_after_a_pause_gets_no_credit_for_it():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0)
        held = await admission.acquire("quiet")
        admission.release(held, "quiet")  # then quiet for a long while, as the flood runs alone
        held = await admission.acquire("flood")
        granted: list[str] = []
        tasks = [await _queue(admission, "flood", granted) for _ in range(4)]
        for _ in range(2):
            admission.release(held, "flood")
            await asyncio.sleep(0)
        tasks += [await _queue(admission, "quiet", granted) for _ in range(3)]
        for org in ["flood", "quiet", "flood", "quiet", "flood"]:  # who holds the slot
            admission.release(held, org)
            await asyncio.sleep(0)
        # back, "quiet" goes next and then takes turns: its idle time bought it no burst
        assert granted == ["flood", "flood", "quiet", "flood", "quiet", "flood", "quiet"]
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_expected_waits_are_calibrated_by_the_waits_queued_requests_really_had():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=2.0, clock=clock)  # waits of 1 s: half the limit
        held = await admission.acquire("acme")
        clock.now += 1.0
        admission.release(held, "acme")  # the pipeline measured at 1 s
        held = await admission.acquire("acme")
        assert admission.expected_wait("acme") == pytest.approx(1.0)
        granted: list[str] = []
        for _ in range(12):
            # each slot frees after 1 s of pipeline, but the request behind it waits 2 s in all
            # (e.g. the CPU is taken between requests): expected 1 s, waited 2 s
            await _queue(admission, "acme", granted)
            clock.now += 2.0
            admission.release(held, "acme", measure=False)
            await asyncio.sleep(0)
            held = clock.now
        assert admission.calibration() == pytest.approx(2.0, rel=0.05)
        assert admission.expected_wait("acme") == pytest.approx(2.0, rel=0.05)
        for _ in range(30):  # then every slot frees at once: waits shorter than expected
            await _queue(admission, "acme", granted)
            admission.release(held, "acme", measure=False)
            await asyncio.sleep(0)
        # ...never shorten the estimate: the pipeline's own measure stands
        assert admission.calibration() == 1.0
        assert admission.expected_wait("acme") == pytest.approx(1.0)

    asyncio.run(scenario())


def test_the_rate_follows_the_measured_pipeline_time():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=2, max_wait_s=5.0, initial_pipeline_s=1.0, clock=clock)
        for _ in range(30):
            granted = await admission.acquire("acme")
            clock.now += 4.0
            admission.release(granted, "acme")
        assert admission.pipeline_s == pytest.approx(4.0, rel=0.01)
        assert admission.rate() == pytest.approx(0.5, rel=0.01)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_a_granted_one_passes_its_slot_on():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0)
        held = await admission.acquire("a")
        granted: list[str] = []
        gone = await _queue(admission, "a", granted)
        gone.cancel()
        await asyncio.sleep(0)
        assert admission.queued == 0
        admission.release(held, "a")
        assert admission.inflight == 0
        # granted and cancelled in the same turn: the slot goes to the next in line
        held = await admission.acquire("a")
        first = await _queue(admission, "b", granted)
        second = await _queue(admission, "c", granted)
        admission.release(held, "a")
        first.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert granted == ["c"] and admission.inflight == 1
        second.cancel()

    asyncio.run(scenario())


def test_a_segmented_request_hands_its_slot_on_and_finishing_is_bounded_too():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0, initial_pipeline_s=1.0, clock=clock)
        first = Slot(admission, await admission.acquire("acme"), "acme")
        granted: list[str] = []
        second_waits = await _queue(admission, "acme", granted)
        clock.now += 0.3  # the first request's forward takes 0.3 s
        await first.hand_on()
        await asyncio.sleep(0)
        # the next request is let in while the first is still being finished
        assert granted == ["acme"] and not first.held
        assert admission.pipeline_s == pytest.approx(0.3)  # the time a slot was held: up to the forward
        await second_waits
        second = Slot(admission, clock.now, "acme")
        third_waits = await _queue(admission, "acme", granted)
        # the second is segmented too, but the first still finishes: the second keeps its slot
        hand_on = asyncio.create_task(second.hand_on())
        await asyncio.sleep(0)
        assert second.held and not hand_on.done() and granted == ["acme"]
        first.close()  # the first answered: room to finish, the slot goes on to the third
        await hand_on
        await third_waits
        assert granted == ["acme", "acme"] and not second.held
        await second.hand_on()  # a second call changes nothing
        second.close()
        third = Slot(admission, clock.now, "acme")
        await third.hand_on()  # room to finish at once
        third.close()
        assert admission.inflight == 0

    asyncio.run(scenario())


def test_a_request_that_fails_before_its_forward_gives_its_slot_back():
    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=60.0, initial_pipeline_s=1.0)
        slot = Slot(admission, await admission.acquire("acme"), "acme")
        slot.close()  # e.g. a 422 from the fetcher: never segmented
        slot.close()
        assert admission.inflight == 0
        again = Slot(admission, await admission.acquire("acme"), "acme")
        await asyncio.wait_for(again.hand_on(), 1.0)  # nothing left holding room to finish
        again.close()

    asyncio.run(scenario())


def test_refusals_within_the_budget_are_answered_at_once_and_the_rest_held():
    clock = Clock()
    pacer = RefusalPacer(per_s=10, delay_s=0.5, clock=clock)
    assert [pacer.delay() for _ in range(10)] == [0.0] * 10
    held = [pacer.delay() for _ in range(20)]
    assert all(0.4 <= d <= 0.5 for d in held)
    clock.now += 1.0  # a second later the budget is back
    assert pacer.delay() == 0.0
    assert RefusalPacer(per_s=1, delay_s=0).delay() == 0.0 and RefusalPacer(per_s=1, delay_s=0).delay() == 0.0


def test_the_denial_cache_answers_until_the_limiters_wait_is_over():
    cache = DenialCache(max_keys=2)
    assert cache.wait("acme", now=0.0) == 0.0
    cache.deny("acme", 3.0, now=0.0)
    assert cache.wait("acme", now=1.0) == pytest.approx(2.0)
    assert cache.wait("other", now=1.0) == 0.0
    assert cache.wait("acme", now=3.0) == 0.0  # over: the limiter is asked again
    for org in ("a", "b", "c"):
        cache.deny(org, 10.0, now=0.0)
    assert cache.wait("a", now=1.0) == 0.0  # the oldest is forgotten beyond max_keys


def test_a_burst_at_a_cold_service_queues_and_the_first_measure_replaces_the_guess():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=5.0, clock=clock)  # nothing measured yet
        held = await admission.acquire("acme")
        granted: list[str] = []
        tasks = [await _queue(admission, "acme", granted) for _ in range(7)]  # eight clients at once
        assert admission.queued == 7
        clock.now += 0.4
        admission.release(held, "acme")
        assert admission.pipeline_s == pytest.approx(0.4)  # measured: the guess is gone
        for _ in range(6):  # the burst waited far longer than the guess said: that calibrates nothing
            clock.now += 0.4
            admission.release(clock.now - 0.4, "acme")
            await asyncio.sleep(0)
        assert admission.calibration() == 1.0
        tasks = [t for t in tasks if not t.done()]
        while admission.expected_wait("acme") <= 5.0:  # at 0.4 s each, room for 12 in the queue
            tasks.append(await _queue(admission, "acme", granted))
        assert admission.queued == 12
        with pytest.raises(Overloaded):
            await admission.acquire("acme")
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_check_refuses_what_an_arrival_would_be_refused_and_queues_nothing():
    clock = Clock()

    async def scenario():
        admission = FairAdmission(slots=1, max_wait_s=2.0, initial_pipeline_s=1.0, clock=clock)  # 1/s
        admission.check("acme")  # a free slot
        await admission.acquire("acme")
        granted: list[str] = []
        tasks = [await _queue(admission, "acme", granted)]  # waits 1 s
        admission.check("acme")  # would wait 2 s: within the limit
        assert not admission.overloaded()
        tasks.append(await _queue(admission, "acme", granted))
        with pytest.raises(Overloaded) as refused:
            admission.check("acme")  # would wait 3 s
        assert refused.value.retry_after_s >= 1 and admission.overloaded() and admission.queued == 2
        admission.check("polite")  # another organization goes before the queue: 1 s
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_alone_slots_below_the_slots_mean_no_more_while_alone(tmp_path):
    from pipeline.settings import load_settings

    # serve_config.yaml's 2 beside a cluster's ingress_max_inflight of 16: valid, and 16 either way
    settings = load_settings({"data_dir": str(tmp_path), "ingress_max_inflight": 16, "ingress_max_inflight_alone": 2}, environ={})
    admission = FairAdmission(settings.ingress_max_inflight, 5.0, alone_slots=settings.ingress_max_inflight_alone)
    assert admission.alone_slots == admission.slots == 16
