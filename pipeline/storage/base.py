"""What every result storage does, and the one format of result names.

A result is named ``ORG/YYYY/MM/DD/<128-bit random id>.<ext>`` (UTC day of creation): the
organization prefix keeps one organization's results apart, and the random id makes a name
unguessable. A result kept for the result cache (:mod:`pipeline.cache`) is named
``ORG/cache/<SHA-256 key>.<ext>`` instead: the same request finds it again by that name, on any
replica and after restarts. ``<ext>`` is the format: ``png``, ``webp`` or ``jpg``. A backend
may put its own prefix in front (the GCS folder).
"""

from __future__ import annotations

import abc
import datetime as dt
import re
import secrets
from typing import Any

RESULTS_ROUTE = "/results/"
OBJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/(\d{4}/\d{2}/\d{2}/[0-9a-f]{32}|cache/[0-9a-f]{64})\.(png|webp|jpg)$")
CACHE_FOLDER = "cache"
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


def new_object_name(org: str, now: float, fmt: str = "png") -> str:
    """A fresh result name for ``org`` on the UTC day of ``now`` (matches :data:`OBJECT_NAME`)."""
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y/%m/%d")
    return f"{org}/{day}/{secrets.token_hex(16)}.{fmt}"


def cache_object_name(org: str, key: str, fmt: str) -> str:
    """The name of the cached result with ``key`` (64 hex digits) for ``org``."""
    return f"{org}/{CACHE_FOLDER}/{key}.{fmt}"


def content_type_of(name: str) -> str:
    """The media type of a result, from its name's extension."""
    return CONTENT_TYPES.get(name.rpartition(".")[2], "application/octet-stream")


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
    def put(self, org: str, png: bytes, metadata: dict[str, Any], now: float | None = None, fmt: str = "png") -> str:
        """Store a result file (of format ``fmt``) with its metadata under a new name; return the name.

        Raises:
            CutoutError: 503 when the storage is unavailable.
        """

    @abc.abstractmethod
    def put_named(self, name: str, data: bytes, metadata: dict[str, Any]) -> bool:
        """Create ``name`` (the format is its extension) unless it exists; never overwrite.

        The object appears whole or not at all, so a concurrent reader never sees part of it.

        Returns:
            True when this call created it, False when it already existed.

        Raises:
            CutoutError: 503 when the storage is unavailable.
        """

    @abc.abstractmethod
    def read(self, name: str) -> bytes:
        """The bytes of a stored object (a name as :meth:`put` or :meth:`stored_name` gives it).

        Raises:
            CutoutError: 404 when it is gone, 503 when the storage is unavailable.
        """

    def stored_name(self, name: str) -> str:
        """The full name of an object given to :meth:`put_named` (what :meth:`signed_url` takes)."""
        return name

    @abc.abstractmethod
    def find(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name`` (with ``content_type`` and ``created``, Unix seconds), or None when absent.

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
