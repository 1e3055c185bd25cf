"""Which webhook URLs FlagMeter may call: checked when a URL is saved and again when it is called
(GuardedResolver refuses a name that resolves to a private address at connect time)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver


class UnsafeAddress(OSError):
    """The webhook host resolves to an address FlagMeter must not call."""


def forbidden_address(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata), multicast, reserved: anything not global."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def url_shape_problem(url: object, allow_http: bool) -> str | None:
    schemes = {"https", "http"} if allow_http else {"https"}
    if not isinstance(url, str) or len(url) > 2000:
        return "must be a URL of at most 2000 characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in schemes or not parts.hostname:
        return "must be an https:// URL" if not allow_http else "must be an http(s):// URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


async def url_problem(url: object, *, allow_http: bool, allow_private: bool) -> str | None:
    """Why FlagMeter refuses to call `url` now, or None. Checked at save time and at send time."""
    problem = url_shape_problem(url, allow_http)
    if problem or allow_private:
        return problem
    assert isinstance(url, str)
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"host {host!r} does not resolve"
    if any(forbidden_address(str(info[4][0])) for info in infos):
        return f"host {host!r} resolves to a private, loopback or link-local address"
    return None


class GuardedResolver(AbstractResolver):
    """Refuses non-global addresses at connect time too, so DNS rebinding cannot slip past the check."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private and any(forbidden_address(r["host"]) for r in results):
            raise UnsafeAddress(f"{host} resolves to a private, loopback or link-local address")
        return results

    async def close(self) -> None:
        await self._inner.close()
