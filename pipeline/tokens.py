"""API tokens: a file of hashes, one organization per token, re-read when it changes.

A token is 256 random bits, so a plain SHA-256 of it is a safe verifier (no salt or slow hash
is needed against guessing). The file never holds a token itself.

File format (JSON)::

    {"version": 1, "tokens": [{"id": "3f9c0a1b", "org": "acme", "sha256": "<hex>", "created": "<iso>",
                               "rpm": 120}]}

``rpm`` (optional) overrides ``CUTOUT_RATE_LIMIT_RPM`` for requests with that token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TOKEN_PREFIX = "ct_"
MAX_TOKEN_LENGTH = 256
ORG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def hash_token(token: str) -> str:
    """The stored verifier of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_org(org: str) -> str:
    """Return ``org`` if it is a valid organization name (it becomes a storage prefix).

    Raises:
        ValueError: If the name is not 1-63 lower-case letters, digits, ``-`` or ``_``.
    """
    if not isinstance(org, str) or not ORG_PATTERN.match(org):
        raise ValueError("organization must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")
    return org


@dataclass(frozen=True)
class TokenRecord:
    """One stored token verifier."""

    id: str
    org: str
    sha256: str
    created: str
    rpm: int | None = None  # per-organization rate limit override (requests per minute)


class TokenStore:
    """Looks tokens up in the tokens file, re-reading it when it changes on disk.

    Args:
        path: The tokens file. A missing file means no token is valid.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, TokenRecord] = {}

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._by_hash = None, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        records = read_records(self.path)
        self._by_hash = {r.sha256: r for r in records}
        self._stamp = stamp

    def lookup(self, token: str | None) -> str | None:
        """Return the organization of ``token``, or None if it is missing or unknown."""
        record = self.record(token)
        return record.org if record else None

    def record(self, token: str | None) -> TokenRecord | None:
        """The stored record of ``token``, or None if it is missing or unknown."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        self._refresh()
        digest = hash_token(token)
        record = self._by_hash.get(digest)
        # The dict lookup finds the candidate; the final comparison is constant-time.
        if record is not None and hmac.compare_digest(record.sha256, digest):
            return record
        return None

    def org_rpm(self, org: str) -> int | None:
        """The rate limit override of ``org``'s tokens (the lowest where they differ), or None."""
        self._refresh()
        overrides = [r.rpm for r in self._by_hash.values() if r.org == org and r.rpm is not None]
        return min(overrides) if overrides else None


def read_records(path: Path) -> list[TokenRecord]:
    """Read every record of a tokens file (an absent file has none)."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        return []
    return [
        TokenRecord(**{k: r[k] for k in ("id", "org", "sha256", "created")}, rpm=r.get("rpm")) for r in data.get("tokens", [])
    ]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_records(path: Path, records: list[TokenRecord]) -> None:
    body = {"version": 1, "tokens": [{k: v for k, v in r.__dict__.items() if v is not None} for r in records]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_token(path: Path, org: str, rpm: int | None = None) -> str:
    """Create a token for ``org``, record its hash, and return the token (shown only once).

    Args:
        path: The tokens file.
        org: The organization.
        rpm: Optional rate limit override for requests with this token (per minute; 0 = none).
    """
    validate_org(org)
    if rpm is not None and rpm < 0:
        raise ValueError("rpm must be 0 or more")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(
        id=secrets.token_hex(4),
        org=org,
        sha256=hash_token(token),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        rpm=rpm,
    )
    path = Path(path)
    with _locked(path):
        _write_records(path, read_records(path) + [record])
    return token


def revoke(path: Path, token_or_id: str) -> int:
    """Remove the record matching a token or a record id; return how many were removed."""
    path = Path(path)
    digest = hash_token(token_or_id)
    with _locked(path):
        records = read_records(path)
        kept = [r for r in records if r.id != token_or_id and not hmac.compare_digest(r.sha256, digest)]
        if len(kept) != len(records):
            _write_records(path, kept)
    return len(records) - len(kept)
