"""Serve's HTTP proxy, made to answer a lost ingress replica as the API says: 503 with ``Retry-After``.

When the ingress replica that holds a request dies (``kill -9``, its node lost, out of memory),
Serve's proxy gets the actor's death instead of a response and lets its HTTP server answer a
plain-text ``500 Internal Server Error``: a status this API never gives, and one that clients and
load balancers treat as a bug, not as "try again". Serve lets a deployment add Starlette
middlewares to its proxies by import path, ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``:
:data:`IMPORT_PATH` names :func:`middlewares`, whose one middleware answers any request that the
proxy ends *without having started a response* with the API's 503 ``unavailable`` and
``Retry-After: 1`` (in remove.bg's error shape on ``/v1.0/removebg``). The application itself
always answers (its errors are JSON with their own statuses), so the proxy ending a request
silently means the replica was lost, and a retry reaches a live one.

``serve.env`` (``make serve``, the tests) and the cluster manifests (``cluster/render.py``) set
the variable. The module is imported in the proxy's process: it needs the project installed
there (it is, in the image and in ``make venv``) and imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

IMPORT_PATH = "deployments.proxy:middlewares"
"""The value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` that installs :func:`middlewares`."""

ENV_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"

RETRY_AFTER_S = 1
"""What the 503 tells the client to wait: Serve routes the retry to another (or a restarted) replica."""

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def lost_replica_reply(path: str, request_id: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The 503 for a request whose replica was lost: status, headers and body.

    Args:
        path: The request's path: ``/v1.0/removebg`` answers in remove.bg's error shape.
        request_id: Sent back as ``X-Request-Id`` when known.
    """
    from pipeline.errors import unavailable

    error = unavailable(
        "The replica serving this request stopped before it answered; try again.",
        retry_after=RETRY_AFTER_S,
    )
    if path.rstrip("/").endswith("/v1.0/removebg"):
        from pipeline.removebg import error_body

        body = error_body(error)
    else:
        body = error.to_body()
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    return 503, headers, data


class LostReplicaAs503:
    """ASGI middleware: a request the wrapped proxy ends without a response gets the API's 503."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
        if started:
            return
        # Serve's own request-id middleware (inside this one) has put the id in the scope's headers.
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id")
        status, reply_headers, data = lost_replica_reply(
            scope.get("path", ""), request_id.decode("latin-1") if request_id else None
        )
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})


EarlyHook = Callable[[Scope], Awaitable[Any]]
_early_answer: EarlyHook | None = None


def answer_early_with(hook: EarlyHook | None) -> None:
    """Register the ingress replica's early answer (None: remove it).

    With Serve's direct ingress (``make serve``), the ingress replica's own HTTP server runs
    these middlewares too, in the replica's process and on its event loop. There
    :class:`EarlyAnswer` asks the registered hook first: it returns a Starlette response for a
    request it can answer from memory (a 429 for an organization the shared limiter refused
    moments ago), or None. That answer skips Serve's request path, which costs the replica
    most of a refusal's CPU (docs/benchmarks.md). In Serve's proxy no hook is registered and
    every request goes on.
    """
    global _early_answer
    _early_answer = hook


class EarlyAnswer:
    """ASGI middleware: the registered hook's answer, if it has one, before the wrapped app."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = _early_answer
        if hook is not None and scope.get("type") == "http":
            response = await hook(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def middlewares() -> list[Any]:
    """What Serve's proxy (and, with direct ingress, the ingress replica's HTTP server) calls
    through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    from starlette.middleware import Middleware

    return [Middleware(EarlyAnswer), Middleware(LostReplicaAs503)]
