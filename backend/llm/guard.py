"""No door into the server's network through a user's base URL: a request to a model a
user configured goes only to public addresses, unless the operator allow-listed the host
(USER_KEY_ALLOWED_HOSTS).

The check runs when connecting, not only when the URL is saved: `GuardedTransport`
resolves the host itself, refuses when any of its addresses is loopback, private,
link-local (169.254.169.254, the cloud metadata service, among them), shared, multicast or
reserved, then connects to the address it checked (the Host header and TLS name stay the
URL's), so a name that resolves elsewhere a second time (DNS rebinding) gains nothing.
Only http and https; redirects are not followed (ChatWire refuses a 3xx)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from backend.llm.errors import ModelFailure

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ModelFailure):
    """A user's base URL that leads into the server's own network (or is no http(s) URL)."""

    def __init__(self, reason: str) -> None:
        super().__init__("address_refused", detail=reason)
        self.reason = reason
        self.message = f"This base URL is refused: {reason}."


def _public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class HostPolicy:
    """The operator's allow-list: `name`, `name:port`, an IP or a CIDR network."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            entry = entry.strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry)

    def allows_name(self, host: str, port: int) -> bool:
        host = host.lower()
        return host in self.names or f"{host}:{port}" in self.names

    def allows_address(self, address: Address) -> bool:
        return _public(address) or any(address in net for net in self.networks)


def check_url(url: str) -> tuple[str, int]:
    """The URL's host and port; AddressRefused unless it is an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"{url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("only http and https URLs are allowed")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    if parts.username or parts.password:
        raise AddressRefused("credentials in the URL are not allowed; use the key field")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def checked_addresses(host: str, port: int, policy: HostPolicy) -> list[str]:
    """The addresses to connect to for `host`, every one of them allowed; [] when the
    operator allow-listed the name itself (then it is connected to as usual)."""
    if policy.allows_name(host, port):
        return []
    try:
        literal: Address | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            raise AddressRefused(f"the host {host!r} cannot be resolved") from None
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in found:
        if not policy.allows_address(address):
            what = f"{host} ({address})" if literal is None else str(address)
            raise AddressRefused(
                f"{what} is a loopback, private, link-local or reserved address, which "
                "the server does not connect to for users (an operator may allow-list it "
                "in USER_KEY_ALLOWED_HOSTS)"
            )
    return [str(address) for address in found]


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's transport, connecting only to addresses `checked_addresses` allowed."""

    def __init__(self, policy: HostPolicy, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, port = check_url(str(request.url))
        addresses = await checked_addresses(host, port, self.policy)
        if addresses:  # pinned: the address checked is the one connected to
            if request.url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": host}
            request.url = request.url.copy_with(host=addresses[0])
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
