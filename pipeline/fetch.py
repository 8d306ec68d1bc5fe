"""Downloading ``image_url`` safely: checked and pinned addresses, bounded time and bytes.

Every hop (the first URL and each redirect) is parsed, its host resolved once, every resolved
address checked against the :class:`AddressPolicy`, and the connection made to that checked
address (TLS still verifies the certificate against the host name, via SNI), so a DNS answer
that changes between check and use cannot redirect the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from pipeline.errors import CutoutError, bad_request, download_failed, too_large
from pipeline.netguard import AddressPolicy

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
_REDIRECTS = {301, 302, 303, 307, 308}
_USER_AGENT = "product-cutout/0.1 (+image fetcher)"


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver; return the distinct addresses."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = info[4][0]
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True)
class FetchLimits:
    """Limits of one download."""

    max_bytes: int
    connect_timeout_s: float
    total_timeout_s: float
    max_redirects: int
    allowed_hosts: tuple[str, ...] = ()


def _refused(message: str, internal: str | None = None) -> CutoutError:
    return bad_request("url_not_allowed", message, "image_url", internal=internal)


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    host = host.lower().rstrip(".")
    for entry in allowed:
        if entry.startswith("."):
            if host.endswith(entry) or host == entry[1:]:
                return True
        elif host == entry:
            return True
    return False


_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def _odd_ipv4(host: str) -> bool:
    """True for hosts that resolvers read as IPv4 but are not dotted-quad decimal
    (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``): refused outright."""
    labels = host.rstrip(".").split(".")
    if not all(_NUMERIC_LABEL.match(label) for label in labels):
        return False
    canonical = len(labels) == 4 and all(
        label.isdigit() and (label == "0" or not label.startswith("0")) and int(label) < 256 for label in labels
    )
    return not canonical


def parse_source_url(url: str, limits: FetchLimits) -> httpx.URL:
    """Parse and check the static parts of a URL (scheme, credentials, host).

    Raises:
        CutoutError: 400 for anything that may not be fetched.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise bad_request("invalid_url", "'image_url' is not a valid URL.", "image_url") from None
    if parsed.scheme not in ("http", "https"):
        raise bad_request("invalid_url", "'image_url' must be an http or https URL.", "image_url")
    if parsed.userinfo:
        raise _refused("'image_url' must not carry credentials.")
    if not parsed.host:
        raise bad_request("invalid_url", "'image_url' has no host.", "image_url")
    if _odd_ipv4(parsed.host):
        raise _refused("'image_url' spells an IP address in a non-standard form.")
    if not _host_allowed(parsed.host, limits.allowed_hosts):
        raise _refused("'image_url' points to a host that is not allowed.")
    return parsed


class Fetcher:
    """Downloads images from URLs under an address policy and limits.

    Args:
        policy: Which addresses may be connected to.
        limits: Byte, time and redirect limits.
        resolver: Async ``(host, port) -> addresses``; the system resolver by default.
        verify: TLS verification (a path to a CA bundle, an SSL context, or True).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        limits: FetchLimits,
        resolver: Resolver | None = None,
        verify: bool | str = True,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.resolver = resolver or system_resolver
        self.verify = verify

    async def fetch(self, url: str) -> bytes:
        """Download ``url`` and return its body.

        Raises:
            CutoutError: 400 refused URL, 404 upstream 404, 413 too large, 460 any other failure.
        """
        deadline = time.monotonic() + self.limits.total_timeout_s
        try:
            return await asyncio.wait_for(self._fetch(url, deadline), timeout=self.limits.total_timeout_s)
        except asyncio.TimeoutError:
            raise download_failed(
                f"The image could not be downloaded within {self.limits.total_timeout_s:g} seconds.",
                internal="total download timeout",
            ) from None

    async def _resolve_checked(self, host: str, port: int) -> str:
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
            addresses: Sequence[str] = [str(literal)]
        except ValueError:
            try:
                addresses = await asyncio.wait_for(self.resolver(host, port), timeout=self.limits.connect_timeout_s)
            except (OSError, asyncio.TimeoutError, UnicodeError) as exc:
                raise download_failed("The image host could not be resolved.", internal=repr(exc)) from None
        if not addresses:
            raise download_failed("The image host could not be resolved.")
        for address in addresses:
            if not self.policy.permits(address):
                raise _refused("'image_url' points to an address that is not allowed.", internal=f"{host} -> {address}")
        return str(addresses[0])

    async def _fetch(self, url: str, deadline: float) -> bytes:
        current = parse_source_url(url, self.limits)
        for _hop in range(self.limits.max_redirects + 1):
            port = current.port or (443 if current.scheme == "https" else 80)
            address = await self._resolve_checked(current.host, port)
            response_or_next = await self._one_hop(current, address, port, deadline)
            if isinstance(response_or_next, bytes):
                return response_or_next
            current = parse_source_url(str(response_or_next), self.limits)
        raise download_failed(f"'image_url' redirected more than {self.limits.max_redirects} times.")

    async def _one_hop(self, url: httpx.URL, address: str, port: int, deadline: float) -> bytes | httpx.URL:
        host_header = url.netloc.decode("ascii")
        ip_host = f"[{address}]" if ":" in address else address
        pinned = url.copy_with(host=ip_host.strip("[]"), port=port)
        timeout = httpx.Timeout(
            connect=self.limits.connect_timeout_s,
            read=max(0.1, deadline - time.monotonic()),
            write=self.limits.connect_timeout_s,
            pool=self.limits.connect_timeout_s,
        )
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        headers = {"Host": host_header, "User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}
        try:
            async with httpx.AsyncClient(verify=self.verify, timeout=timeout, follow_redirects=False, trust_env=False) as client:
                request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
                response = await client.send(request, stream=True)
                try:
                    return await self._read(response, url)
                finally:
                    await response.aclose()
        except CutoutError:
            raise
        except httpx.RemoteProtocolError as exc:
            if "location header" in str(exc).lower():  # httpx parses Location itself, even unfollowed
                raise bad_request("invalid_url", "'image_url' redirected to an invalid URL.", "image_url") from None
            raise download_failed("The image could not be downloaded.", internal=repr(exc)) from None
        except httpx.TimeoutException as exc:
            raise download_failed("The image download timed out.", internal=repr(exc)) from None
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise download_failed("The image could not be downloaded.", internal=repr(exc)) from None

    async def _read(self, response: httpx.Response, url: httpx.URL) -> bytes | httpx.URL:
        status = response.status_code
        if status in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise download_failed("The image server sent a redirect without a location.")
            try:
                return url.join(location)
            except (httpx.InvalidURL, ValueError):
                raise bad_request("invalid_url", "'image_url' redirected to an invalid URL.", "image_url") from None
        if status == 404:
            raise CutoutError(404, "image_not_found", "The image at 'image_url' was not found (404).", "image_url")
        if not 200 <= status < 300:
            raise download_failed(f"The image server answered {status}.")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise download_failed("The image server sent a compressed (Content-Encoding) body.")
        limit = self.limits.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large("file_too_large", f"The image is larger than {limit} bytes.", "image_url")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            if total > limit:
                raise too_large("file_too_large", f"The image is larger than {limit} bytes.", "image_url")
            chunks.append(chunk)
        return b"".join(chunks)
