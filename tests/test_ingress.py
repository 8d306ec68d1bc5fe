"""Ingress logic without a cluster: health aggregation and the mapping of stage failures.

The deployment handles are stand-ins here (a plain object with ``ready.remote()``); the real
graph is exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import ray.exceptions
from ray.serve.exceptions import BackPressureError

from deployments.errors import to_cutout_error
from deployments.ingress import Ingress
from pipeline.errors import CutoutError, bad_request
from pipeline.settings import load_settings


class _Method:
    def __init__(self, result):
        self.result = result

    def remote(self, *args):
        async def go():
            if isinstance(self.result, BaseException):
                raise self.result
            if self.result == "hang":
                await asyncio.sleep(60)
            return self.result

        return go()


class FakeHandle:
    def __init__(self, ready):
        self.ready = _Method(ready)


def make_ingress(tmp_path, **ready):
    cls = Ingress.func_or_class
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    handles = [FakeHandle(ready.get(name, True)) for name in ("fetcher", "segmenter", "moderator", "uploader", "rate_limiter")]
    return cls(settings, *handles)


def test_health_is_200_only_when_every_stage_is_ready(tmp_path):
    ok = asyncio.run(make_ingress(tmp_path)._health())
    assert ok.status_code == 200
    down = asyncio.run(make_ingress(tmp_path, segmenter=RuntimeError("starting"), moderator="hang")._health())
    assert down.status_code == 503 and down.headers["retry-after"]
    body = json.loads(down.body)
    assert body["stages"] == {
        "fetcher": "ready",
        "segmenter": "unavailable",
        "moderator": "unavailable",
        "uploader": "ready",
        "rate_limiter": "ready",
    }


def test_stage_failures_map_to_typed_errors():
    original = bad_request("invalid_base64", "bad", "file")
    wrapped = ray.exceptions.RayTaskError("fn", "tb", original)
    err = to_cutout_error(wrapped, "r1")
    assert isinstance(err, CutoutError) and (err.status, err.reason, err.parameter) == (400, "invalid_base64", "file")
    busy = to_cutout_error(BackPressureError(num_queued_requests=5, max_queued_requests=5), "r2")
    assert busy.status == 503 and busy.retry_after
    bug = to_cutout_error(ZeroDivisionError("secret detail"), "r3")
    assert bug.status == 500 and "secret" not in json.dumps(bug.to_body())


def _cutout_call(ingress, token, body_read):
    from starlette.requests import Request

    async def receive():
        body_read.append(True)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/product/cutout",
        "query_string": b"",
        "headers": [(b"api_token", token.encode())],
    }
    return ingress(Request(scope, receive))


def test_when_the_expected_wait_is_too_long_the_answer_is_503_before_the_body_is_read(tmp_path):
    from pipeline import tokens

    settings = load_settings(
        {"data_dir": str(tmp_path), "ingress_max_inflight": 1, "admission_max_wait_s": 0.5, "rate_limit_rpm": 0},
        environ={},
    )
    token = tokens.create_token(settings.tokens_file, "acme")
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(5)])
    ingress.admission.pipeline_s = 1.0  # measured: a request takes 1 s in the pipeline
    body_read: list[bool] = []

    async def go():
        async with ingress._admit("acme"):  # one request in the pipeline: the next would wait 1 s
            return await asyncio.wait_for(_cutout_call(ingress, token, body_read), timeout=5)  # at once, not at the timeout

    response = asyncio.run(go())
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert json.loads(response.body)["error"]["reason"] == "overloaded"
    assert not body_read
    assert ingress.admission.inflight == 0 and ingress.admission.queued == 0  # nothing left behind


def test_an_organization_over_its_limit_gets_429_even_when_the_pipeline_is_full(tmp_path):
    from pipeline import tokens

    settings = load_settings({"data_dir": str(tmp_path), "ingress_max_inflight": 1, "admission_max_wait_s": 0.5}, environ={})
    token = tokens.create_token(settings.tokens_file, "acme")
    limiter = FakeHandle(True)
    limiter.acquire = _Method(7.5)  # the shared limiter: wait 7.5 s
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)
    body_read: list[bool] = []

    async def go():
        async with ingress._admit("other"):  # the pipeline is full
            first = await _cutout_call(ingress, token, body_read)
            limiter.acquire = _Method(RuntimeError("no second hop while the denial holds"))
            second = await _cutout_call(ingress, token, body_read)
            return first, second

    for response in asyncio.run(go()):
        assert response.status_code == 429 and response.headers["retry-after"] in ("7", "8")
        assert json.loads(response.body)["error"]["reason"] == "rate_limited"
    assert not body_read


class _CountingLimiter(FakeHandle):
    """The shared limiter, which lets everything through and counts what it is asked."""

    def __init__(self) -> None:
        super().__init__(True)
        self.asked: list[str] = []
        outer = self

        class _Acquire:
            def remote(self, org, rpm):
                outer.asked.append(org)
                return _Method(0.0).remote()

        self.acquire = _Acquire()

        class _Lease:  # grants every token asked for
            def remote(self, org, rpm, want):
                outer.asked.append(org)
                return _Method((0.0, want)).remote()

        self.lease = _Lease()


def test_a_request_the_full_service_would_refuse_spends_no_rate_limit(tmp_path):
    from deployments import proxy
    from pipeline import tokens

    settings = load_settings({"data_dir": str(tmp_path), "ingress_max_inflight": 1, "admission_max_wait_s": 0.5}, environ={})
    token = tokens.create_token(settings.tokens_file, "acme")
    limiter = _CountingLimiter()
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)
    ingress.admission.pipeline_s = 1.0  # measured: a request takes 1 s in the pipeline
    sent: list[dict] = []

    async def serve_request_path(scope, receive, send):
        raise AssertionError("answered by the HTTP server's hook")

    async def send(message):
        sent.append(message)

    async def receive():
        raise AssertionError("the body is not read")

    async def go():
        async with ingress._admit("other"):  # the pipeline is full: the next would wait 1 s, past 0.5
            answered = await asyncio.wait_for(_cutout_call(ingress, token, []), timeout=5)
            scope = {"type": "http", "method": "POST", "path": "/product/cutout", "query_string": b""}
            scope["headers"] = [(b"api_token", token.encode())]
            await proxy.EarlyAnswer(serve_request_path)(scope, receive, send)
            return answered

    try:
        answered = asyncio.run(go())
    finally:
        proxy.answer_early_with(None)
    # refused for capacity, on Serve's request path and by the hook alike, without asking the limiter
    assert answered.status_code == 503 and json.loads(answered.body)["error"]["reason"] == "overloaded"
    start, body = sent
    assert start["status"] == 503 and dict(start["headers"])[b"retry-after"]
    assert json.loads(body["body"])["error"]["reason"] == "overloaded"
    assert limiter.asked == []
    # with room again, the limiter is asked (and its limit spent) once per request
    asyncio.run(_cutout_call(ingress, token, []))
    assert limiter.asked == ["acme"]


def test_an_organization_with_several_requests_a_second_asks_the_limiter_about_once_a_second(tmp_path):
    from pipeline import tokens

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    token = tokens.create_token(settings.tokens_file, "acme")
    limiter = _CountingLimiter()
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)

    async def go():
        return [await _cutout_call(ingress, token, []) for _ in range(7)]

    asyncio.run(go())
    # one token for the first; two (one leased) for the second; four (three leased) for the fourth
    assert limiter.asked == ["acme"] * 3


def test_a_refused_organization_is_answered_429_by_the_http_server_before_serves_request_path(tmp_path):
    from deployments import proxy
    from pipeline import tokens

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    token = tokens.create_token(settings.tokens_file, "acme")
    other = tokens.create_token(settings.tokens_file, "other")
    limiter = FakeHandle(True)
    limiter.acquire = _Method(7.5)  # the shared limiter: wait 7.5 s
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)
    passed_on: list[str] = []

    async def serve_request_path(scope, receive, send):  # what the middleware wraps
        passed_on.append(scope["path"])

    def call(path: str, token: str, method: str = "POST") -> list[dict]:
        sent: list[dict] = []
        scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [(b"api_token", token.encode())]}

        async def receive():
            raise AssertionError("the body is not read")

        async def send(message):
            sent.append(message)

        asyncio.run(proxy.EarlyAnswer(serve_request_path)(scope, receive, send))
        return sent

    try:
        assert call("/product/cutout", token) == []  # not refused yet: Serve's request path
        assert asyncio.run(_cutout_call(ingress, token, [])).status_code == 429  # the limiter refuses
        start, body = call("/product/cutout", token)  # now answered from memory
        headers = dict(start["headers"])
        assert start["status"] == 429 and headers[b"retry-after"] in (b"7", b"8")
        assert headers[b"x-request-id"] and json.loads(body["body"])["error"]["reason"] == "rate_limited"
        # every other request goes on: another organization, another route, no token, a GET
        assert call("/product/cutout", other) == [] and call("/v1.0/removebg", token) == []
        assert call("/product/cutout", "nope") == [] and call("/product/cutout", token, "GET") == []
        assert passed_on == ["/product/cutout"] * 2 + ["/v1.0/removebg", "/product/cutout", "/product/cutout"]
    finally:
        proxy.answer_early_with(None)


class _Calls:
    """A handle method answering from a list, one item per call (an exception is raised)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def remote(self, *args, **kwargs):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

        async def go():
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return go()


def test_an_image_lost_between_stages_is_run_once_more_not_answered_503(tmp_path):
    from types import SimpleNamespace

    from pipeline.request import parse_fields

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    fetcher, segmenter, uploader = FakeHandle(True), FakeHandle(True), FakeHandle(True)
    fetcher.load = _Calls(SimpleNamespace(image="ref", model_input=None, cached=None, cache_name=None))
    segmenter.segment = _Calls("mask")
    lost = ray.exceptions.ReferenceCountingAssertionError("00" * 28, "", "")
    uploader.finish = _Calls(lost, ({"result_url": "u"}, {}))
    ingress = Ingress.func_or_class(settings, fetcher, segmenter, FakeHandle(True), uploader, FakeHandle(True))
    request = parse_fields({"file": "x"})
    body, _ = asyncio.run(ingress._run("acme", request, "rid"))
    assert body == {"result_url": "u"} and fetcher.load.calls == 2 and uploader.finish.calls == 2
    # a second loss is not retried again: the client gets the retryable 503
    uploader.finish = _Calls(lost)
    with pytest.raises(Exception) as failed:
        asyncio.run(ingress._run("acme", request, "rid"))
    assert to_cutout_error(failed.value, "rid").status == 503 and uploader.finish.calls == 2


def test_a_queued_request_waits_no_longer_than_the_request_timeout(tmp_path):
    settings = load_settings(
        {"data_dir": str(tmp_path), "ingress_max_inflight": 1, "admission_max_wait_s": 30, "request_timeout_s": 0.2}, environ={}
    )
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(5)])

    async def go():
        async with ingress._admit("stuck"):  # a request that never finishes holds the only slot
            with pytest.raises(CutoutError) as refused:
                async with ingress._admit("acme"):
                    pass
            return refused.value

    error = asyncio.run(go())
    assert (error.status, error.reason) == (503, "overloaded") and error.retry_after >= 1
    assert ingress.admission.queued == 0 and ingress.admission.inflight == 0


def _graph(tmp_path, **answers):
    from types import SimpleNamespace

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    fetcher, segmenter, moderator, uploader = (FakeHandle(True) for _ in range(4))
    fetcher.load = answers.get("load", _Calls(SimpleNamespace(image="ref", model_input=None, cached=None, cache_name=None)))
    moderator.check_input = answers.get("check_input", _Calls(None))
    segmenter.segment = answers.get("segment", _Calls("mask"))
    uploader.finish = answers.get("finish", _Calls(({"result_url": "u"}, {})))
    ingress = Ingress.func_or_class(settings, fetcher, segmenter, moderator, uploader, FakeHandle(True))
    return ingress, fetcher, segmenter, moderator, uploader


def test_a_replica_dying_in_an_idempotent_stage_is_run_once_more_not_answered_503(tmp_path):
    from types import SimpleNamespace

    from pipeline.request import parse_fields

    died = ray.exceptions.ActorDiedError()
    good = {
        "load": SimpleNamespace(image="ref", model_input=None, cached=None, cache_name=None),
        "check_input": None,
        "segment": "mask",
    }
    for stage, answer in good.items():
        ingress, fetcher, *_ = _graph(tmp_path, **{stage: _Calls(died, answer)})
        body, _ = asyncio.run(ingress._run("acme", parse_fields({"file": "x", "content_moderation": True}), "rid"))
        assert body == {"result_url": "u"} and fetcher.load.calls == 2, stage
    # twice in a row: the retryable 503, after one retry only
    ingress, fetcher, segmenter, *_ = _graph(tmp_path, segment=_Calls(died))
    with pytest.raises(Exception) as failed:
        asyncio.run(ingress._run("acme", parse_fields({"file": "x"}), "rid"))
    error = to_cutout_error(failed.value, "rid")
    assert (error.status, error.retry_after) == (503, 2) and segmenter.segment.calls == 2


def test_a_replica_dying_in_the_create_only_upload_is_not_run_again(tmp_path):
    from pipeline.request import parse_fields

    ingress, fetcher, _, _, uploader = _graph(tmp_path, finish=_Calls(ray.exceptions.ActorDiedError(), ({"result_url": "u"}, {})))
    with pytest.raises(Exception) as failed:
        asyncio.run(ingress._run("acme", parse_fields({"file": "x"}), "rid"))
    assert to_cutout_error(failed.value, "rid").status == 503
    assert uploader.finish.calls == 1 and fetcher.load.calls == 1


class _Recorded:
    """A handle method that records its calls in ``log`` and answers when ``gate`` (if any) opens."""

    def __init__(self, name, log, answer, gate=None):
        self.name, self.log, self.answer, self.gate = name, log, answer, gate

    def remote(self, *args, **kwargs):
        async def go():
            self.log.append(self.name)
            if self.gate is not None:
                await self.gate.wait()
            return self.answer

        return go()


def test_the_next_request_is_let_in_once_the_segmenter_has_answered_not_after_the_upload(tmp_path):
    from types import SimpleNamespace

    from pipeline.request import parse_fields

    async def scenario():
        log: list[str] = []
        uploaded = asyncio.Event()
        loaded = SimpleNamespace(image="ref", model_input="input", cached=None, cache_name=None)
        ingress, *_ = _graph(
            tmp_path,
            load=_Recorded("load", log, loaded),
            segment=_Recorded("segment", log, "mask"),
            finish=_Recorded("finish", log, ({"result_url": "u"}, {}), gate=uploaded),
        )
        ingress.admission = type(ingress.admission)(slots=1, max_wait_s=60.0)

        async def request():
            async with ingress._admit("acme") as slot:
                return await ingress._run("acme", parse_fields({"file": "x"}), "rid", slot=slot)

        first = asyncio.create_task(request())
        second = asyncio.create_task(request())
        for _ in range(20):
            await asyncio.sleep(0)
        # the first is uploading (held back by the gate); the second ran its fetch and forward meanwhile
        assert log == ["load", "segment", "finish", "load", "segment"]
        assert not first.done() and ingress.admission.inflight == 1
        # the second waits for room to finish while the first's upload runs: never two uploads at once
        assert log.count("finish") == 1
        uploaded.set()
        assert (await first)[0] == {"result_url": "u"} and (await second)[0] == {"result_url": "u"}
        assert log == ["load", "segment", "finish", "load", "segment", "finish"]
        assert ingress.admission.inflight == 0

    asyncio.run(scenario())


def test_an_image_with_another_on_its_way_tells_the_segmenter_so_and_a_lone_one_does_not(tmp_path):
    from types import SimpleNamespace

    from pipeline.request import parse_fields

    async def scenario():
        fetched = asyncio.Event()
        told: list[bool] = []

        class Segment:
            def remote(self, model_input, quality, more_coming=False):
                told.append(more_coming)

                async def go():
                    return "mask"

                return go()

        class Load:  # the first image is fetched at once, the second only when `fetched` is set
            calls = 0

            def remote(self, *args):
                Load.calls += 1
                first = Load.calls == 1

                async def go():
                    if not first:
                        await fetched.wait()
                    return SimpleNamespace(image="ref", model_input="input", cached=None, cache_name=None)

                return go()

        ingress, *_ = _graph(tmp_path, load=Load(), segment=Segment())
        # as serve_config.yaml has it: one slot, two while one organization is alone
        ingress.admission = type(ingress.admission)(slots=1, max_wait_s=60.0, alone_slots=2)

        async def request(org):
            async with ingress._admit(org) as slot:
                return await ingress._run(org, parse_fields({"file": "x"}), "rid", slot=slot)

        first = asyncio.create_task(request("acme"))
        second = asyncio.create_task(request("acme"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert told == [True]  # the first reached the segmenter while the second was being fetched
        fetched.set()
        await asyncio.gather(first, second)
        assert told == [True, False]
        await request("acme")  # alone in the pipeline: nothing on its way, no wait at the segmenter
        assert told == [True, False, False]

    asyncio.run(scenario())


def test_a_dead_rate_limiter_fails_open_to_the_same_limit_held_by_each_ingress_replica(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), "rate_limit_burst_s": 10}, environ={})
    limiter = FakeHandle(True)
    limiter.acquire = _Method(ray.exceptions.ActorDiedError())
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)

    async def go():
        answers = []
        for _ in range(8):  # 30 a minute with a 10 s burst: 5 at once, then refused
            try:
                await ingress._rate_limit("acme", 30)
                answers.append(200)
            except CutoutError as e:
                answers.append((e.status, e.reason, e.retry_after >= 1))
        return answers

    answers = asyncio.run(go())
    assert answers[:5] == [200] * 5 and set(answers[5:]) == {(429, "rate_limited", True)}
    # a limiter that hangs (its replica restarting) is the same: no wait past LIMITER_TIMEOUT_S
    limiter.acquire = _Method("hang")
    ingress = Ingress.func_or_class(settings, *[FakeHandle(True) for _ in range(4)], limiter)
    assert asyncio.run(go())[:5] == [200] * 5
