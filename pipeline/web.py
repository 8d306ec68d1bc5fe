"""The service's pages: the demo page at ``/``, the API reference at ``/docs``, the OpenAPI
document at ``/openapi.json``, and their scripts and styles under ``/ui/``.

Every asset ships in this package (``pipeline/ui``): nothing is loaded from another site, and
each HTML page goes out with a Content-Security-Policy that allows only this origin's scripts
and styles (none inline), so an injected tag could neither run nor phone home.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.openapi import document

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_ROUTE = "/ui/"
PAGES = {"/": "index.html", "/docs": "docs.html"}
OPENAPI_ROUTE = "/openapi.json"
_ASSET = re.compile(r"[a-z0-9-]{1,64}\.(js|css|svg)")
_MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "json": "application/json",
}
BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Page:
    """A page or asset, ready to be answered."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def content_security_policy(public_base_url: str) -> str:
    """The policy of the HTML pages.

    Scripts, styles and requests: this origin only (``connect-src 'self'``: the page calls the
    API it was served by). Images: this origin, the dropped file (``blob:``), and any https
    URL, since the page shows an ``image_url`` given as input and ``result_url`` may point at
    Cloud Storage; plus the origin of ``public_base_url``, which may be plain http.
    """
    images = ["'self'", "blob:", "data:", "https:"]
    parts = urlsplit(public_base_url)
    if parts.scheme == "http" and parts.netloc:
        images.append(f"http://{parts.netloc}")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src " + " ".join(images),
            "connect-src 'self'",
            "form-action 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


@functools.cache
def _asset(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


@functools.cache
def _openapi_json() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


def page(path: str, public_base_url: str) -> Page | None:
    """The page or asset at ``path`` (a GET), or None when there is none."""
    if path in PAGES:
        headers = {**BASE_HEADERS, "Content-Security-Policy": content_security_policy(public_base_url), "X-Frame-Options": "DENY"}
        return Page(_asset(PAGES[path]), _MEDIA_TYPES["html"], headers)
    if path == OPENAPI_ROUTE:
        return Page(_openapi_json(), _MEDIA_TYPES["json"], {**BASE_HEADERS, "Access-Control-Allow-Origin": "*"})
    if path.startswith(UI_ROUTE):
        name = path[len(UI_ROUTE) :]
        match = _ASSET.fullmatch(name)
        if match and (UI_DIR / name).is_file():
            return Page(_asset(name), _MEDIA_TYPES[match.group(1)], dict(BASE_HEADERS))
    return None
