"""Starts the real Serve application once per test session and speaks HTTP to it on loopback.

The application and its test configuration are :func:`tests.harness.running_service`; this
file only wraps it, and a loopback image server, in session fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Service, running_service


@pytest.fixture(scope="session")
def image_server():
    """A plain HTTP server on loopback serving ``files`` (path -> bytes); 404 otherwise."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            if self.path == "/fail":
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.files = files  # type: ignore[attr-defined]
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="session")
def service() -> Iterator[Service]:
    """The embedded default (local storage), shared by the whole session."""
    with running_service() as svc:
        yield svc
