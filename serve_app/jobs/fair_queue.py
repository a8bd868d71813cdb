"""The order in which one model's jobs enter Serve's queue: fair between API keys.

Serve's router serves a deployment's requests first come, first served, so the order is decided
before a job enters it. A job waits here until the deployment has a free slot (Serve holds fewer
of its jobs, queued or running, than the most it can run at once: `slots`), then the waiting job
with the earliest turn enters. A job's turn, given when it arrives, is one after its key's latest
job still here (waiting or in Serve), and never earlier than the turn being served now (that of
the latest job sent to Serve); ties go by arrival. So keys with jobs waiting take turns, round
robin; a key alone still fills every slot (Serve scales out to the maximum on them); and a key that
comes later joins the round being served, behind at most one job of each other key, not behind
every job of the keys before it.

Turns never change once given, so the queue position of a waiting job is exact for this replica
(given that Serve starts the jobs it holds in the order they entered): the jobs in Serve not yet
started, then the waiting jobs with earlier turns. A key that comes later, with fewer jobs, may
take a turn ahead of a waiting job: the position is where the job stands now.
"""

import itertools


class FairQueue:
    """One model's jobs, as one Jobs replica holds them: waiting for their turn, or in Serve
    (queued there, or started) until they end."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[int, int, str]] = {}  # job id -> (turn, arrival, key)
        self._in_serve: dict[str, tuple[int, str]] = {}  # job id -> (turn, key), in the order they entered
        self._started: set[str] = set()
        self._turn = 0  # the turn being served: the latest job's sent to Serve
        self._arrivals = itertools.count()

    def add(self, job_id: str, owner: str) -> None:
        turns = [turn for turn, _, key in self._waiting.values() if key == owner]
        turns += [turn for turn, key in self._in_serve.values() if key == owner]
        turn = max(self._turn, max(turns, default=-1) + 1)
        self._waiting[job_id] = (turn, next(self._arrivals), owner)

    def next(self, slots: int | None) -> str | None:
        """The job to send to Serve now, counted there from now on; None if none waits or Serve
        holds `slots` jobs already (None: no limit)."""
        if not self._waiting or (slots is not None and len(self._in_serve) >= slots):
            return None
        job_id = min(self._waiting, key=self._waiting.__getitem__)
        self._turn, _, owner = self._waiting.pop(job_id)
        self._in_serve[job_id] = (self._turn, owner)
        return job_id

    def start(self, job_id: str) -> None:
        """The job's generation started: it has no queue position any more (it still fills its slot)."""
        if job_id in self._in_serve:
            self._started.add(job_id)

    def remove(self, job_id: str) -> None:
        """The job ended, or left this replica: its slot, or its place in line, is free."""
        self._started.discard(job_id)
        self._in_serve.pop(job_id, None)
        self._waiting.pop(job_id, None)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to start; None if the job started or is not here."""
        queued_in_serve = [job for job in self._in_serve if job not in self._started]
        if job_id in self._in_serve:
            return queued_in_serve.index(job_id) + 1 if job_id not in self._started else None
        if job_id not in self._waiting:
            return None
        mine = self._waiting[job_id]
        return len(queued_in_serve) + 1 + sum(other < mine for other in self._waiting.values())
