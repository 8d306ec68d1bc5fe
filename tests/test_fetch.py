"""Downloading image_url against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.errors import CutoutError
from pipeline.fetch import Fetcher, FetchLimits
from pipeline.netguard import AddressPolicy
from tests.images import encode, product_photo

PNG = encode(product_photo(40, 30), "PNG")


class Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        Handler.hits.append(self.path)
        if self.path == "/img.png":
            self._send(200, PNG)
        elif self.path == "/missing":
            self._send(404, b"nope")
        elif self.path == "/boom":
            self._send(500, b"err")
        elif self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect-to/") :].replace("|", "/"))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        elif self.path == "/big-undeclared":
            self.send_response(200)
            self.end_headers()  # no Content-Length: read until close
            self.wfile.write(b"x" * 5000)
            self.close_connection = True
        elif self.path == "/lies":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
        else:
            self._send(404, b"")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start(host: str, port: int = 0) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def server():
    httpd = start("127.0.0.1")
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def second_server(server):
    """The same handler on 127.0.0.2 and the same port, treated as a public host."""
    httpd = start("127.0.0.2", int(server.rsplit(":", 1)[1]))
    yield f"http://127.0.0.2:{httpd.server_address[1]}"
    httpd.shutdown()


def fetcher(networks=("127.0.0.0/8",), max_bytes=10_000, total=3.0, resolver=None, redirects=5):
    limits = FetchLimits(max_bytes=max_bytes, connect_timeout_s=1.0, total_timeout_s=total, max_redirects=redirects)
    return Fetcher(AddressPolicy(networks), limits, resolver=resolver)


def fetch(f, url):
    return asyncio.run(f.fetch(url))


def fails(f, url) -> CutoutError:
    with pytest.raises(CutoutError) as info:
        fetch(f, url)
    return info.value


def test_downloads_from_an_opened_network(server):
    assert fetch(fetcher(), server + "/img.png") == PNG


def test_loopback_refused_by_default(server):
    Handler.hits.clear()
    err = fails(fetcher(networks=()), server + "/img.png")
    assert (err.status, err.reason, err.parameter) == (400, "url_not_allowed", "image_url")
    assert Handler.hits == []  # refused before connecting


def test_upstream_statuses(server):
    assert fails(fetcher(), server + "/missing").status == 404
    assert fails(fetcher(), server + "/boom").status == 460


def test_redirects_are_followed_and_checked_on_every_hop(server, second_server):
    port = server.rsplit(":", 1)[1]
    assert fetch(fetcher(), server + "/redirect-to/|img.png") == PNG
    # 127.0.0.2 is "public" here; its redirect to 127.0.0.1 must be refused
    only_two = fetcher(networks=("127.0.0.2/32",))
    Handler.hits.clear()
    err = fails(only_two, f"http://127.0.0.2:{port}/redirect-to/http:||127.0.0.1:{port}|img.png")
    assert err.status == 400 and Handler.hits == [f"/redirect-to/http:||127.0.0.1:{port}|img.png"]
    assert fails(fetcher(), server + "/loop").status == 460
    assert fails(fetcher(redirects=0), server + "/redirect-to/|img.png").status == 460


def test_size_capped_by_header_and_by_bytes_read(server):
    for path in ("/big-declared", "/big-undeclared"):
        err = fails(fetcher(max_bytes=1000), server + path)
        assert (err.status, err.reason) == (413, "file_too_large"), path
    # more bytes than announced: only the announced bytes are read
    assert fetch(fetcher(max_bytes=1000), server + "/lies") == b"x" * 10


def test_drip_ends_within_the_deadline(server):
    started = time.monotonic()
    err = fails(fetcher(total=2.0), server + "/drip")
    assert err.status == 460
    assert time.monotonic() - started < 3.5


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://127.0.0.1/x.png", "invalid_url"),
        ("file:///etc/passwd", "invalid_url"),
        ("http://user:pw@127.0.0.1/x.png", "url_not_allowed"),
        ("not a url", "invalid_url"),
    ],
)
def test_bad_urls_are_400(url, reason):
    err = fails(fetcher(), url)
    assert (err.status, err.reason) == (400, reason)


def test_dns_answer_is_checked_and_pinned(server):
    port = int(server.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])

    async def rebinding(host, p):
        return next(answers)

    f = fetcher(resolver=rebinding)
    # The first lookup is checked and the connection pinned to it: the image arrives.
    assert fetch(f, f"http://images.example:{port}/img.png") == PNG

    async def private(host, p):
        return ["10.0.0.1"]

    assert fails(fetcher(resolver=private), f"http://images.example:{port}/img.png").status == 400


@pytest.fixture(scope="module")
def canary():
    """A server on 127.0.0.1 that must never be reached: every hit is recorded."""
    hits = []

    class Canary(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.hits = hits
    yield httpd
    httpd.shutdown()


def refused_forms(port: int) -> list[str]:
    """127.0.0.1 (and other refused places) spelled every way a URL can spell them."""
    return [
        f"http://127.0.0.1:{port}/x",
        f"http://localhost:{port}/x",
        f"http://2130706433:{port}/x",
        f"http://0x7f000001:{port}/x",
        f"http://0177.0.0.1:{port}/x",
        f"http://0x7f.1:{port}/x",
        f"http://127.1:{port}/x",
        f"http://017700000001:{port}/x",
        f"http://[::1]:{port}/x",
        f"http://[::ffff:127.0.0.1]:{port}/x",
        f"http://[::ffff:7f00:1]:{port}/x",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/x",
        f"http://[2002:7f00:1::]:{port}/x",
        f"http://[64:ff9b::7f00:1]:{port}/x",
        f"http://0.0.0.0:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/",
        "http://100.64.0.1/x",
        "http://10.0.0.1/x",
        "http://192.168.1.1/x",
        "http://[fe80::1]/x",
        "http://224.0.0.1/x",
    ]


def test_canary_is_never_reached_directly_or_by_redirect(second_server, canary):
    port = canary.server_address[1]
    public = fetcher(networks=("127.0.0.2/32",), total=2.0)  # only 127.0.0.2 counts as public
    for url in refused_forms(port):
        err = fails(public, url)
        assert err.status == 400 and err.reason in ("url_not_allowed", "invalid_url"), (url, err)
        hop = second_server + "/redirect-to/" + url.replace("/", "|")
        err = fails(public, hop)
        assert err.status == 400, (hop, err)
    assert canary.hits == []
