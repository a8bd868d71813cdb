"""Outbound HTTP to addresses that users give us (`image_url`, `webhook_url`), without letting a
request reach the service's own network: every URL is resolved, every address checked, and the
connection made to the checked address itself, so DNS cannot answer differently the second time."""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from serve_app.errors import InvalidRequest

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        """The URL's host and the address to connect to; InvalidRequest naming `param` if refused."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"{param} must be an http or https URL.", param=param)
        host = parts.hostname.lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidRequest(f"{param} has an invalid port.", param=param) from None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise InvalidRequest(f"{param} host {host!r} does not resolve.", param=param) from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        # All answers must pass: a name that mixes public and private addresses is refused.
        for address in addresses:
            if not self._allowed(host, address):
                raise InvalidRequest(f"{param} points to a non-public address ({address}); refused.", param=param)
        return host, addresses[0]

    def _allowed(self, host: str, address: IpAddress) -> bool:
        if host in self._allowed_hosts or any(address in net for net in self._allowed_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_global and not address.is_multicast


def pinned_request(
    client: httpx.AsyncClient, method: str, url: str, host: str, address: IpAddress, **kwargs
) -> httpx.Request:
    """A request to `url` that connects to `address`, with the original Host header and TLS name."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port:
        netloc += f":{parts.port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = host if not parts.port else f"{host}:{parts.port}"
    headers = {"Host": host_header, **kwargs.pop("headers", {})}
    return client.build_request(method, pinned, headers=headers, extensions={"sni_hostname": host}, **kwargs)
