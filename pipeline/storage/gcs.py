"""Results in Google Cloud Storage, with V4 signed URLs.

Signing is chosen automatically:
- a service-account key (``GOOGLE_APPLICATION_CREDENTIALS`` naming a key file) signs locally;
- otherwise (Workload Identity on GKE: no private key) the IAM Credentials ``signBlob`` API
  signs, as the service account the pod runs as, with the ambient access token;
- if neither can sign, the start-up check says so and the uploader reports unhealthy.

Uploads use ``if_generation_match=0`` (create-only), so the library's retries are safe: a
retried upload can never overwrite or duplicate. Single-request (multipart) and resumable
uploads only make an object visible once complete, so a failure leaves nothing behind.

The start-up check writes nothing: it asks the bucket which of the permissions the service
needs its identity holds (``testIamPermissions``) and signs a URL. The identity needs object
create and get only (cluster/gcs/setup.sh); it never overwrites or deletes a result.

``STORAGE_EMULATOR_HOST`` (tests, local development) points the client at an emulator and
uses anonymous credentials for it; signed URLs then point at the emulator too.
:func:`storage_client` is the one place that builds a client.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.errors import CutoutError, unavailable
from pipeline.storage.base import ResultStorage, StorageConfigError, content_type_of, new_object_name

IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
GCS_ENDPOINT = "https://storage.googleapis.com"
logger = logging.getLogger(__name__)
# What the service does with results: create them, and read them (metadata, signed GET URLs).
# cluster/gcs/setup.sh grants these (objectCreator, objectViewer) and neither update nor delete.
REQUIRED_PERMISSIONS = ("storage.objects.create", "storage.objects.get")


def emulator_host() -> str | None:
    """``STORAGE_EMULATOR_HOST`` without a trailing slash, or None when it is not set."""
    return os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/") or None


def storage_client(emulator: str | None = None) -> Any:
    """A google-cloud-storage client.

    Args:
        emulator: An emulator's base URL (default: ``STORAGE_EMULATOR_HOST``). With one, the
            client talks to it with anonymous credentials; without, to GCS with the ambient
            credentials.
    """
    from google.cloud import storage

    emulator = emulator or emulator_host()
    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator})
    return storage.Client()


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/prefix`` -> (bucket, prefix without slashes at the ends)."""
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


class IamSigner:
    """Signs bytes with the IAM Credentials ``signBlob`` API (no private key needed).

    Implements the two members google-cloud-storage's V4 signing uses (``signer_email``,
    ``sign_bytes``) through :func:`iam_signing_credentials`.

    Args:
        email: The service account that signs.
        credentials: Credentials with an access token allowed to sign as it
            (``roles/iam.serviceAccountTokenCreator`` on itself).
        endpoint: The IAM Credentials API base URL.
        timeout_s: Per-request timeout.
    """

    def __init__(self, email: str, credentials: Any, endpoint: str = IAM_ENDPOINT, timeout_s: float = 10.0) -> None:
        self.email = email
        self.credentials = credentials
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s

    def sign(self, message: bytes) -> bytes:
        """The RSA-SHA256 signature of ``message`` by the service account's Google-managed key."""
        import google.auth.transport.requests
        import requests

        if not getattr(self.credentials, "valid", False):
            self.credentials.refresh(google.auth.transport.requests.Request())
        response = requests.post(
            f"{self.endpoint}/v1/projects/-/serviceAccounts/{self.email}:signBlob",
            json={"payload": base64.b64encode(message).decode()},
            headers={"Authorization": f"Bearer {self.credentials.token}"},
            timeout=self.timeout_s,
        )
        if response.status_code != 200:
            raise StorageConfigError(f"IAM signBlob as {self.email} answered {response.status_code}")
        return base64.b64decode(response.json()["signedBlob"])


def iam_signing_credentials(signer: IamSigner) -> Any:
    """Wrap an :class:`IamSigner` as ``google.auth.credentials.Signing`` for the storage library."""
    import google.auth.credentials

    class _IamSigning(google.auth.credentials.Signing):
        @property
        def signer_email(self) -> str:
            return signer.email

        @property
        def signer(self) -> Any:
            return signer

        def sign_bytes(self, message: bytes) -> bytes:
            return signer.sign(message)

    return _IamSigning()


def _key_file_credentials() -> Any | None:
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path or not Path(path).is_file():
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        logger.warning(
            "GOOGLE_APPLICATION_CREDENTIALS: cannot read %s as JSON (%s); trying ambient credentials", path, type(exc).__name__
        )
        return None
    if info.get("type") != "service_account" or "private_key" not in info:
        return None
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_info(info)


def choose_signer(iam_endpoint: str = IAM_ENDPOINT, service_account: str | None = None) -> tuple[Any, str]:
    """Signing credentials and a description (``key`` or ``iam``), by what the environment has.

    Raises:
        StorageConfigError: When nothing can sign.
    """
    key = _key_file_credentials()
    if key is not None:
        return key, f"service-account key ({key.service_account_email})"
    try:
        import google.auth

        ambient, _project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except Exception as exc:
        raise StorageConfigError(
            "cannot sign result URLs: no service-account key (GOOGLE_APPLICATION_CREDENTIALS) and no "
            f"ambient Google credentials for IAM signBlob ({type(exc).__name__})"
        ) from None
    email = service_account or getattr(ambient, "service_account_email", None)
    if not email or email == "default":
        try:
            import google.auth.transport.requests

            ambient.refresh(google.auth.transport.requests.Request())
            email = service_account or getattr(ambient, "service_account_email", None)
        except Exception as exc:
            logger.warning("could not learn the ambient credentials' service account: %s", type(exc).__name__)
            email = None
    if not email or email == "default":
        raise StorageConfigError(
            "cannot sign result URLs: the ambient credentials name no service account; set CUTOUT_GCS_SIGNING_SERVICE_ACCOUNT"
        )
    return iam_signing_credentials(IamSigner(email, ambient, iam_endpoint)), f"IAM signBlob as {email}"


class GCSStorage(ResultStorage):
    """Stores results in ``gs://BUCKET/PREFIX`` and returns V4 signed GET URLs.

    Args:
        uri: ``gs://BUCKET/PREFIX``.
        ttl_s: URL lifetime, and how long a cache may keep a result (deletion is the
            bucket's lifecycle rule, see cluster/gcs/).
        timeout_s: Timeout of one request to GCS.
        deadline_s: Deadline of an upload including the library's retries.
        signing: Signing credentials (default: :func:`choose_signer`).
        iam_endpoint: IAM Credentials API base URL for signBlob.
        service_account: The signing service account for IAM signBlob (default: ambient).
    """

    def __init__(
        self,
        uri: str,
        ttl_s: int,
        timeout_s: float = 10.0,
        deadline_s: float = 30.0,
        signing: Any | None = None,
        iam_endpoint: str = IAM_ENDPOINT,
        service_account: str | None = None,
    ) -> None:
        self.bucket_name, self.prefix = parse_gs_uri(uri)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.client = storage_client()
        self.bucket = self.client.bucket(self.bucket_name)
        self._signing = signing
        self._signing_info = "given credentials"
        self._iam_endpoint = iam_endpoint
        self._service_account = service_account
        self.endpoint = emulator_host() or GCS_ENDPOINT

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self.deadline_s)

    def _object_name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, org: str, png: bytes, metadata: dict[str, Any], now: float | None = None, fmt: str = "png") -> str:
        """Upload a result file (create-only) and return its object name.

        Raises:
            CutoutError: 503 with ``Retry-After`` when GCS fails or is too slow.
        """
        name = self._object_name(new_object_name(org, time.time() if now is None else now, fmt))
        self._upload(name, png, metadata)
        return name

    def put_named(self, name: str, data: bytes, metadata: dict[str, Any]) -> bool:
        """Upload ``name`` (a name without the folder prefix) unless it exists.

        ``if_generation_match=0`` makes GCS refuse the upload when the object exists (412), so two
        replicas storing the same cached result leave exactly one object, written whole.
        """
        from google.api_core.exceptions import PreconditionFailed

        if self.find(name) is not None:  # the usual case of a race lost long ago: no upload at all
            return False
        try:
            self._upload(self._object_name(name), data, metadata)
        except PreconditionFailed:
            return False
        return True

    def _upload(self, name: str, data: bytes, metadata: dict[str, Any]) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(name)
        blob.metadata = {k: str(v) for k, v in metadata.items() if v is not None}
        blob.cache_control = f"private, max-age={self.ttl_s}"  # no cache outlives the URL
        try:
            blob.upload_from_string(
                data,
                content_type=content_type_of(name),
                if_generation_match=0,
                timeout=self.timeout_s,
                retry=self._retry(),
            )
        except PreconditionFailed:
            raise
        except Exception as exc:
            raise unavailable(
                "Result storage is unavailable; try again.", retry_after=5, internal=f"GCS upload: {type(exc).__name__}"
            ) from None

    def stored_name(self, name: str) -> str:
        """``name`` inside the configured folder."""
        return self._object_name(name)

    def read(self, name: str) -> bytes:
        """The bytes of ``name`` (a full object name).

        Raises:
            CutoutError: 404 when it is gone, 503 when GCS fails.
        """
        from google.api_core.exceptions import NotFound

        try:
            return self.bucket.blob(name).download_as_bytes(timeout=self.timeout_s, retry=self._retry())
        except NotFound:
            raise CutoutError(404, "result_not_found", "The result no longer exists.", None) from None
        except Exception as exc:
            raise unavailable(
                "Result storage is unavailable; try again.", retry_after=5, internal=f"GCS read: {type(exc).__name__}"
            ) from None

    def find(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name`` (without the folder prefix), or None when it does not exist.

        Raises:
            CutoutError: 503 when GCS fails.
        """
        try:
            blob = self.bucket.get_blob(self._object_name(name), timeout=self.timeout_s)
        except Exception as exc:
            raise unavailable(
                "Result storage is unavailable; try again.", retry_after=5, internal=f"GCS lookup: {type(exc).__name__}"
            ) from None
        if blob is None:
            return None
        created = int(blob.time_created.timestamp()) if blob.time_created else 0
        return {**(blob.metadata or {}), "content_type": blob.content_type, "created": created, "name": blob.name}

    def _signer(self) -> Any:
        if self._signing is None:
            self._signing, self._signing_info = choose_signer(self._iam_endpoint, self._service_account)
        return self._signing

    def signed_url(self, name: str) -> str:
        """A V4 signed GET URL valid for ``ttl_s`` seconds from now.

        Raises:
            CutoutError: 503 when signing fails (IAM unreachable).
        """
        try:
            return self.bucket.blob(name).generate_signed_url(
                version="v4",
                expiration=dt.timedelta(seconds=self.ttl_s),
                method="GET",
                credentials=self._signer(),
                api_access_endpoint=self.endpoint,
            )
        except StorageConfigError as exc:
            raise unavailable("Result URLs cannot be signed right now; try again.", retry_after=5, internal=str(exc)) from None
        except Exception as exc:
            raise unavailable(
                "Result URLs cannot be signed right now; try again.", retry_after=5, internal=type(exc).__name__
            ) from None

    def metadata(self, name: str) -> dict[str, Any]:
        """The metadata stored with ``name``."""
        blob = self.bucket.get_blob(name, timeout=self.timeout_s)
        return {"content_type": blob.content_type, **(blob.metadata or {})}

    def read_signed(self, name: str, expires: str | None, signature: str | None) -> bytes:
        """Not served by the service: GCS serves its own signed URLs."""
        raise CutoutError(404, "not_found", "No such route.", None)

    def cleanup(self) -> int:
        """Nothing to do: the bucket's lifecycle rule deletes results (cluster/gcs/)."""
        return 0

    def check(self) -> str:
        """Start-up check, writing nothing: the bucket, the permissions the service needs, signing.

        The permissions are asked of the bucket (``testIamPermissions``) rather than tried with
        a probe object, which the service could not delete.

        Returns:
            A description of how URLs are signed.

        Raises:
            StorageConfigError: Naming what is wrong (missing bucket, missing permission, cannot sign).
        """
        from google.api_core import exceptions as gexc

        where = f"gs://{self.bucket_name}"
        try:
            held = set(self.bucket.test_iam_permissions(list(REQUIRED_PERMISSIONS), timeout=self.timeout_s, retry=self._retry()))
        except gexc.NotFound:
            raise StorageConfigError(f"CUTOUT_STORAGE_URI: bucket {where} does not exist") from None
        except gexc.Forbidden:
            raise StorageConfigError(f"CUTOUT_STORAGE_URI: no access to {where}") from None
        except Exception as exc:
            raise StorageConfigError(f"CUTOUT_STORAGE_URI: cannot reach {where}: {type(exc).__name__}") from None
        missing = [p for p in REQUIRED_PERMISSIONS if p not in held]
        if missing:
            raise StorageConfigError(
                f"CUTOUT_STORAGE_URI: the service's identity lacks {', '.join(missing)} on {where} "
                "(cluster/gcs/setup.sh grants roles/storage.objectCreator and roles/storage.objectViewer)"
            )
        signing = self._signer()
        try:
            self.bucket.blob(self._object_name("startup-check.png")).generate_signed_url(
                version="v4", expiration=dt.timedelta(seconds=60), credentials=signing, api_access_endpoint=self.endpoint
            )
        except Exception as exc:
            raise StorageConfigError(f"cannot sign result URLs with {self._signing_info}: {type(exc).__name__}: {exc}") from None
        return self._signing_info
