"""The webhook outbox: a job's event is stored with its final status, in the same transaction, and
sent by whichever Jobs replica is alive, so an update or a crash loses none. A replica leases the
events due (no other sends them meanwhile), sends each once, and deletes it or schedules its next
attempt by `webhook_retry_delays_s`; after the last retry it gives up, with an error in the log. A
replica that stops hands back what it leased and has not settled, so the next sends it at once."""

import asyncio
import logging

from serve_app.jobs.store import JobStore, Webhook
from serve_app.jobs.webhooks import WebhookSender

logger = logging.getLogger(__name__)

POLL_S = 1.0
BATCH = 20


class Outbox:
    def __init__(self, store: JobStore, sender: WebhookSender, runner: str, retry_delays_s: list[float]) -> None:
        self._store = store
        self._sender = sender
        self._runner = runner
        self._delays = retry_delays_s
        # A lease outlives one attempt of each event of a batch sent at once.
        self._lease_s = 3 * sender.timeout_s + POLL_S

    async def run(self) -> None:
        try:
            while True:
                try:
                    due = await self._store.due_webhooks(self._runner, self._lease_s, BATCH)
                    await asyncio.gather(*(self._send(webhook) for webhook in due))
                except Exception:
                    logger.exception("webhook outbox failed; trying again")
                await asyncio.sleep(POLL_S)
        finally:
            # Cancelled (the replica stops) with attempts in flight or unrecorded: without this they
            # would wait out their lease, seconds to minutes, before another replica sent them.
            try:
                await self._store.release_webhooks(self._runner)
            except Exception as exc:
                logger.warning("the webhooks leased here wait out their lease: releasing them failed (%s)", exc)

    async def _send(self, webhook: Webhook) -> None:
        attempt = webhook.attempts + 1
        reason = await self._sender.attempt(webhook.url, webhook.message_id, webhook.body, webhook.owner)
        if reason is None:
            logger.info("job %s: webhook delivered (attempt %d)", webhook.job_id, attempt)
            await self._store.webhook_done(webhook.id)
        elif webhook.attempts < len(self._delays):
            logger.warning("job %s: webhook attempt %d failed: %s", webhook.job_id, attempt, reason)
            await self._store.webhook_retry(webhook.id, self._delays[webhook.attempts])
        else:
            logger.error("job %s: webhook given up after %d attempts: %s", webhook.job_id, attempt, reason)
            await self._store.webhook_done(webhook.id)
