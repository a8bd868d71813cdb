"""Which addresses a user-given URL may reach, and how the request is pinned to the checked one."""

import asyncio
import ipaddress
import socket
import threading
import time

import httpx
import pytest
from support.polling import poll

from serve_app.common import outbound
from serve_app.common.outbound import OutboundPolicy, OutboundRefused, is_public, pinned_request


# Each IPv6 form that carries an IPv4 address is judged by that address: 169.254.169.254 (a cloud
# metadata service) and 10.0.0.1 must stay unreachable however they are written.
@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1::1", True),
        ("169.254.169.254", False),
        ("10.0.0.1", False),
        ("127.0.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),  # deprecated site-local
        ("ff02::1", False),
        ("::ffff:169.254.169.254", False),  # IPv4-mapped
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 well-known prefix
        ("64:ff9b::5db8:d822", True),
        ("64:ff9b:1::5db8:d822", False),  # local-use NAT64: an operator's own translator
        ("2002:a9fe:a9fe::", False),  # 6to4
        ("2002:0a00:0001::1", False),
        ("::a9fe:a9fe", False),  # IPv4-compatible
        ("::ffff:0:a9fe:a9fe", False),  # SIIT IPv4-translated
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("192.0.0.1", False),  # IETF protocol assignments: global on some Python patch releases
        ("192.0.0.9", False),
        ("::ffff:192.0.0.10", False),
        ("168.63.129.16", False),  # Azure's wireserver
    ],
)
def test_an_address_is_public_only_if_what_it_carries_is(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.fixture
def resolve(monkeypatch):
    """Answers getaddrinfo from a table: the tests need names that resolve to chosen addresses,
    and no test may reach a real DNS server."""
    table: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def check(policy: OutboundPolicy, url: str):
    return asyncio.run(policy.check(url, "webhook_url"))


def test_a_name_with_one_private_answer_among_public_ones_is_refused_without_saying_which(resolve):
    resolve["mixed.example"] = ["93.184.216.34", "10.0.0.7"]
    with pytest.raises(OutboundRefused) as refused:
        check(OutboundPolicy(), "https://mixed.example/hook")
    assert refused.value.param == "webhook_url"
    assert "10.0.0.7" not in refused.value.message


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a", "file:///etc/passwd", "http:///nohost", "http://example.com:99999/", "gopher://x"],
)
def test_a_url_that_is_not_http_to_a_valid_host_and_port_is_refused(resolve, url):
    with pytest.raises(OutboundRefused):
        check(OutboundPolicy(), url)


def test_a_name_that_does_not_resolve_is_refused(resolve):
    with pytest.raises(OutboundRefused):
        check(OutboundPolicy(), "https://nowhere.example/")


def test_the_allow_list_admits_its_networks_and_names_only(resolve):
    resolve["hooks.internal"] = ["10.1.2.3"]
    resolve["other.internal"] = ["10.9.9.9"]
    policy = OutboundPolicy(("10.1.0.0/16", "other.internal"))
    assert check(policy, "http://hooks.internal/") == ("hooks.internal", ipaddress.ip_address("10.1.2.3"))
    assert check(policy, "http://other.internal/")[0] == "other.internal"
    with pytest.raises(OutboundRefused):
        check(policy, "http://10.2.0.1/")


def test_a_public_host_is_reached_on_80_and_443_only_and_the_refusal_says_the_same(resolve):
    resolve["example.com"] = ["93.184.216.34"]
    policy = OutboundPolicy()
    assert check(policy, "https://example.com/")[0] == check(policy, "http://example.com:80/")[0] == "example.com"
    messages = set()
    for url in ("http://example.com:22/", "https://example.com:6379/", "http://10.0.0.1/", "http://nowhere.example/"):
        with pytest.raises(OutboundRefused) as refused:
            check(policy, url)
        messages.add(refused.value.message)
    assert messages == {"webhook_url points to an address that is not allowed."}
    assert check(OutboundPolicy(ports=(8443,)), "https://example.com:8443/")[0] == "example.com"


def test_an_allow_listed_network_is_reached_on_any_port(resolve):
    resolve["10.1.2.3"] = ["10.1.2.3"]
    assert check(OutboundPolicy(("10.1.0.0/16",)), "http://10.1.2.3:9000/")[1] == ipaddress.ip_address("10.1.2.3")


@pytest.mark.parametrize("address", ["169.254.169.254", "127.0.0.1", "::1", "fe80::1", "168.63.129.16", "0.0.0.0"])
def test_an_allow_listed_name_still_never_reaches_loopback_or_metadata(resolve, address):
    # The name was trusted whatever it resolved to: its DNS, changed, could point it at metadata.
    resolve["images.internal"] = [address]
    with pytest.raises(OutboundRefused):
        check(OutboundPolicy(("images.internal",)), "http://images.internal/cat.png")


def test_look_ups_that_hang_hold_their_own_threads_only_and_past_them_are_refused(monkeypatch):
    # getaddrinfo cannot be interrupted: a resolver that never answers kept a default-pool thread
    # (the pool that decodes images) for each look-up, past its caller's timeout.
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: release.wait(10) and [])
    monkeypatch.setattr(outbound, "RESOLVE_TIMEOUT_S", 0.2)

    async def scenario():
        policy = OutboundPolicy()
        outcomes = await asyncio.gather(
            *(policy.check(f"http://hang{i}.example/", "image_url") for i in range(12)), return_exceptions=True
        )
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)  # the default pool is free
        return outcomes, time.monotonic() - started

    try:
        outcomes, default_pool_s = asyncio.run(scenario())
        assert all(isinstance(outcome, OutboundRefused) for outcome in outcomes)
        assert default_pool_s < 0.5
        with pytest.raises(OutboundRefused):  # every resolver thread is still held: refused at once
            check(OutboundPolicy(), "http://one-more.example/")
    finally:
        release.set()
        # The threads give themselves back as their look-ups return: the next test needs them all.
        poll(lambda: outbound.RESOLVER._busy == 0, timeout_s=5, every_s=0.01, what="the resolver threads' return")


def test_an_international_name_is_resolved_sent_and_verified_in_its_idna_form(resolve):
    resolve["xn--bcher-kva.de"] = ["93.184.216.34"]
    host, address = check(OutboundPolicy(ports=(8443,)), "https://Bücher.de:8443/hook?x=1")
    assert host == "xn--bcher-kva.de"

    async def build() -> httpx.Request:
        async with httpx.AsyncClient() as client:
            return pinned_request(client, "POST", "https://Bücher.de:8443/hook?x=1", host, address)

    request = asyncio.run(build())
    # The connection goes to the checked address, never to a second DNS answer.
    assert request.url.host == "93.184.216.34"
    assert request.url.port == 8443 and request.url.raw_path == b"/hook?x=1"
    assert request.headers["host"] == "xn--bcher-kva.de:8443"
    assert request.extensions["sni_hostname"] == "xn--bcher-kva.de"


def test_a_pinned_ipv6_address_is_bracketed(resolve):
    resolve["v6.example"] = ["2606:2800:220:1::1"]
    host, address = check(OutboundPolicy(), "http://v6.example/")

    async def build() -> httpx.Request:
        async with httpx.AsyncClient() as client:
            return pinned_request(client, "GET", "http://v6.example/", host, address)

    request = asyncio.run(build())
    assert request.url.host == "2606:2800:220:1::1"
    assert request.headers["host"] == "v6.example"
