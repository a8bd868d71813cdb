"""The audit's findings, each as a test: bounded inputs at the boundary (JSON and multipart), the
per-key caps on streams and submissions, crafted input that made 500s, and property-based tests
of the parsers and of the whole API (Hypothesis, Schemathesis): a 4xx in our error shape, never a
500. The Ingress's app runs in-process (`support.api`), without Ray."""

import asyncio
import base64
import hashlib
import math
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection, positive_data_acceptance
from support.api import AUTH, KEY_ID, Call, FakeJobs, api
from support.media import png_bytes
from support.polling import apoll, poll

from serve_app.api.downloads import parse_range
from serve_app.api.errors import ServiceError
from serve_app.api.headers import page_csp
from serve_app.api.images import decode_base64
from serve_app.api.openai_form import frames_for, map_form, nearest_size
from serve_app.api.page import PAGE
from serve_app.api.parsing import content_length
from serve_app.benchmark.local_cluster import free_port
from serve_app.common.storage import VIDEO, ResultStorage
from serve_app.config import webhook_keys
from serve_app.messages import JobStatus


@pytest.fixture
def served(tmp_path):
    app, jobs = api(tmp_path)
    return TestClient(app, raise_server_exceptions=False), jobs


def form(client: TestClient, **fields) -> httpx.Response:
    return client.post("/v1/videos", data={"prompt": "a fox", **fields}, files={"unused": ("", b"")}, headers=AUTH)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "param"} and (param is None or error["param"] == param)
    return error


# 1. Every string the service stores or echoes is bounded, with a character set.


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "m" * 4 * 2**20}, "model"),  # 4 MiB: was stored whole, six times over
        ({"model": "sora-2\u0000"}, "model"),
        ({"size": "1280" + " " * 10_000 + "x704"}, "size"),
        ({"seconds": "4" + " " * 10_000}, "seconds"),
        ({"seconds": "inf"}, "seconds"),  # was a 500: an infinite frame count
        ({"seconds": "1e999"}, "seconds"),
        ({"fps": "²"}, "fps"),  # was a 500: a digit to isdigit(), not to int()
        ({"prompt": "a fox\u0007 in the snow"}, "prompt"),
    ],
)
def test_a_form_field_out_of_bounds_is_a_400_naming_it(served, fields, param):
    client, jobs = served
    assert_error(form(client, **fields), 400, param)
    assert jobs.submitted == []


def test_a_form_field_name_is_bounded_and_never_echoed_whole(served):
    client, _ = served
    error = assert_error(form(client, **{"x" * 100_000: "1"}), 400)
    assert len(error["message"]) < 200


def test_a_json_body_of_more_fields_than_the_cap_is_a_400_before_validation(served):
    # 150,000 unknown fields: pydantic built an error for each, on the event loop.
    client, jobs = served
    body = {"prompt": "a fox", **{f"f{i}": 1 for i in range(150_000)}}
    error = assert_error(client.post("/v1/videos", json=body, headers=AUTH), 400)
    assert error["message"] == "The body has 150001 fields, over the limit of 64."
    assert jobs.submitted == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/videos", {"Content-Type": "text/plain"}),  # started a generation at the default size
        ("/v1/videos", {}),
        ("/v1/videos", {"Content-Type": "application/x-www-form-urlencoded"}),  # curl -d without -H
        ("/predict", {"Content-Type": "multipart/form-data; boundary=x"}),  # /predict takes JSON only
        ("/predict", {"Content-Type": "application/jsonp"}),
    ],
)
def test_a_body_of_a_type_the_route_does_not_declare_is_a_415_with_nothing_started(served, path, headers):
    client, jobs = served
    response = client.post(path, content=b'{"prompt": "a fox"}', headers={**AUTH, **headers})
    assert assert_error(response, 415)["code"] == "unsupported_media_type"
    assert jobs.admit.calls == [] and jobs.submitted == []


def test_json_with_a_charset_is_json(served):
    client, _ = served
    headers = {**AUTH, "Content-Type": "Application/JSON; charset=utf-8"}
    assert client.post("/v1/videos", content=b'{"prompt": "a fox"}', headers=headers).status_code == 202


def test_details_requested_holds_the_parsed_and_normalised_values(served):
    client, jobs = served
    upload = {"input_reference": ("../../etc/" + "c" * 300 + ".png", png_bytes((64, 64)), "image/png")}
    response = client.post(
        "/v1/videos", data={"prompt": "a fox", "model": "tiny", "size": " 1280x720 ", "seconds": "4.00"},
        files=upload, headers=AUTH,
    )  # fmt: skip
    assert response.status_code == 202, response.text
    requested = jobs.submitted[-1].details.requested
    assert requested == {"model": "tiny", "size": "1280x720", "seconds": "4", "input_reference": "c" * 64}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a fox", "negative_prompt": "\u0000"}, "negative_prompt"),
        ({"prompt": "a fox", "image_url": "http://example.com/a b.png"}, "image_url"),
        ({"prompt": "a fox", "webhook_url": "https://example.com/\r\nX-Injected: 1"}, "webhook_url"),
        ({"prompt": "a fox", "x" * 100_000: 1}, "x" * 64),  # an unknown field, echoed bounded
    ],
)
def test_a_json_field_out_of_bounds_is_a_400_naming_it(served, body, param):
    client, jobs = served
    assert_error(client.post("/v1/videos", json=body, headers=AUTH), 400, param)
    assert jobs.submitted == []


# 4, 7. Per-key caps on streams, long polls and submissions in flight: 429 with Retry-After.


def test_a_key_holds_at_most_its_share_of_event_streams_and_gives_each_back(tmp_path):
    app, jobs = api(tmp_path, max_streams_per_key=2)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/v1/videos", json={"prompt": "a fox"}, headers=AUTH).status_code == 202
    streams = app.state.ingress.streams
    held = [streams.take("other key"), streams.take(KEY_ID), streams.take(KEY_ID)]  # two streams open elsewhere
    refused = client.get("/v1/videos/video_x/events", headers=AUTH)
    error = assert_error(refused, 429)
    assert error["code"] == "too_many_streams" and refused.headers["Retry-After"] == "5"
    for give_back in held[1:]:
        give_back()
    # A stream that runs to its end (the job finished) gives its slot back.
    jobs._job = jobs._job.model_copy(update={"status": JobStatus.CANCELLED})
    for _ in range(3):
        assert client.get("/v1/videos/video_x/events", headers=AUTH).status_code == 200
    assert streams.take(KEY_ID) and streams.take(KEY_ID)


def test_a_key_has_at_most_its_share_of_submissions_in_flight_before_any_image_is_decoded(tmp_path):
    admitted = asyncio.Event()

    async def slow_admission(*args):
        await admitted.wait()

    jobs = FakeJobs()
    jobs.admit = Call(slow_admission)
    app, _ = api(tmp_path, jobs=jobs, max_submissions_per_key=2)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH) as http:
            pending = [asyncio.create_task(http.post("/v1/videos", json={"prompt": "a fox"})) for _ in range(2)]
            await apoll(lambda: len(jobs.admit.calls) >= 2, what="both submissions being admitted")
            refused = await http.post("/v1/videos", json={"prompt": "a fox", "image_base64": "iVBORw0KGgo="})
            admitted.set()
            return refused, await asyncio.gather(*pending)

    refused, accepted = asyncio.run(scenario())
    assert assert_error(refused, 429)["code"] == "too_many_submissions"
    assert [response.status_code for response in accepted] == [202, 202]


# 6. Crafted input that made 500s.


def test_a_range_of_thousands_of_digits_is_ignored_not_a_500(served, tmp_path):
    client, jobs = served
    client.post("/v1/videos", json={"prompt": "a fox"}, headers=AUTH)
    ResultStorage(str(tmp_path / "results")).write("video_x", {VIDEO: b"0123456789"})
    jobs._job = jobs._job.model_copy(update={"status": JobStatus.COMPLETED})
    response = client.get("/v1/videos/video_x/content", headers={**AUTH, "Range": "bytes=" + "9" * 5000 + "-"})
    assert response.status_code == 200 and response.content == b"0123456789"


@pytest.mark.parametrize(
    ("method", "path", "allow"), [("OPTIONS", "/v1/videos", "GET, POST"), ("GET", "/predict", "POST")]
)
def test_a_405_lists_every_method_the_path_serves(served, method, path, allow):
    response = served[0].request(method, path, headers=AUTH)
    assert_error(response, 405)
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize("header", ["²", "9" * 5000, "-1", "1e3", " 12"])
def test_a_content_length_that_is_no_plain_number_is_not_believed(header):
    # Both made int() raise: a superscript digit, and more digits than int() reads.
    assert content_length(header) is None
    assert content_length("1024") == 1024


# Property-based: the parsers answer a 4xx in our shape or a value, never anything else.

PARSER = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PARSER
@given(st.text(max_size=40))
def test_a_size_is_a_multiple_of_32_within_bounds_or_a_400(text):
    try:
        width, height = nearest_size(text)
    except ServiceError as exc:
        assert exc.status_code == 400 and exc.param == "size"
    else:
        assert 32 <= width <= 2048 and 32 <= height <= 2048 and width % 32 == height % 32 == 0


@PARSER
@given(st.one_of(st.text(max_size=30), st.floats(allow_nan=True).map(str)), st.integers(1, 60))
def test_seconds_give_a_4n_plus_1_frame_count_or_a_400(text, fps):
    try:
        frames = frames_for(text, fps)
    except ServiceError as exc:
        assert exc.status_code == 400 and exc.param == "seconds"
    else:
        assert 25 <= frames <= 121 and frames % 4 == 1 and math.isfinite(float(text.strip()))


@PARSER
@given(st.one_of(st.none(), st.text(max_size=60), st.from_regex(r"bytes=[0-9]{0,30}-[0-9]{0,30}", fullmatch=True)),
       st.integers(0, 10**9))  # fmt: skip
def test_a_range_is_inside_the_file_or_the_whole_file_or_a_416(header, size):
    try:
        byte_range = parse_range(header, size)
    except ServiceError as exc:
        assert exc.status_code == 416
    else:
        assert byte_range is None or 0 <= byte_range[0] <= byte_range[1] < size


@PARSER
@given(st.one_of(st.text(max_size=200), st.from_regex(r"data:image/[a-z]{1,8};base64,[A-Za-z0-9+/=\s]{0,80}")))
def test_base64_and_data_urls_decode_or_are_a_4xx(text):
    try:
        decoded = decode_base64(text, max_bytes=1000)
    except ServiceError as exc:
        assert exc.status_code in (400, 413)
    else:
        assert isinstance(decoded, bytes)


@PARSER
@given(st.dictionaries(st.sampled_from(["model", "size", "seconds", "fps", "width", "num_frames", "prompt"]),
                       st.text(max_size=30), max_size=5))  # fmt: skip
def test_openai_form_fields_map_or_are_a_400(fields):
    try:
        data, requested = map_form(fields, None)
    except ServiceError as exc:
        assert exc.status_code == 400 and exc.param in fields
    else:
        assert set(requested) <= {"model", "size", "seconds"}


# The whole API, from its OpenAPI description: valid and invalid requests alike get an answer that
# the description allows, and never a 500 (Schemathesis, positive and negative cases).


def _openapi_schema():
    app, _ = api(Path(tempfile.mkdtemp(prefix="wan-openapi-")))
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    loaded.config.update(headers=AUTH)
    loaded.config.generation.update(
        max_examples=30, modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    )
    return loaded


schema = _openapi_schema()


@schema.parametrize()
def test_the_api_never_answers_a_500_to_any_request_its_description_allows_or_refuses(case):
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and "application/json" in str(response.headers.get("content-type")):
        assert set(response.json()["error"]) >= {"code", "message", "param"}
    # Every check but `ignored_auth` (the key is ours, sent on purpose) and the acceptance of every
    # schema-valid body, which no schema can promise here: an image URL must be public, an image
    # must decode, a webhook needs the operator's secret. In a multipart form every value is text,
    # so a "wrong type" there (prompt 0 for "0") is no invalid request: its refusal is not checked.
    excluded = [ignored_auth, positive_data_acceptance]
    if case.media_type == "multipart/form-data":
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)


def test_a_key_gets_its_own_webhook_secrets_and_none_when_webhooks_are_off(served, monkeypatch):
    client, _ = served
    monkeypatch.setenv("WAN_WEBHOOK_SECRET", "first second")
    response = client.get("/v1/webhooks/secret", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"object": "webhook_secret", "secrets": webhook_keys(KEY_ID)}
    assert assert_error(client.get("/v1/webhooks/secret"), 401)
    monkeypatch.delenv("WAN_WEBHOOK_SECRET")
    assert assert_error(client.get("/v1/webhooks/secret", headers=AUTH), 404)["code"] == "not_found"


def test_a_download_holds_one_of_the_keys_streams_until_its_body_is_sent(tmp_path):
    # /content took no slot: slow readers of whole videos added up without bound.
    app, jobs = api(tmp_path, max_streams_per_key=2)
    client = TestClient(app, raise_server_exceptions=False)
    client.post("/v1/videos", json={"prompt": "a fox"}, headers=AUTH)
    ResultStorage(str(tmp_path / "results")).write("video_x", {VIDEO: b"0123456789" * 100_000})
    jobs._job = jobs._job.model_copy(update={"status": "completed"})
    streams = app.state.ingress.streams
    held = [streams.take(KEY_ID), streams.take(KEY_ID)]
    refused = client.get("/v1/videos/video_x/content", headers=AUTH)
    assert assert_error(refused, 429)["code"] == "too_many_streams" and refused.headers["Retry-After"] == "5"
    held.pop()()
    for _ in range(3):  # each download gives its slot back once sent
        response = client.get("/v1/videos/video_x/content", headers=AUTH)
        assert response.status_code == 200 and len(response.content) == 1_000_000
    assert streams.take(KEY_ID)


def test_a_slow_reader_slows_the_reads_of_its_download(tmp_path):
    # Served by uvicorn (Serve's HTTP server) on loopback: a client that reads nothing leaves the
    # file mostly unread, rather than the whole video read into memory for it.
    app, jobs = api(tmp_path)
    TestClient(app).post("/v1/videos", json={"prompt": "a fox"}, headers=AUTH)
    storage = app.state.ingress.storage
    storage.write("video_x", {VIDEO: bytes(64 * 2**20)})
    jobs._job = jobs._job.model_copy(update={"status": "completed"})
    reads = []
    opened = storage.open

    def counting_open(job_id, name):
        file = opened(job_id, name)
        read = file.read
        file.read = lambda size: reads.append(size) or read(size)
        return file

    storage.open = counting_open
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, every_s=0.01, what="the server starting")
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(b"GET /v1/videos/video_x/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n")
            assert connection.recv(100).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)  # long enough for an unpaced server to read all 64 MiB
            assert 0 < sum(reads) < 32 * 2**20
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.mark.parametrize("path", ["/healthz", "/v1/videos", "/no-such-route", "/", "/docs"])
def test_every_answer_carries_a_csp_nosniff_and_no_referrer(served, path):
    response = served[0].get(path, headers=AUTH)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP: HSTS means nothing here


def test_hsts_once_the_proxy_says_the_request_came_over_tls(served):
    response = served[0].get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_the_page_runs_only_its_own_inline_code_by_hash():
    csp = page_csp(PAGE)
    script = re.search(r"<script>(.*?)</script>", PAGE, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "unsafe" not in csp
    assert " style=" not in PAGE and " onclick=" not in PAGE  # inline attributes the CSP would block


def test_the_docs_load_swagger_ui_from_the_service_not_a_cdn(served):
    client, _ = served
    html = client.get("/docs").text
    assert "cdn" not in html and "https://" not in html
    for asset, media_type in [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")]:
        assert f"/docs/assets/{asset}" in html
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert len(response.content) > 10_000
    assert assert_error(client.get("/docs/assets/..%2Fcore.py"), 404)
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN
