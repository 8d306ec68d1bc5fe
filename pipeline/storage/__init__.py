"""Result storage: where finished cutouts go, and the URLs that serve them.

Two backends implement :class:`ResultStorage`: :class:`LocalStorage` (a folder; the service
serves HMAC-signed URLs itself) and :class:`GCSStorage` (a bucket; GCS serves V4 signed URLs).
:func:`open_storage` picks one from the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.storage.base import (
    CACHE_FOLDER,
    OBJECT_NAME,
    RESULTS_ROUTE,
    ResultStorage,
    StorageConfigError,
    cache_object_name,
    content_type_of,
    new_object_name,
)
from pipeline.storage.gcs import GCSStorage, storage_client
from pipeline.storage.local import LocalStorage, load_or_create_key

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = [
    "CACHE_FOLDER",
    "OBJECT_NAME",
    "RESULTS_ROUTE",
    "GCSStorage",
    "LocalStorage",
    "ResultStorage",
    "StorageConfigError",
    "cache_object_name",
    "content_type_of",
    "load_or_create_key",
    "new_object_name",
    "open_storage",
    "storage_client",
]


def open_storage(settings: Settings) -> ResultStorage:
    """The configured result storage: :class:`GCSStorage` for ``gs://``, else :class:`LocalStorage`."""
    if settings.uses_gcs:
        return GCSStorage(
            str(settings.storage_uri),
            settings.result_url_ttl_s,
            timeout_s=settings.gcs_timeout_s,
            deadline_s=settings.gcs_deadline_s,
            iam_endpoint=settings.gcs_iam_endpoint,
            service_account=settings.gcs_signing_service_account,
        )
    key = settings.url_signing_key.get_secret_value().encode() if settings.url_signing_key else None
    key = key or load_or_create_key(settings.data_dir / "url-signing.key")
    return LocalStorage(
        settings.results_dir, key, settings.result_url_ttl_s, settings.public_base_url, cache_s=settings.result_cache_s
    )
