"""Outbound HTTP to addresses that users give us (`image_url`, `webhook_url`), without letting a
request reach the service's own network: every URL is resolved, every address checked (IPv6
forms that embed an IPv4 address are checked as that address), and the connection made to the
checked address itself, so DNS cannot answer differently the second time. A public host is
reached on the allowed ports only (80 and 443 unless configured); what the operator allow-lists
is reached on any."""

import asyncio
import ipaddress
import logging
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

logger = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges whose last 32 bits are an IPv4 address: NAT64's well-known prefix, IPv4-compatible
# (deprecated) and SIIT's IPv4-translated addresses. (IPv4-mapped and 6to4 have properties.)
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(net) for net in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# NAT64's local-use prefix (RFC 8215): an operator's own translator, never public.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
# Never public, whatever this Python's `ipaddress` says: the IETF protocol assignments (some patch
# releases call parts of 192.0.0.0/24 global) and Azure's host services address (wireserver).
_NEVER_PUBLIC = tuple(ipaddress.ip_network(net) for net in ("192.0.0.0/24", "168.63.129.16/32"))
_INTERNAL = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
DEFAULT_PORTS = (80, 443)
RESOLVE_TIMEOUT_S = 5.0


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
    if any(address in network for network in _NEVER_PUBLIC):
        return False
    return address.is_global and not address.is_multicast


def is_internal(address: IpAddress) -> bool:
    """A private address of the operator's own network (RFC 1918, unique local), which an
    allow-listed name may reach: never loopback, link-local (cloud metadata) or the like."""
    if isinstance(address, ipaddress.IPv6Address):
        address = embedded_ipv4(address) or address
    return any(address in network for network in _INTERNAL)


class _Resolver:
    """getaddrinfo on threads of its own, a bounded number: a look-up cannot be interrupted, so one
    that outlives its caller's timeout keeps its thread until the resolver gives up. Those threads
    are never the default pool's (image decoding, storage), and past `threads` look-ups at once,
    more are refused."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wan-dns")
        self._threads = threads
        self._busy = 0
        self._lock = threading.Lock()

    async def addresses(self, host: str, port: int, timeout_s: float) -> list[IpAddress]:
        with self._lock:
            if self._busy >= self._threads:
                raise socket.gaierror(socket.EAI_AGAIN, "every resolver thread is busy")
            self._busy += 1
        # Counted until the look-up returns, not until its caller stops waiting.
        lookup = self._pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        lookup.add_done_callback(self._done)
        try:
            infos = await asyncio.wait_for(asyncio.wrap_future(lookup), timeout_s)
        except TimeoutError:
            raise socket.gaierror(socket.EAI_AGAIN, "timed out") from None
        return [ipaddress.ip_address(info[4][0]) for info in infos]

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._busy -= 1


RESOLVER = _Resolver(threads=8)


class OutboundPolicy:
    """Which addresses user-given URLs may reach: public ones on `ports`, plus the operator's
    allow-list (networks: any address in them; names: their internal addresses) on any port."""

    def __init__(self, allowlist: tuple[str, ...] = (), ports: tuple[int, ...] = DEFAULT_PORTS) -> None:
        networks, hosts = [], set()
        for entry in allowlist:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        self._allowed_networks = networks
        self._allowed_hosts = hosts
        self._ports = frozenset(ports)

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
        # One message for every refusal: it says nothing of what a name resolves to, or of a port.
        refused = OutboundRefused(param, f"{param} points to an address that is not allowed.")
        try:
            addresses = await RESOLVER.addresses(host, port, RESOLVE_TIMEOUT_S)
        except (socket.gaierror, UnicodeError) as exc:
            logger.info("%s refused: %s does not resolve (%s)", param, host, exc)
            raise refused from None
        # All answers must pass: a name that mixes public and private addresses is refused.
        for address in addresses:
            if not self._allowed(host, address, port):
                logger.info("%s refused: %s resolves to %s (port %d)", param, host, address, port)
                raise refused
        return host, addresses[0]

    def _allowed(self, host: str, address: IpAddress, port: int) -> bool:
        if any(address in net for net in self._allowed_networks):
            return True
        if host in self._allowed_hosts:
            return is_internal(address) or is_public(address)
        return is_public(address) and port in self._ports


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


@asynccontextmanager
async def checked_get(
    policy: OutboundPolicy, url: str, param: str, headers: dict[str, str], max_redirects: int
) -> AsyncIterator[httpx.Response]:
    """GET `url`, streamed, through `policy`'s checks at every redirect (at most `max_redirects`,
    then httpx.TooManyRedirects): the first answer that is no redirect, whatever its status."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(max_redirects + 1):
            host, address = await policy.check(url, param)
            response = await client.send(
                pinned_request(client, "GET", url, host, address, headers=headers), stream=True
            )
            try:
                if not response.is_redirect:
                    yield response
                    return
                url = urljoin(url, response.headers["location"])
            finally:
                await response.aclose()
    raise httpx.TooManyRedirects(f"more than {max_redirects} redirects")
