"""The `loras` field in the Ingress (in-process, without Ray): what the registry and the source
policy refuse is a 400 naming `loras[i]...` before anything is queued; what they allow reaches
Jobs with its source resolved, and `details.loras` echoes it. A refusal that only the Generator
can make (a file of another base) comes back from `/predict` as the same 400."""

import pytest
from fastapi.testclient import TestClient
from support.api import AUTH, Call, api
from support.service import SMALL

from serve_app.error_codes import ErrorCode
from serve_app.messages import JobError, JobStatus

SHA = "ab" * 32
REGISTRY = {
    "style": {"source": "owner/style-lora", "revision": "0123abc", "sha256": SHA},
    "motion": {"source": "/srv/loras/motion.safetensors"},
}


def client(tmp_path, **args) -> tuple[TestClient, object]:
    app, jobs = api(tmp_path, lora_registry=REGISTRY, **args)
    return TestClient(app, raise_server_exceptions=False), jobs


def post(http: TestClient, loras, path: str = "/v1/videos"):
    return http.post(path, json={"prompt": "a fox", "loras": loras, **SMALL}, headers=AUTH)


def assert_400(response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param
    return error["message"]


def test_registered_adapters_reach_jobs_resolved_and_details_echo_them(tmp_path):
    http, jobs = client(tmp_path)
    response = post(http, [{"path": "style", "scale": 0.5}, {"path": "motion"}])
    assert response.status_code == 202, response.text
    (submission,) = jobs.submitted
    style, motion = submission.request.loras
    assert (style.source.kind, style.source.location, style.source.revision) == ("hub", "owner/style-lora", "0123abc")
    assert (motion.source.kind, motion.scale) == ("path", 1.0)
    assert response.json()["details"]["loras"] == [
        {"path": "style", "scale": 0.5, "sha256": SHA},  # pinned: known before any replica reads it
        {"path": "motion", "scale": 1.0, "sha256": None},
    ]
    # Serve's multiplexing routes on the set: the same adapters in any order are the same set.
    again = submission.request.model_copy(update={"loras": (motion, style)})
    assert again.adapter_set == submission.request.adapter_set is not None


def test_a_request_without_adapters_has_none_and_is_pinned_to_no_replica(tmp_path):
    http, jobs = client(tmp_path)
    response = http.post("/v1/videos", json={"prompt": "a fox", **SMALL}, headers=AUTH)
    assert response.status_code == 202 and response.json()["details"]["loras"] == []
    assert jobs.submitted[0].request.loras == () and jobs.submitted[0].request.adapter_set is None


@pytest.mark.parametrize(
    ("loras", "param"),
    [
        ([{"path": "unknown"}], "loras[0].path"),
        ([{"path": "style"}, {"path": "nope"}], "loras[1].path"),
        ([{"path": "style"}, {"path": "style"}], "loras[1].path"),  # twice
        ([{"path": "/srv/loras/motion.safetensors"}], "loras[0].path"),  # a server path: only the registry's
        ([{"path": "owner/repo"}], "loras[0].path"),  # the hub: not allowed by default
        ([{"path": "https://93.184.216.34/a.safetensors"}], "loras[0].path"),  # nor URLs
        ([{"path": "style"}] * 5, "loras"),  # at most 4
        ([{"path": "style", "scale": 4.5}], "loras[0].scale"),
        ([{"path": "style", "scale": -0.1}], "loras[0].scale"),
        ([{"path": "style", "scale": "1"}], "loras[0].scale"),
        ([{"path": ""}], "loras[0].path"),
        ([{"path": "style", "weight": 1}], "loras[0].weight"),
        ({"path": "style"}, "loras"),
    ],
)
def test_a_refused_adapter_is_a_400_naming_it_with_nothing_queued(tmp_path, loras, param):
    http, jobs = client(tmp_path)
    assert_400(post(http, loras), param)
    assert jobs.submitted == []


def test_the_message_says_what_the_server_allows(tmp_path):
    http, _ = client(tmp_path)
    assert "motion, style" in assert_400(post(http, [{"path": "unknown"}]), "loras[0].path")
    http, _ = api_without_adapters(tmp_path)
    assert "no LoRA adapters" in assert_400(post(http, [{"path": "style"}]), "loras[0].path")


def api_without_adapters(tmp_path):
    app, jobs = api(tmp_path)
    return TestClient(app, raise_server_exceptions=False), jobs


@pytest.mark.parametrize(
    ("path", "param_or_kind"),
    [
        ("owner/repo", "hub"),
        ("owner/repo/sub/file.safetensors", "hub"),
        ("owner/repo/file.bin", "loras[0].path"),
        ("https://93.184.216.34/a.safetensors", "url"),  # a public address
        ("https://93.184.216.34/a.ckpt", "loras[0].path"),
        ("https://127.0.0.1/a.safetensors", "loras[0].path"),  # loopback
        ("https://169.254.169.254/a.safetensors", "loras[0].path"),  # cloud metadata
        ("https://10.0.0.7/a.safetensors", "loras[0].path"),  # private
        ("http://93.184.216.34/a.safetensors", "loras[0].path"),  # https only
    ],
)
def test_hub_ids_and_https_urls_only_where_the_policy_allows_them(tmp_path, path, param_or_kind):
    http, jobs = client(tmp_path, lora_sources=["registered", "hub", "url"])
    response = post(http, [{"path": path}])
    if param_or_kind.startswith("loras"):
        assert_400(response, param_or_kind)
    else:
        assert response.status_code == 202, response.text
        assert jobs.submitted[0].request.loras[0].source.kind == param_or_kind


def test_without_registered_in_the_policy_registry_names_are_refused(tmp_path):
    http, _ = client(tmp_path, lora_sources=["hub"])
    assert_400(post(http, [{"path": "motion"}]), "loras[0].path")


def test_an_adapter_the_generator_refused_is_a_400_from_predict_naming_it(tmp_path):
    http, jobs = client(tmp_path)
    refused = JobError(
        code=ErrorCode.INVALID_REQUEST, message="loras[0].path: a LoRA of another base.", param="loras[0].path"
    )
    jobs.watch = Call(
        lambda owner, job_id, seen, timeout_s: seen.model_copy(update={"status": JobStatus.FAILED, "error": refused})
    )
    message = assert_400(post(http, [{"path": "style"}], "/predict"), "loras[0].path")
    assert "another base" in message


def test_a_registry_entry_is_a_hub_id_a_path_a_url_or_tiny_style():
    from pydantic import ValidationError

    from serve_app.config import AppArgs

    with pytest.raises(ValidationError, match="neither an https URL"):
        AppArgs(lora_registry={"x": {"source": "http://example.com/a.safetensors"}})
    with pytest.raises(ValidationError, match="sha256"):
        AppArgs(lora_registry={"x": {"source": "tiny-style", "sha256": "not-a-hash"}})
    assert not AppArgs().loras_enabled and AppArgs().pipeline_options.lora_memory_bytes == 0
    # With adapters, the memory plan keeps room for the most a replica holds; compiled, hot-swap slots.
    on = AppArgs(lora_registry={"x": {"source": "tiny-style"}}, max_loras_per_replica=3, max_lora_mb=100)
    assert on.loras_enabled and on.pipeline_options.lora_memory_bytes == 300 * 2**20
    assert on.pipeline_options.lora_slots == 0
    assert on.model_copy(update={"compile": "regional"}).pipeline_options.lora_slots == 3
