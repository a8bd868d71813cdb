"""Outbound HTTP to addresses that users give us (`image_url`, `webhook_url`), without letting a
request reach the service's own network: every URL is resolved, every address checked (IPv6
forms that embed an IPv4 address are checked as that address), and the connection made to the
checked address itself, so DNS cannot answer differently the second time."""

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges whose last 32 bits are an IPv4 address: NAT64's well-known prefix, IPv4-compatible
# (deprecated) and SIIT's IPv4-translated addresses. (IPv4-mapped and 6to4 have properties.)
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(net) for net in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# NAT64's local-use prefix (RFC 8215): an operator's own translator, never public.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class OutboundRefused(Exception):
    """A URL the service will not reach; `message` is safe to show (it never says what a host
    resolves to: the log does)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IpAddress) -> bool:
    """Globally routable unicast, after unwrapping an embedded IPv4 address. Teredo, local-use
    NAT64 and the deprecated site-local range are never public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64 or address.is_site_local or address.teredo is not None:
            return False
        address = embedded_ipv4(address) or address
    return address.is_global and not address.is_multicast


class OutboundPolicy:
    """Which addresses user-given URLs may reach: public ones, plus the operator's allow-list."""

    def __init__(self, allowlist: tuple[str, ...] = ()) -> None:
        networks, hosts = [], set()
        for entry in allowlist:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        self._allowed_networks = networks
        self._allowed_hosts = hosts

    async def check(self, url: str, param: str) -> tuple[str, IpAddress]:
        """The URL's host (IDNA-encoded) and the address to connect to; OutboundRefused if refused."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundRefused(param, f"{param} must be an http or https URL.")
        try:
            host = parts.hostname.encode("idna").decode("ascii").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except (UnicodeError, ValueError):
            raise OutboundRefused(param, f"{param} has an invalid host name or port.") from None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            logger.info("%s refused: %s does not resolve", param, host)
            raise OutboundRefused(param, f"{param} points to an address that is not allowed.") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        # All answers must pass: a name that mixes public and private addresses is refused.
        for address in addresses:
            if not self._allowed(host, address):
                logger.info("%s refused: %s resolves to %s", param, host, address)
                raise OutboundRefused(param, f"{param} points to an address that is not allowed.")
        return host, addresses[0]

    def _allowed(self, host: str, address: IpAddress) -> bool:
        if host in self._allowed_hosts or any(address in net for net in self._allowed_networks):
            return True
        return is_public(address)


def pinned_request(
    client: httpx.AsyncClient, method: str, url: str, host: str, address: IpAddress, **kwargs: Any
) -> httpx.Request:
    """A request to `url` that connects to `address`, with the (IDNA-encoded) host as its Host
    header and TLS name."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port:
        netloc += f":{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = host if not parts.port else f"{host}:{parts.port}"
    headers = {"Host": host_header, **kwargs.pop("headers", {})}
    return client.build_request(method, pinned, headers=headers, extensions={"sni_hostname": host}, **kwargs)
