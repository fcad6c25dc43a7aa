"""Which addresses a download may connect to, checked where the connection is made.

A download URL comes from a client, and so do the redirects its server answers with, so
without a check `POST /v1/models/download/url` would fetch from the server's own loopback,
the LAN or a cloud metadata address (169.254.169.254) for whoever holds a key. Every TCP
connection a download opens (the first and each redirect hop) goes through
`CheckedBackend.connect_tcp`: it resolves the host, refuses it unless every address is
public or inside a network the operator allowed (ALICE_DOWNLOAD_ALLOWED_NETWORKS), and
connects to the address it checked, so a second DNS answer cannot swap it (DNS rebinding).
TLS still verifies and sends SNI for the host name in the URL (httpcore takes those from the
URL, not from the socket).

The operator's own sources (HF_ENDPOINT, ALICE_CIVITAI_URL) are trusted as configured, even
on loopback; the hosts they redirect to (CDNs) are checked like any other.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5

# Forms of IPv6 that carry an IPv4 address a connection may end up at.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated; also holds :: and ::1


class AddressRefused(httpx.ConnectError):
    """The host resolves to an address downloads may not reach. A ConnectError on purpose:
    it must read exactly like a host that did not answer."""


def is_public(address: Address) -> bool:
    """Not loopback, private, link-local, shared (CGNAT), multicast, reserved or unspecified,
    in any spelling (an IPv4-mapped or NAT64 IPv6 address is judged by its IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in _NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in _IPV4_COMPATIBLE:
            return False
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
    return address.is_global and not address.is_multicast


def origin(url: str) -> tuple[str, int]:
    """(host, port) of a URL, the way httpcore names the host it connects to."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class AddressPolicy:
    def __init__(self, allowed_networks: Iterable[Network] = (), trusted_urls: Callable[[], Iterable[str]] = tuple):
        self.allowed_networks = tuple(allowed_networks)
        self._trusted_urls = trusted_urls  # read on each connection: HF_ENDPOINT is read at call time too

    def trusts(self, host: str, port: int) -> bool:
        return (host.lower(), port) in {origin(url) for url in self._trusted_urls()}

    def allows(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return is_public(address) or any(address in network for network in self.allowed_networks)

    def addresses_for(self, host: str, port: int) -> list[str]:
        """The host's addresses, all of them allowed, or AddressRefused (also when it does not resolve)."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise AddressRefused("no connection") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        # One refused address refuses the host: a name that points into the LAN is not a download source.
        if not addresses or not all(self.allows(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses):
            raise AddressRefused("no connection")
        return addresses


class CheckedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        if self.policy.trusts(host, port):
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        last_error: Exception | None = None
        for address in self.policy.addresses_for(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error  # type: ignore[misc]


def checked_client(policy: AddressPolicy, timeout: httpx.Timeout) -> httpx.Client:
    """An httpx client whose every connection, redirects included, passes `policy`.

    It ignores HTTP(S)_PROXY (trust_env=False): through a proxy the proxy would pick the
    address, and the check would be of the proxy. Custom CAs (SSL_CERT_FILE) still apply.
    """
    transport = httpx.HTTPTransport()  # its SSL context honours SSL_CERT_FILE
    # httpx.HTTPTransport takes no network backend, so its pool is rebuilt with one, with the
    # arguments httpx builds its own with (httpx 0.28 _transports/default.py).
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=transport._pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CheckedBackend(policy),
    )
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=True,
                        max_redirects=MAX_REDIRECTS, trust_env=False)
