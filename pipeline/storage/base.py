"""What every result storage does, and the one format of result names.

A result is named ``ORG/YYYY/MM/DD/<128-bit random id>.png`` (UTC day of creation): the
organization prefix keeps one organization's results apart, and the random id makes a name
unguessable. A backend may put its own prefix in front (the GCS folder).
"""

from __future__ import annotations

import abc
import datetime as dt
import re
import secrets
from typing import Any

RESULTS_ROUTE = "/results/"
OBJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.png$")


def new_object_name(org: str, now: float) -> str:
    """A fresh result name for ``org`` on the UTC day of ``now`` (matches :data:`OBJECT_NAME`)."""
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y/%m/%d")
    return f"{org}/{day}/{secrets.token_hex(16)}.png"


class ResultStorage(abc.ABC):
    """Stores finished cutouts and hands out URLs that expire.

    Used by the uploader (:class:`pipeline.service.Finisher`): ``check`` at start-up, ``put``
    and ``signed_url`` per request, ``cleanup`` periodically, and ``read_signed`` for the
    ingress's ``GET /results/...``.

    Attributes:
        ttl_s: Lifetime of a signed URL in seconds.
    """

    ttl_s: int

    @abc.abstractmethod
    def put(self, org: str, png: bytes, metadata: dict[str, Any], now: float | None = None) -> str:
        """Store a PNG with its metadata under a new name; return the name.

        Raises:
            CutoutError: 503 when the storage is unavailable.
        """

    @abc.abstractmethod
    def signed_url(self, name: str) -> str:
        """A URL that serves ``name`` for ``ttl_s`` seconds from now."""

    @abc.abstractmethod
    def read_signed(self, name: str, expires: str | None, signature: str | None) -> bytes:
        """The object behind a URL the service serves itself.

        Raises:
            CutoutError: 403 for a bad or expired signature, 404 when there is no such object
                (or the backend's URLs are not served by the service).
        """

    @abc.abstractmethod
    def metadata(self, name: str) -> dict[str, Any]:
        """The metadata stored with ``name``, with its ``content_type``."""

    @abc.abstractmethod
    def cleanup(self) -> int:
        """Delete expired results, where the service does it itself; return how many."""

    @abc.abstractmethod
    def check(self) -> str:
        """Start-up check; return a description of the storage for the log.

        Raises:
            StorageConfigError: Naming what is wrong.
        """


class StorageConfigError(RuntimeError):
    """The storage cannot be used (missing bucket, missing permission, URLs cannot be signed)."""
