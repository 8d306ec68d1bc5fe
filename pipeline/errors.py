"""Typed errors: each carries its HTTP status, a public message and the parameter at fault.

One place (``to_body``) turns an error into the JSON error body of docs/api.md. The internal message is
for logs only and never reaches a client.
"""

from __future__ import annotations

from typing import Any


class CutoutError(Exception):
    """An error the client caused or must know about, with its HTTP mapping.

    Attributes:
        status: HTTP status code.
        reason: Machine-readable reason, stable across releases.
        message: Human-readable message, safe to show to the client.
        parameter: The request field at fault, or None.
        details: Extra public, JSON-serialisable details.
        internal: Extra context for logs only; never sent to the client.
        retry_after: Seconds for a ``Retry-After`` header, or None.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        parameter: str | None = None,
        details: dict[str, Any] | None = None,
        internal: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.parameter = parameter
        self.details = details or {}
        self.internal = internal
        self.retry_after = retry_after

    def __reduce__(self):  # keeps the type and fields across process boundaries (Ray)
        return (
            self.__class__,
            (
                self.status,
                self.reason,
                self.message,
                self.parameter,
                self.details,
                self.internal,
                self.retry_after,
            ),
        )

    def __repr__(self) -> str:
        return f"CutoutError({self.status}, {self.reason!r}, {self.message!r}, parameter={self.parameter!r})"

    def to_body(self) -> dict[str, Any]:
        """Return the public JSON error body (docs/api.md, Errors)."""
        return {
            "error": {
                "code": self.status,
                "reason": self.reason,
                "message": self.message,
                "parameter": self.parameter,
                "details": self.details,
            }
        }


def bad_request(reason: str, message: str, parameter: str | None = None, **kw: Any) -> CutoutError:
    """A 400: malformed input."""
    return CutoutError(400, reason, message, parameter, **kw)


def unauthorized() -> CutoutError:
    """A 401; says nothing about why, so that tokens cannot be probed."""
    return CutoutError(401, "unauthorized", "A valid api_token header is required.", "api_token")


def too_large(reason: str, message: str, parameter: str | None, **kw: Any) -> CutoutError:
    """A 413: over a byte or pixel limit."""
    return CutoutError(413, reason, message, parameter, **kw)


def unsupported_format(parameter: str, detected: str | None = None) -> CutoutError:
    """A 415: not JPEG, PNG or WebP."""
    details = {"detected": detected} if detected else {}
    return CutoutError(
        415,
        "unsupported_format",
        "The image must be JPEG, PNG or WebP.",
        parameter,
        details=details,
    )


def moderation_failed(stage: str, categories: list[str]) -> CutoutError:
    """A 422: the input or the output failed content moderation."""
    parameter = "image_url/file" if stage == "input" else None
    return CutoutError(
        422,
        "content_moderation_failed",
        f"The {stage} image failed content moderation.",
        parameter,
        details={"stage": stage, "categories": sorted(categories)},
    )


def no_product_found() -> CutoutError:
    """A 422: the result has no foreground at all."""
    return CutoutError(422, "no_product_found", "No product was found in the image.", None)


def download_failed(message: str, internal: str | None = None) -> CutoutError:
    """A 460: the image could not be downloaded."""
    return CutoutError(460, "failed_to_download_image", message, "image_url", internal=internal)


def unavailable(message: str, retry_after: int = 1, internal: str | None = None, reason: str = "unavailable") -> CutoutError:
    """A 503: a stage unavailable (``unavailable``) or the service at capacity (``overloaded``)."""
    return CutoutError(503, reason, message, None, internal=internal, retry_after=retry_after)


def internal_error() -> CutoutError:
    """A 500: a bug. The public body says nothing internal."""
    return CutoutError(500, "internal_error", "Internal error.", None)
