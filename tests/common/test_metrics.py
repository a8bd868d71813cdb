"""Prometheus metrics, scraped from the Ray node's metrics endpoint after real jobs."""

import hashlib
import re

import httpx
from support.polling import poll
from support.service import API_KEYS, KEY_ID_SECRET, SMALL, submit, wait_for

from serve_app.api.auth import ApiKeys


def scrape_until(port: int, *patterns: str, timeout: float = 60) -> str:
    """The node's metrics once a line matches each of `patterns`: each replica exports its own
    every few seconds, so one replica's lines may come before another's."""
    missing = list(patterns)

    def matched() -> str | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        missing[:] = [pattern for pattern in patterns if not re.search(pattern, text, re.MULTILINE)]
        return None if missing else text

    return poll(matched, timeout, every_s=1, what=lambda: f"metrics matching {missing}")


def test_jobs_requests_stages_and_usage_per_key_are_exported(client, metrics_port):
    job = wait_for(client, submit(client, **SMALL)["id"])
    assert job["status"] == "completed"
    key_id = ApiKeys(API_KEYS, KEY_ID_SECRET.encode()).identify(API_KEYS[0])

    text = scrape_until(
        metrics_port,
        rf'^ray_wan_key_video_seconds_total{{.*key="{key_id}".*}} [1-9]',
        r'^ray_wan_http_requests_total{.*route="/v1/videos".*status="202".*} [1-9]',
        *(rf'^ray_wan_generation_stage_seconds_count{{.*stage="{stage}".*}} [1-9]'
          for stage in ("text_encoding", "denoising", "decoding", "encoding")),
        r'^ray_wan_queue_wait_seconds_bucket{.*le="1800.0".*} [1-9]',  # latency buckets reach 30 minutes
        r"^ray_wan_denoising_steps_per_second_count{.*} [1-9]",
        r"^ray_wan_queue_depth{.*} \d",
        rf'^ray_wan_key_gpu_seconds_total{{.*key="{key_id}".*}} \d',
        r'^ray_wan_jobs_finished_total{.*status="completed".*} [1-9]',
    )  # fmt: skip
    # Keys are never exported, only their ids.
    assert API_KEYS[0] not in text and API_KEYS[1] not in text
    assert hashlib.sha256(API_KEYS[0].encode()).hexdigest()[:16] not in text  # nor a plain digest of one
