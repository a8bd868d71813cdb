"""The Locust load test, run for real: a bounded smoke run against the tiny service (CI fails on
any unexpected error), rejections counted as rejections, and the report it writes."""

import csv
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.service import API_KEYS, NO_LOAD_TEST_FAILURES, ROOT, wait_idle

pytestmark = pytest.mark.e2e

LOAD_KEY = API_KEYS[1]


def load_test(service: str, out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests", "--host", service, "--api-key", LOAD_KEY, "--size", "64x64",
         "--frames", "25", "--steps-mix", "2:3,4:1", "--out", str(out), *args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip


def test_smoke_load_test_passes_and_writes_the_report(service, tmp_path):
    run = load_test(service, tmp_path, "--users", "2", "--run-time", "12s", "--think-time", "0.2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    samples = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    completed = [sample for sample in samples if sample["outcome"] == "completed"]
    assert {sample["user"] for sample in completed} == {"JobsUser", "PredictUser"}
    assert all(sample["generation_s"] > 0 and sample["end_to_end_s"] >= sample["generation_s"] for sample in completed)
    assert not [sample for sample in samples if sample["outcome"] == "failed"]
    assert not (tmp_path / "locust_exceptions.csv").read_text().strip().splitlines()[1:]

    # Locust's own statistics carry the custom per-step-count entries.
    with (tmp_path / "locust_stats.csv").open() as rows:
        names = {(row["Type"], row["Name"]) for row in csv.DictReader(rows)}
    assert {("JOB", "end-to-end [2 steps]"), ("JOB", "queue wait [2 steps]"), ("JOB", "generation [2 steps]")} <= names
    assert ("POST", "/predict") in names and ("GET", "/v1/videos/{id}/events") in names

    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| 2 steps |"))
    assert int(row.split("|")[2]) == sum(1 for sample in completed if sample["steps"] == 2)
    assert "- completed: " in report and NO_LOAD_TEST_FAILURES in report
    assert LOAD_KEY not in report and "--api-key REDACTED" in report
    for plot in ("latency.png", "queue_wait.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    with (tmp_path / "replicas.csv").open() as rows:
        assert {row["generator_replicas"] for row in csv.DictReader(rows)} == {"1"}
    # Jobs still running when the time was up were cancelled, not left to the GPUs.
    wait_idle(service, (LOAD_KEY,), within_s=30)


def test_429_and_503_are_counted_as_rejections_not_failures(service, tmp_path):
    # Open loop at 15 jobs/s: far past the per-key limit of the test service (5).
    run = load_test(service, tmp_path, "--user-classes", "JobsUser", "--users", "2", "--run-time", "6s",
                    "--arrival-rate", "15")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    samples = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    rejected = [sample for sample in samples if sample["outcome"] == "rejected"]
    # Far past the limit, however few submissions a loaded machine gets out in 6 s.
    assert len(rejected) >= 3 and {(sample["status"], sample["code"]) for sample in rejected} <= {
        (429, "too_many_jobs"),
        (503, "queue_full"),
    }
    report = (tmp_path / "report.md").read_text()
    assert f"- rejected (429 too_many_jobs): {sum(s['status'] == 429 for s in rejected)}" in report
    assert NO_LOAD_TEST_FAILURES in report
    wait_idle(service, (LOAD_KEY,), within_s=30)


def rising(counts: list[int]) -> bool:
    """Never down until the top, and at most the last sample after it (the users stopping)."""
    top = len(counts) - counts[::-1].index(max(counts))
    return counts[:top] == sorted(counts[:top]) and len(counts) - top <= 1


@pytest.mark.parametrize(
    ("shape", "expected"),
    # Users over a 9 s run of 4 users at most: rising from 1 to 3 or 4 (on a loaded machine Locust's
    # last samples may come before the top, or as the users stop), or 1 with all 4 for the middle third.
    [("ramp", lambda counts: rising(counts) and counts[0] <= 2 and max(counts) >= 3),
     ("burst", lambda counts: counts[0] == 1 and 4 in counts and counts[-1] == 1)],
)  # fmt: skip
def test_load_shapes_set_the_user_count_over_the_run(service, tmp_path, shape, expected):
    run = load_test(service, tmp_path, "--load-shape", shape, "--users", "4", "--run-time", "9s",
                    "--user-classes", "JobsUser")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (tmp_path / "locust_stats_history.csv").open() as rows:
        counts = [int(row["User Count"]) for row in csv.DictReader(rows) if row["Name"] == "Aggregated"]
    counts = [count for count in counts if count]  # before the first user and after the last
    assert expected(counts), ", ".join(map(str, counts))
    wait_idle(service, (LOAD_KEY,), within_s=30)


def test_an_unreachable_service_is_a_clear_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "loadtests", "--host", "http://127.0.0.1:9", "--run-time", "5s", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2
    assert "http://127.0.0.1:9/readyz does not answer 'ready'" in run.stderr


class _HangsUp(BaseHTTPRequestHandler):
    """Ready, then closes the connection on every submission without an answer (a reset connection)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"status": "ready", "generator_replicas": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_a_request_left_without_an_answer_is_a_failure_with_its_error_not_a_crash(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HangsUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = load_test(f"http://127.0.0.1:{server.server_port}", tmp_path, "--user-classes", "JobsUser",
                        "--users", "1", "--run-time", "2s", "--think-time", "0.2")  # fmt: skip
    finally:
        server.shutdown()
    # Failed (the requests did), with what each got: status 0 and the client's error; no exception in the test code.
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    with (tmp_path / "locust_failures.csv").open() as rows:
        failures = {(row["Name"], row["Error"]) for row in csv.DictReader(rows)}
    assert failures, run.stderr[-3000:]
    assert all(name == "/v1/videos" and "0: HTTPConnectionClosed" in error for name, error in failures), failures


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--run-time", "5x", "'5x' is not a duration like 90s, 5m or 1h30m"),
     ("--size", "1280", "'1280' is not a size like 1280x704"),
     ("--steps-mix", "20;2", "'20;2' is not [model@]steps:weight, steps 1 to 100, weight above 0")],
)  # fmt: skip
def test_bad_options_are_refused_before_any_load(tmp_path, option, value, message):
    run = subprocess.run(
        [sys.executable, "-m", "loadtests", "--host", "http://127.0.0.1:9", option, value, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and message in run.stderr
