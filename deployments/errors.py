"""Turning whatever a stage raised into the typed error the client sees."""

from __future__ import annotations

import asyncio
import logging

from pipeline.errors import CutoutError, internal_error, unavailable

logger = logging.getLogger("ray.serve")


def _unavailable_types() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    names = ("BackPressureError", "DeploymentUnavailableError", "RayServeException")
    serve_types = tuple(getattr(sex, n) for n in names if hasattr(sex, n))
    ray_names = (
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "ObjectLostError",
        "OwnerDiedError",
        "GetTimeoutError",
    )
    ray_types = tuple(getattr(rex, n) for n in ray_names if hasattr(rex, n))
    return serve_types + ray_types + (asyncio.TimeoutError, TimeoutError)


def lost_object(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says a Ray object was lost or freed before it was read."""
    from ray.exceptions import ObjectLostError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ObjectLostError):
            return True
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return False


def replica_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the replica serving a call died or became unreachable."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (RayActorError, ActorUnavailableError)):
            return True
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return False


def to_cutout_error(exc: BaseException, request_id: str) -> CutoutError:
    """The client-facing error for ``exc``; unexpected ones are logged and become a bare 500.

    Ray wraps an exception raised in another replica (``RayTaskError``, possibly nested); the
    original :class:`CutoutError` is found by following ``cause``.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        cause = getattr(seen, "cause", None)
        if isinstance(seen, CutoutError) and not isinstance(cause, BaseException):
            return CutoutError(*seen.__reduce__()[1])
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    if isinstance(exc, _unavailable_types()):
        logger.warning("request %s: stage unavailable: %s", request_id, type(exc).__name__)
        return unavailable("The service is busy or a stage is unavailable; try again.", retry_after=2)
    logger.error("request %s: unexpected %s", request_id, type(exc).__name__, exc_info=exc)
    return internal_error()
