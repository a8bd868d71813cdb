"""Whether a submission is queued: the video fits the generators' GPU memory, the queue has room,
the key's share of it and its stored jobs and bytes are under their limits. A refusal says when
to retry, from how long recent jobs ran."""

import math
from collections import deque

from serve_app.capacity import Capacity
from serve_app.jobs.store import JobStore
from serve_app.messages import Refusal, VideoShape


class Admission:
    def __init__(
        self,
        store: JobStore,
        max_queued: int,
        max_per_key: int,
        max_stored_jobs_per_key: int,
        max_stored_bytes_per_key: int,
    ) -> None:
        self._store = store
        self._max_queued = max_queued
        self._max_per_key = max_per_key
        self._max_stored_jobs = max_stored_jobs_per_key
        self._max_stored_bytes = max_stored_bytes_per_key
        # How long recent jobs ran, for the Retry-After of a refusal.
        self._recent_run_s: deque[float] = deque([60.0], maxlen=20)
        # What each model's generators' GPU memory allows, as the latest to start a job reported it.
        self.capacity: dict[str, Capacity | None] = {}

    def ran(self, seconds: float) -> None:
        if seconds > 0:
            self._recent_run_s.append(seconds)

    async def refusal(self, owner: str, shape: VideoShape | None, model: str | None = None) -> Refusal | None:
        capacity = self.capacity.get(model) if model is not None else None
        if shape is not None and capacity is not None and (reason := shape.refusal(capacity)):
            return Refusal(status=400, code="video_too_large", message=reason)
        run_s = sum(self._recent_run_s) / len(self._recent_run_s)
        queued = await self._store.count("queued")
        if queued >= self._max_queued:
            running = max(1, await self._store.count("in_progress"))
            wait = run_s * (queued - self._max_queued + 1) / running
            return Refusal(
                status=503,
                code="queue_full",
                message=f"The queue is full ({queued} jobs waiting). Retry later.",
                retry_after_s=_bounded(wait),
            )
        active = await self._store.count("queued", owner) + await self._store.count("in_progress", owner)
        if active >= self._max_per_key:
            return Refusal(
                status=429,
                code="too_many_jobs",
                message=f"This API key already has {active} jobs queued or running, its limit. "
                "Retry when one has finished, or cancel one.",
                retry_after_s=_bounded(run_s),
            )
        stored_jobs, stored_bytes = await self._store.usage(owner)
        if stored_jobs >= self._max_stored_jobs or stored_bytes >= self._max_stored_bytes:
            return Refusal(
                status=429,
                code="storage_quota",
                message=f"This API key stores {stored_jobs} jobs and {stored_bytes / 2**20:.0f} MiB of videos, "
                f"its limit ({self._max_stored_jobs} jobs, {self._max_stored_bytes / 2**20:.0f} MiB). Delete some, "
                "or retry once they expire.",
                retry_after_s=_bounded(run_s),
            )
        return None


def _bounded(seconds: float) -> int:
    return min(3600, max(1, math.ceil(seconds)))
