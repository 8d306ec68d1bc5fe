"""One storage test suite for both backends: local disk, and GCS against a real emulator server.

The emulator (gcp-storage-emulator, started by the tests on loopback) checks neither
signatures nor expiry, so these tests check them themselves: they recompute the V4
string-to-sign from the URL and verify the signature with the public half of a locally
generated service-account key, and they check X-Goog-Date / X-Goog-Expires. Google's IAM
signBlob endpoint cannot exist here; a stand-in HTTP server signs with that same key, and the
test that uses it says so. Nor does the emulator check permissions: a proxy in front of it
refuses what the roles cluster/gcs/setup.sh grants do not allow.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import CutoutError
from pipeline.settings import load_settings
from pipeline.storage import (
    GCSStorage,
    LocalStorage,
    ResultStorage,
    StorageConfigError,
    load_or_create_key,
    open_storage,
)
from pipeline.storage.gcs import IamSigner, iam_signing_credentials
from tests.conftest import Emulator

PNG = b"\x89PNG\r\n\x1a\n" + b"result-bytes" * 10
EMAIL = "cutout-signer@test-project.iam.gserviceaccount.com"
TTL = 3600
SETUP_SH = Path(__file__).resolve().parents[1] / "cluster" / "gcs" / "setup.sh"


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]):
    """Serve ``handler`` on a loopback port in a thread; yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_file(rsa_key, tmp_path_factory):
    """A service-account key file like the one Google issues (the key is made here)."""
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path_factory.mktemp("sa") / "key.json"
    path.write_text(json.dumps(info))
    return path


def verify_v4(url: str, public_key, now: float | None = None) -> dict[str, str]:
    """Check a V4 signed URL's signature and expiry as GCS would; return its parameters."""
    u = urlparse(url)
    raw = [p.split("=", 1) for p in u.query.split("&")]
    params = {k: unquote(v) for k, v in raw}
    assert params["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(raw) if k != "X-Goog-Signature")
    canonical_request = "\n".join(["GET", u.path, canonical_query, f"host:{u.netloc}", "", "host", "UNSIGNED-PAYLOAD"])
    scope = params["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["GOOG4-RSA-SHA256", params["X-Goog-Date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    public_key.verify(bytes.fromhex(params["X-Goog-Signature"]), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    issued = dt.datetime.strptime(params["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    if now is not None and now > issued + int(params["X-Goog-Expires"]):
        raise PermissionError("expired")
    return params


class LocalBackend:
    name = "local"

    def __init__(self, tmp_path):
        self.storage = LocalStorage(tmp_path / "results", load_or_create_key(tmp_path / "key"), TTL, "http://cutout.test")

    def get(self, url, now=None):
        u = urlparse(url)
        q = parse_qs(u.query)
        return self.storage.read_signed(u.path[len("/results/") :], q["expires"][0], q["signature"][0], now=now)

    def verify(self, url, now=None):
        self.get(url, now)

    def exists(self, name):
        return (self.storage.root / name).exists()


class GCSBackend:
    name = "gcs"

    def __init__(self, emulator, key_file, public_key, monkeypatch):
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        self.storage = GCSStorage(f"gs://{emulator.bucket}/results", TTL, timeout_s=3, deadline_s=5)
        self.emulator = emulator
        self.public_key = public_key

    def get(self, url, now=None):
        self.verify(url, now)
        response = requests.get(url, timeout=10)
        assert response.status_code == 200
        return response.content

    def verify(self, url, now=None):
        try:
            verify_v4(url, self.public_key, now)
        except Exception as exc:  # InvalidSignature, PermissionError
            raise CutoutError(403, "invalid_signature", str(exc) or "bad signature", None) from None

    def exists(self, name):
        return self.emulator.client().bucket(self.emulator.bucket).get_blob(name) is not None


@pytest.fixture(params=["local", "gcs"])
def backend(request, tmp_path, monkeypatch, rsa_key, key_file):
    if request.param == "local":
        return LocalBackend(tmp_path)
    return GCSBackend(request.getfixturevalue("gcs_emulator"), key_file, rsa_key.public_key(), monkeypatch)


def test_put_names_metadata_and_signed_get(backend):
    assert isinstance(backend.storage, ResultStorage)
    name = backend.storage.put("acme", PNG, {"sku": "SKU-9", "request_id": "r-1", "model": "u2netp"})
    prefix = "results/" if backend.name == "gcs" else ""
    assert re.match(rf"^{prefix}acme/\d{{4}}/\d{{2}}/\d{{2}}/[0-9a-f]{{32}}\.png$", name)
    meta = backend.storage.metadata(name)
    assert meta["sku"] == "SKU-9" and meta["request_id"] == "r-1" and meta["model"] == "u2netp"
    assert meta["content_type"] == "image/png"
    url = backend.storage.signed_url(name)
    assert backend.get(url) == PNG


def test_names_are_unique_and_unguessable(backend):
    names = {backend.storage.put("acme", PNG, {}) for _ in range(5)}
    assert len(names) == 5


def test_tampered_and_expired_urls_are_refused(backend):
    name = backend.storage.put("acme", PNG, {})
    url = backend.storage.signed_url(name)
    other = backend.storage.put("other", PNG, {})
    forged = url.replace(name, other)
    with pytest.raises(CutoutError):
        backend.verify(forged)
    backend.verify(url, now=time.time() + TTL - 5)
    with pytest.raises(CutoutError):
        backend.verify(url, now=time.time() + TTL + 5)


def test_url_lifetime_is_the_setting(backend):
    url = backend.storage.signed_url(backend.storage.put("acme", PNG, {}))
    q = parse_qs(urlparse(url).query)
    if backend.name == "gcs":
        assert q["X-Goog-Expires"] == [str(TTL)]
        issued = dt.datetime.strptime(q["X-Goog-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    else:
        issued = int(q["expires"][0]) - TTL
    assert abs(issued - time.time()) < 30


def test_cleanup(backend):
    name = backend.storage.put("acme", PNG, {}, now=time.time())
    if backend.name == "local":
        assert backend.storage.cleanup(now=time.time() + TTL + 1) >= 1 and not backend.exists(name)
    else:
        assert backend.storage.cleanup() == 0 and backend.exists(name)  # the bucket's lifecycle rule deletes


def test_gcs_outage_is_503_quickly_leaves_nothing_and_recovers(gcs_emulator, key_file, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    storage = GCSStorage(f"gs://{gcs_emulator.bucket}/outage", TTL, timeout_s=1, deadline_s=3)
    before = {b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="outage/")}
    gcs_emulator.stop()
    try:
        started = time.monotonic()
        with pytest.raises(CutoutError) as info:
            storage.put("acme", PNG, {})
        assert info.value.status == 503 and info.value.retry_after
        assert time.monotonic() - started < 3 + 3  # the deadline, plus one request timeout
    finally:
        gcs_emulator.start()
    after = {b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix="outage/")}
    assert after == before  # nothing half-written
    assert storage.put("acme", PNG, {}).startswith("outage/acme/")  # resumes by itself


def test_startup_check_passes_and_fails_clearly(gcs_emulator, key_file, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    assert "service-account key" in GCSStorage(f"gs://{gcs_emulator.bucket}/x", TTL).check()
    with pytest.raises(StorageConfigError, match="does not exist"):
        GCSStorage("gs://no-such-bucket-here/x", TTL, timeout_s=2, deadline_s=3).check()


# The permissions of the predefined roles setup.sh may grant, as far as the service's requests go.
ROLE_PERMISSIONS = {
    "roles/storage.objectCreator": {"storage.objects.create"},
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/storage.objectUser": {
        "storage.objects.create",
        "storage.objects.get",
        "storage.objects.list",
        "storage.objects.update",
        "storage.objects.delete",
    },
}


def setup_sh_roles() -> set[str]:
    """The storage roles cluster/gcs/setup.sh grants the service on the bucket."""
    roles = set(re.findall(r"--role=(roles/storage\.\w+)", SETUP_SH.read_text()))
    assert roles <= ROLE_PERMISSIONS.keys(), f"model the permissions of {roles - ROLE_PERMISSIONS.keys()} here"
    return roles


def needed_permission(method: str, path: str) -> str:
    """The IAM permission a JSON API request needs (anything not listed here is refused)."""
    if re.match(r"^/upload/storage/v1/b/[^/]+/o$", path) and method == "POST":
        return "storage.objects.create"
    if re.match(r"^/storage/v1/b/[^/]+/o$", path) and method == "GET":
        return "storage.objects.list"
    if re.match(r"^(/download)?/storage/v1/b/[^/]+/o/.+", path):
        return {"GET": "storage.objects.get", "DELETE": "storage.objects.delete"}.get(method, "storage.objects.update")
    if re.match(r"^/storage/v1/b/[^/]+$", path) and method == "GET":
        return "storage.buckets.get"
    if re.match(r"^/storage/v1/b/[^/]+/iam/testPermissions$", path):
        return ""  # any caller may ask; the answer is filtered below
    return f"unmodelled request {method} {path}"


class _EmulatorProxy(BaseHTTPRequestHandler):
    """A loopback proxy in front of the emulator that a subclass lets add what Cloud Storage does."""

    emulator: Emulator

    def log_message(self, *args):
        pass

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> None:
        error = {"error": {"code": status, "message": message}}
        self._reply(status, [("Content-Type", "application/json")], json.dumps(error).encode())

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.emulator.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        response = conn.getresponse()
        status, headers, content = response.status, response.getheaders(), response.read()
        conn.close()
        return status, headers, content

    def _handle(self) -> None:
        self._reply(*self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0))))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@contextlib.contextmanager
def bucket_with_roles(emulator: Emulator, roles: set[str]):
    """A proxy in front of the emulator that allows only what ``roles`` allow, as GCS IAM would.

    Yields a namespace with ``url`` (for STORAGE_EMULATOR_HOST) and ``refused``: the requests
    answered 403, except the storage library's own background read of the bucket's metadata
    (for its tracing attributes; it expects a 403 without storage.buckets.get and falls back).
    """
    granted = set().union(*(ROLE_PERMISSIONS[r] for r in roles))
    refused = []

    class Proxy(_EmulatorProxy):
        def _handle(self) -> None:
            path, _, query = self.path.partition("?")
            permission = needed_permission(self.command, path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if permission and permission not in granted:
                if permission != "storage.buckets.get":
                    refused.append(f"{self.command} {path} ({permission})")
                self._refuse(403, f"caller does not have {permission} access")
                return
            status, headers, content = self._forward(body)
            if path.endswith("/iam/testPermissions") and status == 200:
                asked = parse_qs(query).get("permissions", [])
                content = json.dumps({"permissions": [p for p in asked if p in granted]}).encode()
            self._reply(status, headers, content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    Proxy.emulator = emulator
    with serve_http(Proxy) as url:
        yield SimpleNamespace(url=url, refused=refused)


@contextlib.contextmanager
def bucket_with_preconditions(emulator: Emulator):
    """A proxy in front of the emulator that honours ``ifGenerationMatch=0`` on uploads as Cloud
    Storage does (412 when the object exists; gcp-storage-emulator ignores the parameter).

    Yields a namespace with ``url`` (for STORAGE_EMULATOR_HOST) and ``uploads``: the
    ifGenerationMatch value of each upload (None when absent).
    """
    uploads: list[str | None] = []
    one_at_a_time = threading.Lock()  # the existence check and the create are one step, as in GCS

    class Proxy(_EmulatorProxy):
        def _handle(self) -> None:
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not (self.command == "POST" and path.startswith("/upload/")):
                self._reply(*self._forward(body))
                return
            match = parse_qs(query).get("ifGenerationMatch", [None])[0]
            name = re.search(rb'"name":\s*"([^"]+)"', body).group(1).decode()
            with one_at_a_time:
                uploads.append(match)
                if match == "0" and emulator.client().bucket(emulator.bucket).get_blob(name) is not None:
                    self._refuse(412, "At least one of the pre-conditions you specified did not hold.")
                    return
                self._reply(*self._forward(body))

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    Proxy.emulator = emulator
    with serve_http(Proxy) as url:
        yield SimpleNamespace(url=url, uploads=uploads)


def test_startup_check_needs_only_the_roles_setup_sh_grants(gcs_emulator, key_file, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))

    def stored():
        return {b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket)}

    before = stored()
    with bucket_with_roles(gcs_emulator, setup_sh_roles()) as bucket:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", bucket.url)
        storage = GCSStorage(f"gs://{gcs_emulator.bucket}/roles", TTL, timeout_s=3, deadline_s=5)
        assert "service-account key" in storage.check()
        assert bucket.refused == []  # no request the roles refuse, such as deleting a probe
        assert stored() == before  # and nothing written
        name = storage.put("acme", PNG, {"sku": "R-1"})  # the service's own work needs nothing more
        assert storage.metadata(name)["sku"] == "R-1"
        assert bucket.refused == []


@pytest.mark.parametrize(
    ("roles", "missing"),
    [({"roles/storage.objectViewer"}, "storage.objects.create"), ({"roles/storage.objectCreator"}, "storage.objects.get")],
)
def test_startup_check_names_a_missing_permission(gcs_emulator, key_file, monkeypatch, roles, missing):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with bucket_with_roles(gcs_emulator, roles) as bucket:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", bucket.url)
        with pytest.raises(StorageConfigError, match=f"lacks {missing} on gs://{gcs_emulator.bucket}"):
            GCSStorage(f"gs://{gcs_emulator.bucket}/roles", TTL, timeout_s=3, deadline_s=5).check()


def test_caches_keep_a_result_no_longer_than_its_url(gcs_emulator, key_file, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    settings = load_settings(
        {"data_dir": str(tmp_path), "storage_uri": f"gs://{gcs_emulator.bucket}/ttl"}, environ={"CUTOUT_RESULT_URL_TTL_S": "120"}
    )
    name = open_storage(settings).put("acme", PNG, {})
    assert gcs_emulator.client().bucket(gcs_emulator.bucket).get_blob(name).cache_control == "private, max-age=120"


def test_emulator_wait_sleeps_between_failed_polls(tmp_path):
    polls = []

    class Failing(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            polls.append(time.monotonic())
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve_http(Failing) as url:
        emulator = Emulator(url, int(url.rsplit(":", 1)[1]), tmp_path, "unused")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="did not answer 200"):
            emulator.wait_ready(deadline_s=1.0, poll_s=0.25)
    assert time.monotonic() - started < 3
    assert 1 <= len(polls) <= 1.0 / 0.25 + 1  # one poll per interval, not a busy loop


class _Token:
    """Stands in for Workload Identity's ambient credentials (a token, no private key)."""

    token = "ambient-access-token"
    valid = True


@pytest.fixture
def sign_blob_server(rsa_key):
    """A stand-in for Google's IAM Credentials signBlob endpoint (Google's servers cannot exist here)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != "Bearer ambient-access-token" or not self.path.endswith(f"{EMAIL}:signBlob"):
                self.send_response(403)
                self.end_headers()
                return
            signature = rsa_key.sign(base64.b64decode(body["payload"]), padding.PKCS1v15(), hashes.SHA256())
            out = json.dumps({"keyId": "k1", "signedBlob": base64.b64encode(signature).decode()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    with serve_http(Handler) as url:
        yield SimpleNamespace(url=url, calls=calls)


def test_workload_identity_signs_through_iam_sign_blob(gcs_emulator, sign_blob_server, rsa_key, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    signing = iam_signing_credentials(IamSigner(EMAIL, _Token(), sign_blob_server.url))
    storage = GCSStorage(f"gs://{gcs_emulator.bucket}/wi", TTL, signing=signing)
    assert storage.check()
    url = storage.signed_url(storage.put("acme", PNG, {}))
    params = verify_v4(url, rsa_key.public_key())
    assert params["X-Goog-Credential"].startswith(EMAIL + "/")
    assert requests.get(url, timeout=10).content == PNG
    assert sign_blob_server.calls and sign_blob_server.calls[-1][1] == "Bearer ambient-access-token"


def test_credentials_that_cannot_sign_fail_the_startup_check(gcs_emulator, sign_blob_server, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    refused = iam_signing_credentials(IamSigner("someone-else@x.iam.gserviceaccount.com", _Token(), sign_blob_server.url))
    with pytest.raises(StorageConfigError, match="cannot sign"):
        GCSStorage(f"gs://{gcs_emulator.bucket}/wi", TTL, signing=refused).check()


def test_signer_is_chosen_automatically(key_file, sign_blob_server, monkeypatch):
    from pipeline.storage import gcs

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    _, how = gcs.choose_signer()
    assert how.startswith("service-account key")

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")

    class Ambient(_Token):  # what google.auth.default() gives on GKE with Workload Identity
        service_account_email = EMAIL

    monkeypatch.setattr("google.auth.default", lambda scopes=None: (Ambient(), "test-project"))
    signing, how = gcs.choose_signer(iam_endpoint=sign_blob_server.url)
    assert how == f"IAM signBlob as {EMAIL}" and signing.signer_email == EMAIL

    def no_credentials(scopes=None):
        import google.auth.exceptions

        raise google.auth.exceptions.DefaultCredentialsError("none here")

    monkeypatch.setattr("google.auth.default", no_credentials)
    with pytest.raises(StorageConfigError, match="cannot sign result URLs"):
        gcs.choose_signer()


def test_uploader_reports_unhealthy_when_the_bucket_is_missing(gcs_emulator, key_file, monkeypatch, tmp_path):
    import asyncio

    from deployments.uploader import Uploader
    from pipeline.settings import load_settings

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    settings = load_settings({"data_dir": str(tmp_path), "storage_uri": "gs://no-such-bucket/x", "gcs_deadline_s": 2}, environ={})

    async def build():
        return Uploader.func_or_class(settings, moderator=None)

    uploader = asyncio.run(build())
    with pytest.raises(RuntimeError, match="bucket gs://no-such-bucket does not exist"):
        uploader.check_health()
    with pytest.raises(CutoutError) as info:
        asyncio.run(uploader.finish(None, None, None, False))
    assert info.value.status == 503


def test_formats_get_their_extension_and_content_type(backend):
    name = backend.storage.put("acme", b"RIFF....WEBPVP8 ", {}, fmt="webp")
    assert name.endswith(".webp") and backend.storage.metadata(name)["content_type"] == "image/webp"
    assert backend.get(backend.storage.signed_url(name)) == b"RIFF....WEBPVP8 "


def test_put_named_creates_once_and_find_reads_it_back(backend):
    """The result cache's index: a deterministic name, created whole once, found by any replica."""
    name = "acme/cache/" + "ab" * 32 + ".png"
    assert backend.storage.find(name) is None
    assert backend.storage.put_named(name, PNG, {"answer": "{}"}) is True
    assert backend.storage.put_named(name, b"other bytes", {"answer": "{}"}) is False  # never overwritten
    meta = backend.storage.find(name)
    assert meta["answer"] == "{}" and meta["content_type"] == "image/png" and abs(meta["created"] - time.time()) < 60
    stored = backend.storage.stored_name(name)
    assert backend.storage.read(stored) == PNG
    assert backend.get(backend.storage.signed_url(stored)) == PNG


def test_concurrent_put_named_leaves_one_whole_object(backend, monkeypatch):
    """Six replicas storing the same cached result at once leave one object, written whole. On GCS
    the create carries ifGenerationMatch=0; a proxy enforces it as Cloud Storage does (the
    emulator alone ignores it)."""
    import concurrent.futures

    name = "acme/cache/" + "cd" * 32 + ".png"
    payloads = [bytes([i]) * 50_000 for i in range(6)]
    with contextlib.ExitStack() as stack:
        storage = backend.storage
        if backend.name == "gcs":
            bucket = stack.enter_context(bucket_with_preconditions(backend.emulator))
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", bucket.url)
            storage = GCSStorage(f"gs://{backend.emulator.bucket}/results", TTL, timeout_s=3, deadline_s=5)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            created = list(pool.map(lambda p: storage.put_named(name, p, {"answer": "{}"}), payloads))
        if backend.name == "gcs":
            assert bucket.uploads and set(bucket.uploads) == {"0"}, bucket.uploads
        assert created.count(True) == 1
        assert storage.read(storage.stored_name(name)) == payloads[created.index(True)]
