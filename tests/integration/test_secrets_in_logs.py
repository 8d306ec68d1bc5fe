"""No token used during the suite appears in any log line of the service (runs last)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _log_files(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and (path.suffix in (".log", ".out", ".err", ".txt") or "log" in path.name):
                yield path


def test_no_token_in_any_log(service):
    # make sure at least one request with each token, and a wrong one, went through
    for token in (service.token, service.other_token, service.limited_token, "ct_wrong-token-for-the-log-test"):
        service.post({"file": "AAAA"}, token=token)
    secrets = [
        service.token,
        service.other_token,
        service.limited_token,
        "ct_wrong-token-for-the-log-test",
        "ct_not-a-real-token-value",
    ]
    files = list(_log_files(service.log_dir, service.data_dir))
    assert any("replica" in f.name.lower() or "serve" in str(f).lower() for f in files), "no Serve logs found"
    scanned = 0
    for path in files:
        data = path.read_bytes()
        scanned += len(data)
        for secret in secrets:
            assert secret.encode() not in data, f"a token appears in {path}"
    assert scanned > 10_000  # the logs were really there and read
