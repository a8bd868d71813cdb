"""How Jobs replicas that share a store pass jobs between them, none special.

- Each replica beats in the store (by the database's clock) every `heartbeat_s` (the app argument
  `jobs_heartbeat_s`).
- A job is held by the replica that dispatched it, and by no other: claims are compare-and-sets.
- A replica that stops on purpose (a rolling update, a scale-down) releases the jobs it holds that
  have not started, stops following them, and follows those running to their end, beating all
  the while; a job whose start raced with its release is stopped at its first step.
- Every live replica adopts, with a compare-and-set, the jobs nobody holds: released ones at once,
  and those of a replica silent for `silent_s` (`jobs_silent_s`). An adopted queued job is dispatched; an adopted
  running one lost its generation with its replica and fails as `interrupted`.
"""

import asyncio
import logging

from serve_app.error_codes import ErrorCode
from serve_app.jobs.dispatch import Dispatcher
from serve_app.jobs.store import JobStore
from serve_app.messages import JobError, JobStatus

logger = logging.getLogger(__name__)

INTERRUPTED = JobError(
    code=ErrorCode.INTERRUPTED,
    message="The jobs replica following this job stopped while it ran (a crash); submit it again.",
)


class Handover:
    def __init__(
        self, store: JobStore, dispatcher: Dispatcher, runner: str, heartbeat_s: float, silent_s: float
    ) -> None:
        self._store = store
        self.heartbeat_s = heartbeat_s
        self._silent_s = silent_s
        self._dispatcher = dispatcher
        self._runner = runner
        self._adopting = asyncio.Lock()
        self.stopping = False

    async def beat(self) -> None:
        """Every `heartbeat_s` until cancelled: beat (a stopping replica too, while it follows its
        running jobs to their end), and adopt what nobody holds (a stopping replica does not)."""
        while True:
            try:
                await self._store.heartbeat(self._runner)
                await self.adopt()
            except Exception:
                logger.exception("heartbeat failed; trying again")
            await asyncio.sleep(self.heartbeat_s)

    async def adopt(self) -> None:
        """Claim the jobs nobody holds (released, or their replica silent) and take them on."""
        async with self._adopting:
            if self.stopping:
                return
            for orphan in await self._store.adopt(self._runner, self._silent_s):
                if orphan.status == JobStatus.QUEUED:
                    logger.info("job %s: adopted, dispatching", orphan.job_id)
                    await self._dispatcher.dispatch(orphan.job_id, orphan.owner)
                else:
                    await self._dispatcher.finish(orphan.job_id, JobStatus.FAILED, INTERRUPTED)

    async def stop(self) -> None:
        """Hand over the jobs not started, follow the running ones to their end, leave."""
        # An adoption under way ends first (what it takes on is handed over below too), none after:
        # else it could claim, for this replica, the jobs it releases here, and leave them unfollowed.
        async with self._adopting:
            self.stopping = True
        # Those waiting for their turn first: a slot freed meanwhile sends none of them to Serve.
        queued = sorted((running for running in self._dispatcher.running.values() if not running.started),
                        key=lambda running: running.stream is not None)  # fmt: skip
        released = 0
        for running in queued:
            # Released only if it is still queued and ours: a job that has started stays ours.
            if await self._store.release(running.job_id, self._runner):
                self._dispatcher.stop(running.job_id)
                released += 1
        following = [running.task for running in self._dispatcher.running.values() if running.task]
        logger.info("stopping: %d queued jobs handed over, following %d to their end", released, len(following))
        if following:
            await asyncio.wait(following)
        await self._store.retire(self._runner)
