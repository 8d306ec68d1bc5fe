"""Result storage on local disk (the embedded default), with HMAC-signed expiring URLs.

Objects are named as :mod:`pipeline.storage.base` says; a JSON sidecar holds the metadata.
Writes are atomic (temporary file, then rename), so a failed request leaves nothing
half-written. The service serves the files itself at ``/results/<name>?expires=..&signature=..``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.errors import CutoutError
from pipeline.storage.base import (
    CACHE_FOLDER,
    CONTENT_TYPES,
    OBJECT_NAME,
    RESULTS_ROUTE,
    ResultStorage,
    content_type_of,
    new_object_name,
)


def load_or_create_key(path: Path) -> bytes:
    """Read the URL signing key at ``path``, creating it (0600, 256 random bits) if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another replica may be writing it right now
            key = path.read_text().strip()
            if key:
                return key.encode()
            time.sleep(0.02)
        raise RuntimeError(f"URL signing key file {path} is empty") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key.encode()


def _atomic_write(path: Path, data: bytes, exclusive: bool = False) -> bool:
    """Write ``path`` whole or not at all; with ``exclusive``, only if it does not exist yet.

    Returns:
        False when ``exclusive`` and the file existed (it is left as it was), else True.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic, and fails when the name exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LocalStorage(ResultStorage):
    """Stores results in a folder and signs URLs for them.

    Args:
        root: The results folder.
        signing_key: HMAC key for URLs.
        ttl_s: URL lifetime; files are deleted after it.
        public_base_url: Scheme and host the URLs start with.
        cache_s: How long a cached result is handed out again (:mod:`pipeline.cache`); cached
            files are kept ``cache_s + ttl_s``, so the last URL given for one outlives it by nothing.
    """

    def __init__(self, root: Path, signing_key: bytes, ttl_s: int, public_base_url: str, cache_s: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._key = signing_key
        self.ttl_s = ttl_s
        self.cache_s = cache_s
        self.base = public_base_url.rstrip("/")

    def put(self, org: str, png: bytes, metadata: dict[str, Any], now: float | None = None, fmt: str = "png") -> str:
        """Store a result file and its metadata; return the object name."""
        now = time.time() if now is None else now
        name = new_object_name(org, now, fmt)
        self._write(name, png, metadata, now, exclusive=False)
        return name

    def put_named(self, name: str, data: bytes, metadata: dict[str, Any], now: float | None = None) -> bool:
        """Create ``name`` unless it exists (the metadata first, then the file, each atomically)."""
        return self._write(name, data, metadata, time.time() if now is None else now, exclusive=True)

    def _write(self, name: str, data: bytes, metadata: dict[str, Any], now: float, exclusive: bool) -> bool:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive and path.exists():
            return False
        meta = {"content_type": content_type_of(name), "created": int(now), **metadata}
        _atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())
        try:
            return _atomic_write(path, data, exclusive)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.with_suffix(".json").unlink()
            raise

    def read(self, name: str) -> bytes:
        """The bytes of ``name``.

        Raises:
            CutoutError: 404 when it is gone.
        """
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise CutoutError(404, "result_not_found", "The result no longer exists.", None) from None

    def find(self, name: str) -> dict[str, Any] | None:
        """The metadata of ``name``, or None when the file is absent (or about to be deleted)."""
        path = self.root / name
        try:
            created = path.stat().st_mtime
            meta = json.loads(path.with_suffix(".json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return {**meta, "created": int(created)}

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, name: str, now: float | None = None) -> str:
        """A URL for ``name`` that works for ``ttl_s`` seconds from ``now``."""
        now = time.time() if now is None else now
        expires = int(now) + self.ttl_s
        return f"{self.base}{RESULTS_ROUTE}{name}?expires={expires}&signature={self._signature(name, expires)}"

    def read_signed(self, name: str, expires: str | None, signature: str | None, now: float | None = None) -> bytes:
        """Return the object if the signature is valid and not expired.

        Raises:
            CutoutError: 403 for a bad or expired signature, 404 for a missing object.
        """
        now = time.time() if now is None else now
        if not OBJECT_NAME.match(name) or not expires or not expires.isdigit() or not signature:
            raise CutoutError(403, "invalid_signature", "The result URL is not valid.", None)
        if not hmac.compare_digest(self._signature(name, int(expires)), signature):
            raise CutoutError(403, "invalid_signature", "The result URL is not valid.", None)
        if int(expires) <= now:
            raise CutoutError(403, "url_expired", "The result URL has expired.", None)
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise CutoutError(404, "result_not_found", "The result no longer exists.", None) from None

    def metadata(self, name: str) -> dict[str, Any]:
        """The metadata stored with ``name``."""
        return json.loads((self.root / name).with_suffix(".json").read_text())

    def check(self) -> str:
        """Nothing to check beyond the folder made at construction; describes it."""
        return f"local folder {self.root}"

    def cleanup(self, now: float | None = None) -> int:
        """Delete results older than the URL lifetime (cached ones: plus ``cache_s``) and stray partial files; return the count."""
        now = time.time() if now is None else now
        removed = 0
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            stale_part = path.name.startswith(".part-") and age > 600
            keep_s = self.ttl_s + (self.cache_s if path.parent.name == CACHE_FOLDER else 0)
            if stale_part or ((path.suffix[1:] in CONTENT_TYPES or path.suffix == ".json") and age > keep_s):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only empty day folders go
        return removed
