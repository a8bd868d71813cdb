"""Whether a submission is queued: the video fits the generators' GPU memory, the queue has room,
the key's share of it and its stored jobs and bytes are under their limits. A refusal says when
to retry, from how long recent jobs ran. Judged twice: before any work (`refusal`), and in the
transaction that stores the job (`judge`, given to `JobStore.add`), so that concurrent submissions
through any replicas never pass a limit together."""

import math
from collections import deque

from serve_app.capacity import Capacity
from serve_app.error_codes import ErrorCode
from serve_app.jobs.store import JobStore, Usage
from serve_app.messages import Refusal, VideoShape


class Admission:
    def __init__(
        self,
        store: JobStore,
        max_queued: int,
        max_per_key: int,
        max_stored_jobs_per_key: int,
        max_stored_bytes_per_key: int,
        max_stored_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._max_queued = max_queued
        self._max_per_key = max_per_key
        self._max_stored_jobs = max_stored_jobs_per_key
        self._max_stored_bytes = max_stored_bytes_per_key
        self._max_total_bytes = max_stored_bytes
        # How long recent jobs ran, for the Retry-After of a refusal.
        self._recent_run_s: deque[float] = deque([60.0], maxlen=20)
        # What each model's generators' GPU memory allows, as the latest to start a job reported it.
        self.capacity: dict[str, Capacity | None] = {}

    def ran(self, seconds: float) -> None:
        if seconds > 0:
            self._recent_run_s.append(seconds)

    async def refusal(self, owner: str, shape: VideoShape | None, model: str | None = None) -> Refusal | None:
        return self.judge(await self._store.usage(owner), shape, model)

    def judge(self, usage: Usage, shape: VideoShape | None, model: str | None = None) -> Refusal | None:
        """Why a submission with this usage is refused, or None; the video's size is judged by what
        its model's generators reported."""
        capacity = self.capacity.get(model) if model is not None else None
        if shape is not None and capacity is not None and (reason := shape.refusal(capacity)):
            return Refusal(code=ErrorCode.VIDEO_TOO_LARGE, message=reason)
        run_s = sum(self._recent_run_s) / len(self._recent_run_s)
        queued = usage.queued
        if queued >= self._max_queued:
            wait = run_s * (queued - self._max_queued + 1) / max(1, usage.running)
            return _refusal(ErrorCode.QUEUE_FULL, f"The queue is full ({queued} jobs waiting). Retry later.", wait)
        if self._max_total_bytes is not None and usage.total_bytes >= self._max_total_bytes:
            message = (
                f"This server stores {usage.total_bytes / 2**30:.1f} GiB of videos, its limit. Retry once some expire."
            )
            return _refusal(ErrorCode.STORAGE_FULL, message, run_s)
        if usage.owner_active >= self._max_per_key:
            message = (f"This API key already has {usage.owner_active} jobs queued or running, its limit. "
                       "Retry when one has finished, or cancel one.")  # fmt: skip
            return _refusal(ErrorCode.TOO_MANY_JOBS, message, run_s)
        stored_jobs, stored_bytes = usage.owner_jobs, usage.owner_bytes
        if stored_jobs >= self._max_stored_jobs or stored_bytes >= self._max_stored_bytes:
            limit = f"{self._max_stored_jobs} jobs, {self._max_stored_bytes / 2**20:.0f} MiB"
            message = (f"This API key stores {stored_jobs} jobs and {stored_bytes / 2**20:.0f} MiB of videos, its "
                       f"limit ({limit}). Delete some, or retry once they expire.")  # fmt: skip
            return _refusal(ErrorCode.STORAGE_QUOTA, message, run_s)
        return None


def _refusal(code: ErrorCode, message: str, wait_s: float) -> Refusal:
    return Refusal(code=code, message=message, retry_after_s=_bounded(wait_s))


def _bounded(seconds: float) -> int:
    return min(3600, max(1, math.ceil(seconds)))
