"""Webhooks: a signed POST reaches a local receiver (retried after a failure), a webhook address
the service must not reach is refused at submission, and a receiver cannot hold an attempt
beyond its deadline or make the service read its answer."""

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from support.service import API_KEYS, SMALL, WEBHOOK_SECRET, submit, wait_for

from serve_app.common.outbound import OutboundPolicy
from serve_app.config import webhook_keys
from serve_app.jobs.webhooks import WebhookSender, sign


class _Receiver(BaseHTTPRequestHandler):
    received: queue.Queue
    failures_left = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((dict(self.headers.items()), body))
        failing = _Receiver.failures_left > 0
        _Receiver.failures_left -= failing
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = queue.Queue()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/video", _Receiver.received
    server.shutdown()


def test_a_signed_webhook_is_delivered_and_retried(client, service, receiver):
    url, received = receiver
    _Receiver.failures_left = 1
    job = submit(client, webhook_url=url, **SMALL)
    assert wait_for(client, job["id"])["status"] == "completed"

    first_headers, first_body = received.get(timeout=10)
    headers, body = received.get(timeout=10)  # the retry after the 500
    assert headers["webhook-id"] == first_headers["webhook-id"] and body == first_body
    # The Standard Webhooks reference library accepts the signature with the key's own secret...
    (secret,) = client.get("/v1/webhooks/secret").json()["secrets"]
    event = Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    assert event["type"] == "video.completed"
    assert event["data"]["id"] == job["id"] and event["data"]["status"] == "completed"
    # ...and refuses it for a body that was changed on the way.
    tampered = json.dumps({**event, "type": "video.failed"}).encode()
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(tampered, {k.lower(): v for k, v in headers.items()})
    # ...and the server's secret, or another key's, is not what signs it.
    other = httpx.get(f"{service}/v1/webhooks/secret", headers={"Authorization": f"Bearer {API_KEYS[1]}"})
    for wrong in (WEBHOOK_SECRET, *other.json()["secrets"]):
        with pytest.raises(Exception, match="signature"):
            Webhook(wrong).verify(body, {k.lower(): v for k, v in headers.items()})
    assert "webhook_url" not in job["details"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.2:9/hook", "points to an address that is not allowed"),
        ("http://169.254.169.254/latest/meta-data", "points to an address that is not allowed"),
        ("http://10.1.2.3/hook", "points to an address that is not allowed"),
        ("ftp://example.com/hook", "must be an http or https URL"),
    ],
)
def test_a_webhook_address_that_is_not_public_is_refused(client, url, message):
    before = client.get("/v1/videos", params={"limit": 1}).json()["data"]
    response = client.post("/v1/videos", json={"prompt": "x", "webhook_url": url, **SMALL})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "webhook_url" and message in error["message"]
    assert client.get("/v1/videos", params={"limit": 1}).json()["data"] == before


async def _serve(handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


async def _endless_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 200 with a body that never ends: the sender must not read it."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (2**16, b"x" * 2**16)
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def _trickling_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends its status line a byte a second: each read succeeds, only a deadline ends it."""
    await reader.readuntil(b"\r\n\r\n")
    try:
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)
    except (ConnectionError, OSError):
        pass


def _attempt(handler) -> tuple[str | None, float]:
    async def run() -> tuple[str | None, float]:
        server, url = await _serve(handler)
        sender = WebhookSender(OutboundPolicy(("127.0.0.1",)), timeout_s=2)
        started = time.monotonic()
        async with server:
            outcome = await sender.attempt(url, "msg_1", b"{}", "key-id")
            return outcome, time.monotonic() - started

    return asyncio.run(run())


def test_a_receiver_answering_an_endless_body_counts_as_delivered_without_it_being_read():
    outcome, seconds = _attempt(_endless_answer)
    assert outcome is None and seconds < 2


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline():
    outcome, seconds = _attempt(_trickling_answer)
    assert outcome == "TimeoutError" and 2 <= seconds < 4


def _verify(secret: str, signature: str, timestamp: int) -> dict:
    # The signed timestamp, not the clock's: a second may pass between signing and verifying.
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    return Webhook(secret).verify(b'{"type": "video.completed"}', headers)


def test_each_key_has_its_own_signing_key_and_a_rotation_signs_with_both(monkeypatch):
    # One secret signed every key's events: a tenant given it could forge events for any other.
    old, new = "whsec_" + "b2xk" * 8, "whsec_" + "bmV3" * 8
    monkeypatch.setenv("WAN_WEBHOOK_SECRET", old)
    (alice,), (bob,) = webhook_keys("alice"), webhook_keys("bob")
    assert alice != bob and old not in (alice, bob)
    now = int(time.time())
    signature = sign(webhook_keys("alice"), "msg_1", now, b'{"type": "video.completed"}')
    assert _verify(alice, signature, now)["type"] == "video.completed"
    for wrong in (bob, old):
        with pytest.raises(Exception, match="signature"):
            _verify(wrong, signature, now)
    # A rotation: the new secret first, the old kept until receivers have moved. Every event
    # carries a signature of each, so a receiver verifies with either key.
    monkeypatch.setenv("WAN_WEBHOOK_SECRET", f"{new} {old}")
    rotated = webhook_keys("alice")
    assert rotated[1] == alice and len(rotated) == 2
    signature = sign(rotated, "msg_1", now, b'{"type": "video.completed"}')
    assert len(signature.split()) == 2
    assert all(_verify(key, signature, now)["type"] == "video.completed" for key in rotated)
