"""Webhooks: a POST to the job's `webhook_url` when it completes or fails, signed the Standard
Webhooks way (https://www.standardwebhooks.com) and retried with backoff."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time

import httpx

from serve_app.errors import InvalidRequest
from serve_app.outbound import OutboundPolicy, pinned_request
from serve_app.schemas import Job

logger = logging.getLogger(__name__)

SECRET_ENV = "WAN_WEBHOOK_SECRET"
_SECRET_PREFIX = "whsec_"


def webhook_secret() -> bytes | None:
    """The signing key from WAN_WEBHOOK_SECRET: `whsec_<base64>` as Standard Webhooks libraries
    make them, or any other string taken as its UTF-8 bytes. None: webhooks are off."""
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        return None
    if secret.startswith(_SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(_SECRET_PREFIX))
    return secret.encode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: HMAC-SHA256 over `id.timestamp.body`."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    def __init__(self, key: bytes, outbound: OutboundPolicy, retry_delays_s: list[float], timeout_s: float) -> None:
        self._key = key
        self._outbound = outbound
        self._delays = retry_delays_s
        self._timeout_s = timeout_s

    async def deliver(self, url: str, job: Job) -> bool:
        """POST the event `video.<status>` with the job; True once the receiver answered 2xx."""
        message_id = "msg_" + secrets.token_hex(12)  # the same on every attempt, so receivers can dedupe
        event = {
            "id": message_id,
            "object": "event",
            "type": f"video.{job.status}",
            "created_at": int(time.time()),
            "data": job.model_dump(mode="json"),
        }
        body = json.dumps(event).encode()
        for attempt, delay in enumerate([0.0, *self._delays], start=1):
            await asyncio.sleep(delay)
            try:
                status = await self._post(url, message_id, body)
            except (InvalidRequest, httpx.HTTPError) as exc:
                reason = getattr(exc, "message", None) or type(exc).__name__
            else:
                if 200 <= status < 300:
                    logger.info("job %s: webhook delivered (attempt %d)", job.id, attempt)
                    return True
                reason = f"HTTP {status}"
            logger.warning("job %s: webhook attempt %d failed: %s", job.id, attempt, reason)
        logger.error("job %s: webhook given up after %d attempts", job.id, len(self._delays) + 1)
        return False

    async def _post(self, url: str, message_id: str, body: bytes) -> int:
        # Checked again at every attempt: the name may resolve elsewhere now than at submission.
        host, address = await self._outbound.check(url, "webhook_url")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, message_id, timestamp, body),
        }
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self._timeout_s) as client:
            request = pinned_request(client, "POST", url, host, address, headers=headers, content=body)
            response = await client.send(request)
            return response.status_code
