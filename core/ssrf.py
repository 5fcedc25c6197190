"""Callback URLs that cannot be turned against Vigil's own network (server-side request forgery).

``check_callback_url`` resolves the URL's host and refuses it when any address it resolves to is
not a public one: loopback, private (RFC 1918, IPv6 ULA), shared/CGNAT (100.64.0.0/10),
link-local, multicast, reserved, unspecified, and IPv6 forms that carry such an IPv4 address
(IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64). The cloud metadata addresses are refused even
when private addresses are allowed, unless they are allowed by name (their exact /32 or /128).

Checking is not enough on its own: the host could resolve to a public address when checked and
to 127.0.0.1 a moment later when the sender connects (DNS rebinding). ``pinned_transport``
connects to the very addresses that were checked, keeping the URL's host for the Host header,
TLS SNI and certificate verification.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[..., list]

# Instance metadata services (AWS, GCP, Azure, ...; AWS's IPv6 one): never a webhook receiver.
METADATA = frozenset({ip_address("169.254.169.254"), ip_address("fd00:ec2::254")})
EVERYWHERE = (ip_network("0.0.0.0/0"), ip_network("::/0"))
SHARED = ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT: not private, not public
NAT64 = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
SCHEMES = ("http", "https")


class RefusedURL(ValueError):
    """The URL points (or resolves) somewhere callbacks may not go: final, retrying won't help."""


class UnresolvableHost(ValueError):
    """The host did not resolve (may be temporary)."""


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """IPv4 addresses that an IPv6 address carries, and that a network may route to."""
    embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d (deprecated IPv4-compatible form)
        embedded.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    if any(ip in net for net in NAT64):
        embedded.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in embedded if v4 is not None]


def refusal(ip: IPAddress) -> str | None:
    """Why callbacks may not go to this address (loopback, private, ...), or None if public."""
    if ip in METADATA:
        return "a cloud metadata address"
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped or any(ip in net for net in NAT64):
            # ::ffff:a.b.c.d and NAT64 addresses reach a.b.c.d: that address decides.
            reason = refusal(_embedded_ipv4(ip)[-1])
            return reason and f"{reason} (in IPv6 form)"
        for v4 in _embedded_ipv4(ip):
            reason = refusal(v4)
            if reason:
                return f"{reason} (in IPv6 form)"
        if ip.is_site_local:
            return "a site-local address"
    elif ip in SHARED:
        return "a shared (carrier-grade NAT) address"
    for flag in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{flag}"):
            return f"{'an' if flag[0] in 'aeiou' else 'a'} {flag.replace('_', '-')} address"
    if not ip.is_global:
        return "not a public address"
    return None


def _networks(allow: bool | Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    if allow is True:
        return EVERYWHERE
    if not allow:
        return ()
    return tuple(n if isinstance(n, IPv4Network | IPv6Network) else ip_network(n, strict=False)
                 for n in allow)


def _allowed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Is this non-public address inside an allowed network? Metadata addresses only when a
    network names them exactly (a /32 or /128), never through a wider one."""
    forms = [ip, *(_embedded_ipv4(ip) if isinstance(ip, IPv6Address) else [])]
    metadata = any(form in METADATA for form in forms)
    return any(form.version == net.version and form in net
               and (not metadata or net.num_addresses == 1)
               for form in forms for net in networks)


def vetted_addresses(url: str, allow_private: bool | Iterable[str | IPNetwork] = False,
                     resolve: Resolver = socket.getaddrinfo) -> list[str]:
    """The addresses ``url``'s host resolves to, all of them acceptable callback targets.

    Raises RefusedURL (not http(s), no host, or an address callbacks may not reach) or
    UnresolvableHost, both ValueErrors with a message a client can act on.
    ``allow_private``: True allows every non-public address except metadata ones; or networks
    (``"127.0.0.0/8"``) whose addresses are allowed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise RefusedURL("callback_url must be an http or https URL")
    host = parts.hostname
    if not host:
        raise RefusedURL("callback_url has no host")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnresolvableHost(f"callback_url host {host!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnresolvableHost(f"callback_url host {host!r} does not resolve")
    networks = _networks(allow_private)
    for address in addresses:
        ip = ip_address(address.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        reason = refusal(ip)
        if reason and not _allowed(ip, networks):
            shown = "" if address == host else f" resolves to {address}, which"
            raise RefusedURL(f"callback_url host {host!r}{shown} is {reason}; callbacks go to "
                             "public addresses only (see VIGIL_ALLOW_PRIVATE_CALLBACKS)")
    return addresses


def check_callback_url(url: str, allow_private: bool | Iterable[str | IPNetwork] = False) -> None:
    """Raise ValueError (RefusedURL or UnresolvableHost) unless ``url`` may receive callbacks."""
    vetted_addresses(url, allow_private)


class _PinnedBackend(httpcore.SyncBackend):
    """Connects to the given addresses, whatever host the connection pool asks for, through
    ``inner`` (the plain socket backend unless a caller adds, say, a deadline)."""

    def __init__(self, addresses: list[str], inner: httpcore.NetworkBackend | None = None):
        self.addresses = addresses
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception | None = None
        for address in self.addresses:
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError("no address to connect to")


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport that only ever connects to ``addresses`` (no proxies, no DNS).

    The request's URL still gives the Host header, the TLS server name (SNI) and the name the
    certificate must match, so HTTPS to a pinned address is verified as usual.
    """

    def __init__(self, addresses: list[str], network_backend: httpcore.NetworkBackend | None = None):
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=1, network_backend=_PinnedBackend(addresses, network_backend))
