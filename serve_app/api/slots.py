"""Caps on what one API key, and everyone, holds at once on an Ingress replica: event streams and
long polls (each holds a connection, and a call on the Jobs deployment), and submissions in flight
(each may fetch and decode an image). Past a cap, a 429 with Retry-After, before any work."""

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from serve_app.api.errors import TooManyRequests
from serve_app.config import AppArgs
from serve_app.error_codes import ErrorCode

RETRY_AFTER_S = 5


class Slots:
    def __init__(self, per_key: int, total: int, code: ErrorCode, what: str) -> None:
        self._per_key = per_key
        self._total = total
        self._code = code
        self._what = what
        self._held: Counter[str] = Counter()

    def take(self, owner: str) -> Callable[[], None]:
        """Hold a slot for `owner`; the function that gives it back (once, however often called)."""
        if self._held[owner] >= self._per_key:
            raise TooManyRequests(
                f"This API key already holds {self._held[owner]} {self._what} on this server, its limit. "
                "Retry when one has ended.", code=self._code, retry_after_s=RETRY_AFTER_S,
            )  # fmt: skip
        if self._held.total() >= self._total:
            raise TooManyRequests(
                f"This server holds {self._total} {self._what}, its limit. Retry later.",
                code=self._code, retry_after_s=RETRY_AFTER_S,
            )  # fmt: skip
        self._held[owner] += 1
        returned = False

        def give_back() -> None:
            nonlocal returned
            if not returned:
                returned = True
                self._held[owner] -= 1
                if not self._held[owner]:
                    del self._held[owner]

        return give_back

    @contextmanager
    def holding(self, owner: str) -> Iterator[None]:
        give_back = self.take(owner)
        try:
            yield
        finally:
            give_back()


def stream_slots(args: AppArgs) -> Slots:
    what = "event streams, long polls and downloads"
    return Slots(args.max_streams_per_key, args.max_streams, ErrorCode.TOO_MANY_STREAMS, what)


def submission_slots(args: AppArgs) -> Slots:
    return Slots(
        args.max_submissions_per_key, args.max_submissions, ErrorCode.TOO_MANY_SUBMISSIONS, "submissions in flight"
    )
