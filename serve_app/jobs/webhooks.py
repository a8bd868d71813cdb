"""Webhooks: a POST to the job's `webhook_url` when it completes or fails, signed the Standard
Webhooks way (https://www.standardwebhooks.com) with the keys of the job's API key (one signature
per server secret, during a rotation several). `outbox` retries them."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time

import httpx

from serve_app.common.outbound import OutboundPolicy, OutboundRefused, pinned_request
from serve_app.config import webhook_keys
from serve_app.messages import Job

logger = logging.getLogger(__name__)


def sign(keys: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: HMAC-SHA256 over `id.timestamp.body` with each `whsec_` key,
    space-separated, as Standard Webhooks has it for a rotation (a receiver accepts any one)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key_bytes(key), signed, hashlib.sha256).digest()).decode() for key in keys
    )


def _key_bytes(key: str) -> bytes:
    return base64.b64decode(key.removeprefix("whsec_"))


class WebhookSender:
    """One signed POST of an event to a receiver: checked against the outbound policy at every
    attempt, bounded by one deadline for the whole attempt, and the answer's body never read."""

    def __init__(self, outbound: OutboundPolicy, timeout_s: float) -> None:
        self._outbound = outbound
        self.timeout_s = timeout_s

    async def attempt(self, url: str, message_id: str, body: bytes, owner: str) -> str | None:
        """None once the receiver answered 2xx; else why not, for the log. Signed with `owner`'s keys."""
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await self._post(url, message_id, body, owner)
        except OutboundRefused as exc:
            return exc.message
        except (httpx.HTTPError, TimeoutError) as exc:
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _post(self, url: str, message_id: str, body: bytes, owner: str) -> int:
        # Checked again at every attempt: the name may resolve elsewhere now than at submission.
        host, address = await self._outbound.check(url, "webhook_url")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(webhook_keys(owner), message_id, timestamp, body),
        }
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            request = pinned_request(client, "POST", url, host, address, headers=headers, content=body)
            # Only the status matters: the receiver's body is never read, whatever its size.
            response = await client.send(request, stream=True)
            await response.aclose()
            return response.status_code


def event(job: Job, message_id: str) -> bytes:
    """The body of the event `video.<status>` with the job, as the API shows it (`api.resources.Video`,
    which Jobs may not import: that it is the same is checked in tests/api/test_resources.py)."""
    return json.dumps(
        {
            "id": message_id,
            "object": "event",
            "type": f"video.{job.status}",
            "created_at": int(time.time()),
            "data": {**job.model_dump(mode="json"), "object": "video"},
        }
    ).encode()
