"""The Python client without a service: it retries a 503 after its Retry-After."""

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_app.client import WanClient, WanError


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 with Retry-After: 1 until `busy_for` requests have come, then an empty list."""

    busy_for = 2
    seen: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Busy.seen.append(time.monotonic())
        busy = len(_Busy.seen) <= _Busy.busy_for
        body = (
            {"error": {"code": "queue_full", "message": "The queue is full.", "param": None}}
            if busy
            else {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        )
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


def test_the_client_retries_a_503_after_its_retry_after():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _Busy.seen, _Busy.busy_for = [], 2
        assert WanClient(url, "k").list_jobs().data == []
        assert len(_Busy.seen) == 3
        assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(_Busy.seen))

        _Busy.seen, _Busy.busy_for = [], 10
        with pytest.raises(WanError) as gave_up:
            WanClient(url, "k", max_retries=1).list_jobs()
        assert (gave_up.value.status, gave_up.value.code) == (503, "queue_full") and len(_Busy.seen) == 2
    finally:
        server.shutdown()


def test_loras_are_names_pairs_or_the_requests_own_entries():
    client = WanClient("http://127.0.0.1:1", "k")
    body = client._body("a fox", None, {"loras": ["style", ("motion", 0.5), {"path": "x", "scale": 2.0}]})
    assert body["loras"] == [{"path": "style"}, {"path": "motion", "scale": 0.5}, {"path": "x", "scale": 2.0}]
