"""Ingress deployment: HTTP routing, auth, request validation, orchestration, error mapping.

Routes: ``POST /product/cutout``, ``POST /v1.0/removebg`` (remove.bg's API, mapped by
:mod:`pipeline.removebg`), ``GET /results/<name>`` (signed result URLs of local storage),
``GET /healthz``, and the pages of :mod:`pipeline.web` (``/``, ``/docs``, ``/openapi.json``,
``/ui/...``). In-cluster callers use :meth:`Ingress.cutout` through the app handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments import proxy
from deployments.accesslog import RequestReporter
from deployments.errors import lost_object, replica_lost, to_cutout_error
from pipeline import removebg, web
from pipeline.accesslog import AccessRecord
from pipeline.admission import FairAdmission, Overloaded, RefusalPacer, Slot
from pipeline.cache import CacheRequest, cache_state, hit_body
from pipeline.errors import CutoutError, bad_request, too_large, unauthorized, unavailable
from pipeline.ratelimit import DenialCache, Leases, TokenBuckets, retry_after_header
from pipeline.request import CutoutRequest, parse_body, parse_fields
from pipeline.service import CutoutOptions
from pipeline.settings import Settings
from pipeline.storage import RESULTS_ROUTE, content_type_of
from pipeline.timing import Timings, server_timing
from pipeline.tokens import TokenRecord, TokenStore, validate_org

logger = logging.getLogger("ray.serve")

CUTOUT_ROUTE = "/product/cutout"
HEALTH_ROUTE = "/healthz"
TOKEN_HEADERS = ("api_token", "api-token")
HEALTH_TIMEOUT_S = 2.0
# Past this the shared rate limiter counts as unavailable and this replica limits on its own.
LIMITER_TIMEOUT_S = 2.0
# The stages a request may run again after its replica died: they store nothing. The upload is
# create-only and may have stored the result before its replica died, so it is not rerun.
IDEMPOTENT_STAGES = ("fetch", "moderate", "segment")
# Refusals a second answered at once, per unit of the measured service rate (at least
# MIN_FAST_REFUSALS_PER_S): a client honouring Retry-After stays well within it.
FAST_REFUSALS_PER_IMAGE = 4
MIN_FAST_REFUSALS_PER_S = 5.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _actor_name() -> str | None:
    """The Ray actor name of the replica this runs in; None outside one (unit tests)."""
    try:
        return ray.get_runtime_context().get_actor_name()
    except Exception:
        return None


def error_response(error: CutoutError, request_id: str | None) -> JSONResponse:
    """The JSON error response of docs/api.md, with ``Retry-After`` where the error has one.

    Args:
        request_id: Sent as ``X-Request-Id``; None where Serve's proxy sends that header itself.
    """
    headers = {"X-Request-Id": request_id} if request_id else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)


def _rate_limited(rpm: int, wait_s: float) -> CutoutError:
    return CutoutError(
        429, "rate_limited", f"Rate limit of {rpm} requests per minute exceeded.", None, retry_after=retry_after_header(wait_s)
    )


def _overloaded(exc: Overloaded) -> CutoutError:
    return unavailable(
        "The service is at capacity; try again shortly.",
        retry_after=exc.retry_after_s,
        internal=f"ingress at capacity ({exc})",
        reason="overloaded",
    )


def _token_of(request: Request) -> str | None:
    """The API token a request carries (``api_token`` or ``api-token``), if any."""
    return next((request.headers[h] for h in TOKEN_HEADERS if h in request.headers), None)


def request_id_of(request: Request) -> tuple[str, bool]:
    """The request's id, and whether it came from Serve's proxy.

    Serve's HTTP proxy puts an ``X-Request-Id`` on every request (the client's own, or one it
    makes) and returns it on the response; using that one gives the client, Serve's logs and
    ours a single id. One that is not a short plain token is not trusted into log lines.
    """
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given, True
    return secrets.token_hex(8), False


@serve.deployment(name="Ingress")
class Ingress:
    """Orchestrates fetcher -> (moderator) -> segmenter -> uploader for each request."""

    def __init__(
        self,
        settings: Settings,
        fetcher: DeploymentHandle,
        segmenter: DeploymentHandle,
        moderator: DeploymentHandle,
        uploader: DeploymentHandle,
        limiter: DeploymentHandle,
    ) -> None:
        self.settings = settings
        self.tokens = TokenStore(settings.tokens_file)
        self.fetcher = fetcher
        self.segmenter = segmenter
        self.moderator = moderator
        self.uploader = uploader
        self.limiter = limiter
        self.admission = FairAdmission(
            settings.ingress_max_inflight, settings.admission_max_wait_s, alone_slots=settings.ingress_max_inflight_alone
        )
        self.pacer = RefusalPacer(MIN_FAST_REFUSALS_PER_S, settings.overload_refusal_delay_s)
        self.denials = DenialCache()
        self.leases = Leases()
        # while the shared limiter is down or restarting: the same limits, held by this replica
        self.local_limits = TokenBuckets(burst_s=settings.rate_limit_burst_s)
        self.reporter = RequestReporter(settings.access_log_format)
        # this replica's actor name: the uploader stores nothing for a request whose replica died
        self.replica_name = _actor_name()
        # with direct ingress, this replica's HTTP server answers a limited organization itself
        proxy.answer_early_with(self._early_answer)

    async def __call__(self, request: Request) -> Response:
        """Route an HTTP request."""
        request_id, from_proxy = request_id_of(request)
        header_id = None if from_proxy else request_id  # Serve's proxy answers with its own header
        started = time.monotonic()
        path = request.url.path
        org = sku = reason = None
        timings: Timings = {}
        try:
            if path == CUTOUT_ROUTE:
                if request.method != "POST":
                    raise CutoutError(405, "method_not_allowed", "Use POST.", None)
                record = self._authenticate(request)
                org = record.org
                # the rate limit first: an organization over it never takes a pipeline slot
                await self._rate_limit(org, self._limit(record.rpm))
                async with self._admit(org) as slot:  # queued, or 503 before the body is read
                    body = await self._read_body(request)
                    # a 16 MB JSON body takes tens of ms to parse: not on the event loop
                    parsed = await asyncio.to_thread(parse_body, body) if len(body) > 65536 else parse_body(body)
                    sku = parsed.sku
                    result, timings = await self._run(org, parsed, request_id, slot=slot)
                timings = {"admission": slot.waited_ms, **timings}
                timings["total"] = 1000 * (time.monotonic() - started)
                headers = {"Server-Timing": server_timing(timings), **({"X-Request-Id": header_id} if header_id else {})}
                if cache_state(timings):
                    headers["X-Cache"] = cache_state(timings)
                response: Response = JSONResponse(result, headers=headers)
            elif path == removebg.ROUTE:
                response = await self._removebg(request, request_id, header_id)
            elif path.startswith(RESULTS_ROUTE) and request.method in ("GET", "HEAD"):
                response = await self._result(request)
            elif path == HEALTH_ROUTE:
                response = await self._health()
            elif request.method in ("GET", "HEAD") and (found := web.page(path, self.settings.public_base_url)):
                response = Response(
                    found.body if request.method == "GET" else b"", media_type=found.media_type, headers=found.headers
                )
            else:
                raise CutoutError(404, "not_found", "No such route.", None)
        except Exception as exc:  # every failure becomes a JSON error; details go to the log only
            error = to_cutout_error(exc, request_id)
            await self._pace(error, time.monotonic() - started)
            response, reason = error_response(error, header_id), error.reason
        total_ms = 1000 * (time.monotonic() - started)
        record = AccessRecord(request_id, request.method, path, response.status_code, total_ms, org, sku, reason, timings)
        self.reporter.report(record)
        return response

    async def cutout(
        self,
        org: str,
        sku: str | None = None,
        image_url: str | None = None,
        file: str | None = None,
        force_rmbg: bool = False,
        preserve_alpha: bool = False,
        content_moderation: bool = False,
        quality: str | None = None,
        **output: Any,
    ) -> dict[str, Any]:
        """In-cluster entry point: the JSON body's fields plus the organization.

        ``quality`` is ``fast`` or ``best`` (None: ``CUTOUT_DEFAULT_QUALITY``). ``output``
        takes the output options of docs/api.md (``crop_margin``, ``canvas``, ``bg_color``,
        ``format``, ``channels``, ``max_size``).

        Returns:
            The same body as a 200 of ``POST /product/cutout``.

        Raises:
            CutoutError: The same typed error the HTTP API maps to a status.
        """
        request_id, started = secrets.token_hex(8), time.monotonic()
        try:
            validate_org(org)
        except ValueError as exc:
            raise bad_request("invalid_parameter", str(exc), "org") from None
        fields = {
            "sku": sku,
            "image_url": image_url,
            "file": file,
            "force_rmbg": force_rmbg,
            "preserve_alpha": preserve_alpha,
            "content_moderation": content_moderation,
            "quality": quality,
            **output,
        }
        parsed = None
        try:
            await self._rate_limit(org, self._limit(self.tokens.org_rpm(org)))
            async with self._admit(org) as slot:
                parsed = parse_fields(fields)
                body, timings = await self._run(org, parsed, request_id, slot=slot)
            timings = {"admission": slot.waited_ms, **timings}
            timings["total"] = 1000 * (time.monotonic() - started)
            self.reporter.report(
                AccessRecord(request_id, "CALL", "handle", 200, timings["total"], org, parsed.sku, None, timings)
            )
            return body
        except Exception as exc:
            error = to_cutout_error(exc, request_id)
            await self._pace(error, time.monotonic() - started)
            total_ms, sku = 1000 * (time.monotonic() - started), parsed.sku if parsed else None
            self.reporter.report(AccessRecord(request_id, "CALL", "handle", error.status, total_ms, org, sku, error.reason))
            raise error from None

    @contextlib.asynccontextmanager
    async def _admit(self, org: str) -> AsyncIterator[Slot]:
        """Hold one of this replica's pipeline slots, waiting in the fair queue; yields the
        slot (its ``waited_ms`` is ``admission`` in ``Server-Timing``), which the pipeline hands
        on to the next request once the segmenter has answered (:class:`Slot`).

        Refused with 503 ``overloaded`` only when the expected wait is over
        ``CUTOUT_ADMISSION_MAX_WAIT_S``; ``Retry-After`` says when the queue should have room.
        A queued request waits at most ``CUTOUT_REQUEST_TIMEOUT_S`` (the estimate can be wrong,
        e.g. while a stage hangs), then it is a 503 too, and leaves the queue.
        """
        asked = time.monotonic()
        try:
            granted = await asyncio.wait_for(self.admission.acquire(org), timeout=self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise unavailable(
                "The service is at capacity; try again shortly.",
                retry_after=max(1, round(self.settings.admission_max_wait_s)),
                internal="waited in the admission queue for the whole request timeout",
                reason="overloaded",
            ) from None
        except Overloaded as exc:
            raise _overloaded(exc) from None
        slot = Slot(self.admission, granted, org, 1000.0 * (time.monotonic() - asked))
        try:
            yield slot
        finally:
            slot.close()

    async def _pace(self, error: CutoutError, elapsed_s: float) -> None:
        """Hold a refusal (429/503) a little when refusals come faster than the budget: a client
        that ignores ``Retry-After`` then costs a bounded number of requests a second. A refusal
        already ``elapsed_s`` old (refused from the queue) is held only for what is left."""
        if error.status not in (429, 503) or error.retry_after is None:
            return
        budget = max(MIN_FAST_REFUSALS_PER_S, FAST_REFUSALS_PER_IMAGE * self.admission.rate())
        delay = self.pacer.delay(budget) - elapsed_s
        if delay > 0:
            await asyncio.sleep(delay)

    def _authenticate(self, request: Request) -> TokenRecord:
        record = self.tokens.record(_token_of(request))
        if record is None:
            raise unauthorized()
        return record

    def _limit(self, override: int | None) -> int:
        """Requests a minute: a token's (or, for in-cluster callers, the organization's) own
        override, else ``CUTOUT_RATE_LIMIT_RPM``."""
        return self.settings.rate_limit_rpm if override is None else override

    async def _rate_limit(self, org: str, rpm: int) -> None:
        """429 with ``Retry-After`` when ``org`` is over ``rpm``; a refused organization is
        answered here, without a hop to the shared limiter, until its wait is over. An
        organization with several requests a second at this replica takes a few tokens at once
        (:class:`~pipeline.ratelimit.Leases`): about one hop a second instead of one a request.

        Before the hop, 503 ``overloaded`` when admission would refuse the request on arrival
        anyway: a request the service has no room for costs no hop and does not spend its
        organization's limit (clients retrying into a full service would otherwise be told
        that they are over a limit of which they were served a fraction).

        When the shared limiter does not answer (its replica died and Serve is starting another),
        this replica applies the same limit on its own buckets: requests are neither refused
        for it nor let through unlimited; the limit holds per ingress replica meanwhile.
        """
        if rpm <= 0:
            return
        refusal = self._refusal_from_memory(org, rpm)
        if refusal is not None:
            raise refusal
        if self.leases.take(org):
            return  # a token this replica took ahead within the last second
        want = self.leases.want(org)
        try:
            if want > 1:  # several requests a second: a few tokens at once, one hop a second
                wait, tokens = await asyncio.wait_for(self.limiter.lease.remote(org, rpm, want), timeout=LIMITER_TIMEOUT_S)
                self.leases.give(org, tokens - 1)
            else:
                wait = await asyncio.wait_for(self.limiter.acquire.remote(org, rpm), timeout=LIMITER_TIMEOUT_S)
        except Exception as exc:
            logger.warning("the rate limiter is unavailable (%s); limiting on this replica", type(exc).__name__)
            wait = self.local_limits.acquire(org, rpm)
        if wait > 0:
            # as long as the Retry-After it is told: a client honouring it is not back sooner
            self.denials.deny(org, retry_after_header(wait))
            raise _rate_limited(rpm, wait)

    def _refusal_from_memory(self, org: str, rpm: int) -> CutoutError | None:
        """The refusal this replica can give without the limiter's hop, in order: the 429 of an
        organization the limiter refused whose wait is not over, then the 503 of a request that
        admission would refuse on arrival; None when the limiter must be asked."""
        wait = self.denials.wait(org) if rpm > 0 else 0.0
        if wait > 0:
            return _rate_limited(rpm, wait)
        try:
            self.admission.check(org)
        except Overloaded as exc:
            return _overloaded(exc)
        return None

    async def _early_answer(self, scope: dict[str, Any]) -> Response | None:
        """The answer to a request that memory alone settles, given by the HTTP server's
        middleware before Serve's request path (:func:`deployments.proxy.answer_early_with`):
        for a cutout request, the 429 of an organization that the shared limiter refused and
        whose wait is not over, else the 503 of a request that admission would refuse on
        arrival. None for every other request, which goes on as usual."""
        if scope.get("method") != "POST" or scope.get("path") != CUTOUT_ROUTE:
            return None
        request = Request(scope)
        record = self.tokens.record(_token_of(request))
        if record is None:
            return None
        refusal = self._refusal_from_memory(record.org, self._limit(record.rpm))
        if refusal is None:
            return None
        started = time.monotonic()
        request_id, _ = request_id_of(request)
        error = to_cutout_error(refusal, request_id)
        await self._pace(error, 0.0)
        total_ms = 1000 * (time.monotonic() - started)
        self.reporter.report(
            AccessRecord(request_id, "POST", CUTOUT_ROUTE, error.status, total_ms, record.org, None, error.reason, {})
        )
        return error_response(error, request_id)  # Serve's request path, which adds the id, is skipped

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large("request_too_large", f"The request body is larger than {limit} bytes.", None)
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_large("request_too_large", f"The request body is larger than {limit} bytes.", None)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _removebg(self, request: Request, request_id: str, header_id: str | None) -> Response:
        """``POST /v1.0/removebg``: the same checks and pipeline, remove.bg's request and answer."""
        rpm, started = None, time.monotonic()
        try:
            if request.method != "POST":
                raise CutoutError(405, "method_not_allowed", "Use POST.", None)
            record = self.tokens.record(request.headers.get(removebg.KEY_HEADER))
            if record is None:
                raise unauthorized()
            rpm = self._limit(record.rpm)
            await self._rate_limit(record.org, rpm)
            async with self._admit(record.org) as slot:
                body = await self._read_body(request)
                parsed = await asyncio.to_thread(removebg.parse, request.headers.get("content-type", ""), body)
                result, timings = await self._run(record.org, parsed.cutout, request_id, return_bytes=True, slot=slot)
            reply = removebg.answer(parsed, result, request.headers.get("accept", ""), rpm, cache_state(timings), header_id)
        except Exception as exc:
            error = to_cutout_error(exc, request_id)
            await self._pace(error, time.monotonic() - started)
            reply = removebg.error_response(error, rpm, header_id)
        return Response(reply.body, status_code=reply.status, headers=reply.headers, media_type=reply.media_type)

    async def _run(
        self, org: str, req: CutoutRequest, request_id: str, return_bytes: bool = False, slot: Slot | None = None
    ) -> tuple[dict[str, Any], Timings]:
        try:
            return await asyncio.wait_for(
                self._pipeline_retrying_lost_images(org, req, request_id, return_bytes, slot),
                timeout=self.settings.request_timeout_s,
            )
        except asyncio.TimeoutError:
            raise unavailable("The request took too long; try again.", retry_after=5, internal="request timeout") from None

    async def _pipeline_retrying_lost_images(
        self, org: str, req: CutoutRequest, request_id: str, return_bytes: bool = False, slot: Slot | None = None
    ) -> tuple[dict[str, Any], Timings]:
        """The pipeline, run once more when the stored image was lost between stages, or when
        the replica of an idempotent stage died during the call.

        Every stage before the upload is idempotent and the upload is create-only, so a second
        run is safe. Under load Ray now and then frees the image the fetcher stored before the
        uploader reads it (``ReferenceCountingAssertionError``: the fetcher owns the object and
        the ingress only borrows it); the object is also lost when the fetcher's replica dies.
        A replica that dies in the upload is not run again (it may have stored the result):
        that request is answered 503 with ``Retry-After``. A run again after the slot was
        handed on does not queue for one again (rare: it would wait behind the queue it left).
        """
        reached: list[str] = []
        try:
            return await self._pipeline(org, req, request_id, return_bytes, reached, slot)
        except Exception as exc:
            died = replica_lost(exc) and bool(reached) and reached[-1] in IDEMPOTENT_STAGES
            if not (lost_object(exc) or died):
                raise
            what = "a stage's replica died" if died else "the stored image was lost between stages"
            logger.warning("request %s: %s (%s); running it once more", request_id, what, type(exc).__name__)
        return await self._pipeline(org, req, request_id, return_bytes, [], slot)

    async def _pipeline(
        self,
        org: str,
        req: CutoutRequest,
        request_id: str,
        return_bytes: bool = False,
        reached: list[str] | None = None,
        slot: Slot | None = None,
    ) -> tuple[dict[str, Any], Timings]:
        # The decoded image stays in Ray's object store: the fetcher returns a reference to it
        # and the model-sized input; the reference goes on to the moderator and uploader, and
        # the segmenter (the GPU stage) receives only the model-sized input. The segmenter's
        # answer, a model-sized mask, comes back here and goes on to the uploader by value.
        # The fetcher also looks the result up in the result cache (pipeline/cache.py): a hit
        # answers with the stored result and runs nothing else. ``reached`` names the stage
        # being called, for the retry above. Once the segmenter has answered, the pipeline
        # slot passes to the next request (``slot.hand_on``), whose fetch and forward then run
        # while this one's cutout is composed, encoded and stored.
        reached = [] if reached is None else reached
        reached.append("fetch")
        quality = req.quality or self.settings.default_quality
        cached = CacheRequest(org, req.force_rmbg, req.preserve_alpha, req.content_moderation, req.output, quality)
        fetched = await self.fetcher.load.remote(req.image_url, req.file, req.force_rmbg, cached, return_bytes)
        if fetched.cached is not None:
            body = hit_body(fetched.cached, req.sku, fetched.cached_bytes, return_bytes or not req.output.is_default)
            return body, fetched.timings
        if req.content_moderation:
            reached.append("moderate")
            await self.moderator.check_input.remote(fetched.image)
        reached.append("segment")
        # other requests in the pipeline: an image comes after this one soon, worth a moment's
        # wait at the segmenter to run the two side by side (on a CPU, one thread each)
        more_coming = slot is not None and slot.others() > 0
        segmentation = await self.segmenter.segment.remote(fetched.model_input, quality, more_coming)
        if slot is not None:
            await slot.hand_on()
        options = CutoutOptions(
            org, req.sku, req.force_rmbg, req.preserve_alpha, request_id, req.output, fetched.cache_name, return_bytes, quality
        )
        reached.append("upload")
        return await self.uploader.finish.remote(
            fetched.image, segmentation, options, req.content_moderation, caller=self.replica_name
        )

    async def _result(self, request: Request) -> Response:
        name = request.url.path[len(RESULTS_ROUTE) :]
        query = request.query_params
        data = await self.uploader.read.remote(name, query.get("expires"), query.get("signature"))
        remaining = max(0, int(query.get("expires", "0")) - int(time.time()))
        headers = {"Cache-Control": f"private, max-age={remaining}", "X-Content-Type-Options": "nosniff"}
        return Response(data if request.method == "GET" else b"", media_type=content_type_of(name), headers=headers)

    async def _health(self) -> Response:
        stages = {
            "fetcher": self.fetcher,
            "segmenter": self.segmenter,
            "moderator": self.moderator,
            "uploader": self.uploader,
            "rate_limiter": self.limiter,
        }

        async def probe(handle: DeploymentHandle) -> bool:
            try:
                return bool(await asyncio.wait_for(handle.ready.remote(), timeout=HEALTH_TIMEOUT_S))
            except Exception:
                return False

        results = await asyncio.gather(*(probe(h) for h in stages.values()))
        status = {name: ("ready" if ok else "unavailable") for name, ok in zip(stages, results)}
        ok = all(results)
        headers = {} if ok else {"Retry-After": "5"}
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "stages": status}, status_code=200 if ok else 503, headers=headers
        )
