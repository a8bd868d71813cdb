"""Prometheus metrics, scraped from the Ray node's metrics endpoint after real jobs."""

import hashlib
import re

import httpx
from support.polling import poll
from support.service import API_KEYS, KEY_ID_SECRET, SMALL, submit, wait_for

from serve_app.api.auth import ApiKeys


def scrape_until(port: int, pattern: str, timeout: float = 60) -> str:
    """The node's metrics once a line matches `pattern` (Ray exports every few seconds)."""

    def matched() -> str | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return text if re.search(pattern, text, re.MULTILINE) else None

    return poll(matched, timeout, every_s=1, what=f"a metric matching {pattern}")


def test_jobs_requests_stages_and_usage_per_key_are_exported(client, metrics_port):
    job = wait_for(client, submit(client, **SMALL)["id"])
    assert job["status"] == "completed"
    key_id = ApiKeys(API_KEYS, KEY_ID_SECRET.encode()).identify(API_KEYS[0])

    text = scrape_until(metrics_port, rf'^ray_wan_key_video_seconds_total{{.*key="{key_id}".*}} [1-9]')
    assert re.search(r'^ray_wan_http_requests_total{.*route="/v1/videos".*status="202".*} [1-9]', text, re.M)
    for stage in ("text_encoding", "denoising", "decoding", "encoding"):
        assert re.search(rf'^ray_wan_generation_stage_seconds_count{{.*stage="{stage}".*}} [1-9]', text, re.M)
    # Latency buckets reach 30 minutes.
    assert re.search(r'^ray_wan_queue_wait_seconds_bucket{.*le="1800.0".*} [1-9]', text, re.M)
    assert re.search(r"^ray_wan_denoising_steps_per_second_count{.*} [1-9]", text, re.M)
    assert re.search(r"^ray_wan_queue_depth{.*} \d", text, re.M)
    assert re.search(rf'^ray_wan_key_gpu_seconds_total{{.*key="{key_id}".*}} \d', text, re.M)
    assert re.search(r'^ray_wan_jobs_finished_total{.*status="completed".*} [1-9]', text, re.M)
    # Keys are never exported, only their ids.
    assert API_KEYS[0] not in text and API_KEYS[1] not in text
    assert hashlib.sha256(API_KEYS[0].encode()).hexdigest()[:16] not in text  # nor a plain digest of one
