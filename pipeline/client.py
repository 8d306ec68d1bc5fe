"""A client of the HTTP API, blocking (:class:`CutoutClient`) and asyncio (:class:`AsyncCutoutClient`), on httpx.

    from pipeline.client import CutoutClient

    with CutoutClient("http://127.0.0.1:8000", token) as client:
        result = client.cutout(file=Path("mug.jpg"), sku="MUG-1")
        Path("mug.png").write_bytes(client.download(result.result_url))

Answers are the typed models of :mod:`pipeline.contract`; a failure raises :class:`CutoutAPIError`
(the service's error: status, reason, message, parameter, ``retry_after``) or
:class:`ServiceUnreachable` (no answer at all). A 429 or 503 is retried after its
``Retry-After``, never sooner, plus a random jitter so that refused clients do not come back in
step; a ``Retry-After`` longer than :attr:`RetryPolicy.max_wait_s` ends the retries at once, and
so does the last of :attr:`RetryPolicy.max_attempts`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from pipeline.contract import CutoutResult, ErrorBody, Health

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
CUTOUT_PATH = "/product/cutout"


class CutoutClientError(Exception):
    """Base of the client's errors."""


class CutoutAPIError(CutoutClientError):
    """The service answered with an error (docs/api.md, Errors).

    Attributes:
        status: The HTTP status.
        reason: The stable machine-readable name (``rate_limited``, ``unsupported_format``, ...);
            ``http_error`` when the answer was not the service's JSON (e.g. a proxy's page).
        message: The service's message, for people.
        parameter: The request field at fault, or None.
        details: Extra public details.
        retry_after: Seconds the service asked to wait (429, 503), or None.
        request_id: The request's id in the service's logs, or None.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        parameter: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.parameter = parameter
        self.details = details or {}
        self.retry_after = retry_after
        self.request_id = request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> CutoutAPIError:
        """The error an answer carries (its JSON body when it has the service's shape)."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        request_id = response.headers.get("x-request-id")
        try:
            error = ErrorBody.model_validate_json(response.content).error
        except ValidationError:
            text = response.text[:200].strip() or response.reason_phrase
            return cls(response.status_code, "http_error", text, None, None, retry_after, request_id)
        return cls(response.status_code, error.reason, error.message, error.parameter, error.details, retry_after, request_id)


class ServiceUnreachable(CutoutClientError):
    """No answer: the connection failed, or the service took longer than the timeout."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen (given to ``on_retry``).

    Attributes:
        attempt: The attempt that failed (1 for the first).
        error: Why it failed.
        retry_after: Seconds the service asked for, or None (no header, or no answer).
        wait_s: Seconds the client waits before the next attempt (at least ``retry_after``).
    """

    attempt: int
    error: CutoutClientError
    retry_after: float | None
    wait_s: float


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again.

    Attributes:
        max_attempts: Attempts in all, the first included (1: no retries).
        max_wait_s: Longest single wait, seconds. A ``Retry-After`` longer than this is not
            waited out: the error is raised at once, for the caller to decide.
        jitter_s: Up to this many seconds are added at random to each ``Retry-After``.
        backoff_s: First wait when there is no ``Retry-After`` (a connection refused, a
            proxy's 503), doubled on each attempt, half of it random.
    """

    max_attempts: int = 8
    max_wait_s: float = 120.0
    jitter_s: float = 1.0
    backoff_s: float = 1.0

    def delay(self, attempt: int, error: CutoutClientError) -> float | None:
        """Seconds to wait before the attempt after ``attempt``, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if isinstance(error, CutoutAPIError):
            if error.status not in RETRY_STATUSES:
                return None
            if error.retry_after is not None:
                if error.retry_after > self.max_wait_s:
                    return None
                return error.retry_after + random.uniform(0.0, self.jitter_s)
        base = min(self.max_wait_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(base / 2, base)


def request_body(
    image_url: str | None = None,
    file: bytes | Path | str | None = None,
    sku: str | None = None,
    force_rmbg: bool = False,
    preserve_alpha: bool = False,
    content_moderation: bool = False,
) -> dict[str, Any]:
    """The JSON body of ``POST /product/cutout``.

    Args:
        file: The image's bytes, a path to it, or its base64 text.
    """
    body: dict[str, Any] = {"force_rmbg": force_rmbg, "preserve_alpha": preserve_alpha, "content_moderation": content_moderation}
    if sku is not None:
        body["sku"] = sku
    if image_url is not None:
        body["image_url"] = image_url
    elif file is not None:
        if isinstance(file, Path):
            file = file.read_bytes()
        body["file"] = base64.b64encode(file).decode("ascii") if isinstance(file, bytes) else file
    else:
        raise ValueError("give image_url or file")
    return body


class _Base:
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        """Args:
        base_url: The service, e.g. ``http://127.0.0.1:8000``.
        token: The organization's API token (sent as ``api_token``).
        timeout_s: Longest wait for one answer, seconds.
        connect_timeout_s: Longest wait for a connection, seconds.
        retry: When to try again (default :class:`RetryPolicy`).
        on_retry: Called before each wait, e.g. to log or count retries.
        """
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry

    def _headers(self) -> dict[str, str]:
        return {"api_token": self.token} if self.token else {}

    def _next_wait(self, attempt: int, error: CutoutClientError) -> float | None:
        wait = self.retry.delay(attempt, error)
        if wait is not None and self.on_retry is not None:
            retry_after = error.retry_after if isinstance(error, CutoutAPIError) else None
            self.on_retry(RetryEvent(attempt, error, retry_after, wait))
        return wait


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    raise CutoutAPIError.from_response(response)


def _unreachable(exc: httpx.TransportError) -> ServiceUnreachable:
    return ServiceUnreachable(f"no answer from the service ({type(exc).__name__}: {exc})")


def _retryable_transport_error(exc: httpx.TransportError) -> bool:
    """Only failures before the request was sent: a cutout is never run twice by a retry."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


class CutoutClient(_Base):
    """A blocking client; safe to share between threads. Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self, base_url: str = DEFAULT_URL, token: str | None = None, *, transport: httpx.BaseTransport | None = None, **kw: Any
    ) -> None:
        """Args: as :class:`_Base`; ``transport`` replaces httpx's (tests)."""
        super().__init__(base_url, token, **kw)
        self._http = httpx.Client(timeout=self.timeout, transport=transport)

    def __enter__(self) -> CutoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        attempt = 1
        while True:
            try:
                return _check(self._http.request(method, url, **kw))
            except httpx.TransportError as exc:
                error: CutoutClientError = _unreachable(exc)
                if not _retryable_transport_error(exc):
                    raise error from exc
            except CutoutAPIError as exc:
                error = exc
            wait = self._next_wait(attempt, error)
            if wait is None:
                raise error
            time.sleep(wait)
            attempt += 1

    def cutout(self, image_url: str | None = None, file: bytes | Path | str | None = None, **options: Any) -> CutoutResult:
        """Cut out one image: ``POST /product/cutout``.

        Args:
            image_url: The image's URL (the service downloads it).
            file: The image's bytes, a path to it, or its base64 text (when ``image_url`` is None).
            **options: ``sku``, ``force_rmbg``, ``preserve_alpha``, ``content_moderation``.

        Raises:
            CutoutAPIError: The service's error, once the retries are spent.
            ServiceUnreachable: No answer.
        """
        response = self._send(
            "POST", self.base_url + CUTOUT_PATH, json=request_body(image_url, file, **options), headers=self._headers()
        )
        return CutoutResult.model_validate_json(response.content)

    def download(self, result_url: str) -> bytes:
        """The PNG at a ``result_url`` (signed: no token needed)."""
        return self._send("GET", result_url).content

    def health(self) -> Health:
        """``GET /healthz``: the state of each stage (a 503 is an answer here, not an error)."""
        try:
            response = self._http.get(self.base_url + "/healthz")
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return Health.model_validate_json(response.content)


class AsyncCutoutClient(_Base):
    """The asyncio client. Use it as an async context manager, or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kw: Any,
    ) -> None:
        """Args: as :class:`_Base`; ``transport`` replaces httpx's (tests)."""
        super().__init__(base_url, token, **kw)
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=transport)

    async def __aenter__(self) -> AsyncCutoutClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        attempt = 1
        while True:
            try:
                return _check(await self._http.request(method, url, **kw))
            except httpx.TransportError as exc:
                error: CutoutClientError = _unreachable(exc)
                if not _retryable_transport_error(exc):
                    raise error from exc
            except CutoutAPIError as exc:
                error = exc
            wait = self._next_wait(attempt, error)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

    async def cutout(self, image_url: str | None = None, file: bytes | Path | str | None = None, **options: Any) -> CutoutResult:
        """As :meth:`CutoutClient.cutout`."""
        body = request_body(image_url, file, **options)
        response = await self._send("POST", self.base_url + CUTOUT_PATH, json=body, headers=self._headers())
        return CutoutResult.model_validate_json(response.content)

    async def download(self, result_url: str) -> bytes:
        """As :meth:`CutoutClient.download`."""
        return (await self._send("GET", result_url)).content

    async def health(self) -> Health:
        """As :meth:`CutoutClient.health`."""
        try:
            response = await self._http.get(self.base_url + "/healthz")
        except httpx.TransportError as exc:
            raise _unreachable(exc) from exc
        return Health.model_validate_json(response.content)
