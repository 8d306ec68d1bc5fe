"""Local storage: atomic objects under the org prefix, signed URLs that expire, cleanup."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline.errors import CutoutError
from pipeline.storage import LocalStorage, load_or_create_key


def parts(url: str) -> tuple[str, str, str]:
    u = urlparse(url)
    q = parse_qs(u.query)
    return u.path[len("/results/") :], q["expires"][0], q["signature"][0]


def test_put_sign_read_expire_cleanup(tmp_path):
    key = load_or_create_key(tmp_path / "key")
    assert load_or_create_key(tmp_path / "key") == key and len(key) == 64
    st = LocalStorage(tmp_path / "results", key, ttl_s=10, public_base_url="http://h:1")
    now = time.time()
    name = st.put("acme", b"PNG", {"sku": "s1", "request_id": "r", "model": "u2netp"}, now=now)
    assert re.match(r"^acme/\d{4}/\d{2}/\d{2}/[0-9a-f]{32}\.png$", name)
    assert st.metadata(name)["sku"] == "s1"
    url = st.signed_url(name, now=now)
    assert url.startswith("http://h:1/results/acme/")
    n, exp, sig = parts(url)
    assert st.read_signed(n, exp, sig, now=now + 9) == b"PNG"
    with pytest.raises(CutoutError) as info:
        st.read_signed(n, exp, sig, now=now + 11)
    assert (info.value.status, info.value.reason) == (403, "url_expired")
    for bad in [(n, str(int(exp) + 100), sig), (n, exp, "0" * 64), (n.replace("acme", "evil"), exp, sig), ("../key", exp, sig)]:
        with pytest.raises(CutoutError) as info:
            st.read_signed(*bad, now=now)
        assert info.value.status == 403
    other = LocalStorage(tmp_path / "results", b"another-key" * 4, 10, "http://h:1")
    with pytest.raises(CutoutError):
        other.read_signed(n, exp, sig, now=now)  # a URL signed with another key is refused
    assert st.cleanup(now=now + 5) == 0
    assert st.cleanup(now=time.time() + 11) == 2  # the PNG and its metadata
    assert not (tmp_path / "results" / n).exists()


def test_uploader_logs_a_failed_cleanup_and_keeps_cleaning(tmp_path, caplog):
    from deployments.uploader import Uploader, logger
    from pipeline.settings import load_settings

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    calls = []

    def failing_cleanup():
        calls.append(time.monotonic())
        raise PermissionError("results folder is read-only")

    async def three_rounds():
        uploader = Uploader.func_or_class(settings, moderator=None)
        uploader._cleaner.cancel()
        uploader.finisher.cleanup = failing_cleanup
        cleaner = asyncio.create_task(uploader._clean_forever(0.01))
        while len(calls) < 3 and not cleaner.done():
            await asyncio.sleep(0.01)
        cleaner.cancel()

    logger.addHandler(caplog.handler)  # Serve's logger does not propagate to the root
    try:
        asyncio.run(asyncio.wait_for(three_rounds(), 10))
    finally:
        logger.removeHandler(caplog.handler)
    assert len(calls) >= 3  # the loop outlives a failure
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info and r.exc_info[0] is PermissionError]
    assert len(failures) >= 3, caplog.text
