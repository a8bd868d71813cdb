"""The official OpenAI Python SDK, unchanged, against the live local service."""

import openai
import pytest
from support.media import png_bytes, probe_mp4
from support.polling import poll
from support.service import API_KEYS

from serve_app.messages import JobStatus

# Our own fields ride along as extra form fields; small enough for a CPU.
FAST = {"num_inference_steps": 2, "seed": 11}


@pytest.fixture(scope="module")
def sdk(service: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service}/v1", api_key=API_KEYS[0], max_retries=0, timeout=60)


def finish(sdk: openai.OpenAI, video_id: str):
    def ended():
        video = sdk.videos.retrieve(video_id)
        return video if JobStatus(video.status).is_terminal else None

    return poll(ended, 180, what=f"video {video_id} ending")


def test_create_retrieve_download_list_and_delete(sdk):
    video = sdk.videos.create(prompt="a paper boat on a pond", model="tiny", seconds="1", size="64x64", extra_body=FAST)
    assert video.object == "video" and not JobStatus(video.status).is_terminal
    assert (video.size, video.prompt, video.model) == ("64x64", "a paper boat on a pond", "tiny")

    done = finish(sdk, video.id)
    assert done.status == "completed" and done.progress == 100
    assert done.completed_at >= done.created_at and done.expires_at > done.completed_at
    # 1 s at 24 fps is 24 frames: the nearest count the model can make is 25.
    assert done.seconds == "1.04"
    details = done.model_extra["details"]
    assert details["num_frames"] == 25 and details["seed"] == 11 and details["num_inference_steps"] == 2
    assert details["requested"] == {"model": "tiny", "seconds": "1", "size": "64x64"}

    mp4 = sdk.videos.download_content(video.id).content
    assert probe_mp4(mp4)["frames"] == 25 and probe_mp4(mp4)["width"] == 64
    thumbnail = sdk.videos.download_content(video.id, variant="thumbnail").content
    assert thumbnail.startswith(b"\xff\xd8")  # JPEG

    second = sdk.videos.create(prompt="a second boat", seconds="1", size="64x64", extra_body=FAST)
    page = sdk.videos.list(limit=1)
    assert [v.id for v in page.data] == [second.id] and page.has_more
    assert page.get_next_page().data[0].id == video.id  # the SDK's own cursor paging

    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)
    finish(sdk, second.id)


def test_sizes_and_durations_map_to_what_the_model_makes(sdk):
    # 1280x720 for 4 s maps to 1280x704 and 97 frames: over the test server's pixel cap, which
    # says so in those terms before any work is done.
    with pytest.raises(openai.BadRequestError) as too_big:
        sdk.videos.create(prompt="a harbour at dawn", model="tiny", seconds="4", size="1280x720")
    assert "1280x704 with 97 frames is 87,408,640 pixels" in too_big.value.message
    video = sdk.videos.create(prompt="a harbour at dawn", seconds="2", size="100x49", extra_body=FAST)
    assert video.size == "96x64" and video.model_extra["details"]["num_frames"] == 49
    assert video.model_extra["details"]["requested"]["size"] == "100x49"
    finish(sdk, video.id)


def test_an_uploaded_input_reference_makes_text_and_image_to_video(sdk):
    video = sdk.videos.create(
        prompt="the red square comes alive",
        input_reference=("first.png", png_bytes((80, 64)), "image/png"),
        seconds="1",
        size="64x64",
        extra_body=FAST,
    )
    assert video.model_extra["details"]["mode"] == "ti2v"
    assert video.model_extra["details"]["requested"] == {
        "input_reference": "first.png",
        "seconds": "1",
        "size": "64x64",
    }
    assert finish(sdk, video.id).status == "completed"


def test_a_400_and_a_401_raise_the_sdks_exceptions_with_our_messages(sdk, service):
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.videos.create(prompt="a long story", seconds="12", size="64x64")
    assert too_long.value.param == "seconds"
    assert "at most 121 frames, 5.04 s at 24 fps" in too_long.value.message

    with pytest.raises(openai.BadRequestError) as bad_size:
        sdk.videos.create(prompt="x", size="wide")
    assert bad_size.value.code == "invalid_request" and bad_size.value.param == "size"

    stranger = openai.OpenAI(base_url=f"{service}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.videos.list()
    assert denied.value.code == "unauthorized" and "Invalid API key." in denied.value.message






@pytest.mark.parametrize(
    ("data", "files", "param", "message"),
    [
        ({"prompt": "x", "size": "64x64", "width": "64"}, None, "size", "Give size or width and height, not both."),
        ({"prompt": "x", "seconds": "1", "num_frames": "25"}, None, "seconds", "not both"),
        ({"prompt": "x", "seconds": "soon"}, None, "seconds", "seconds must be a number of seconds"),
        ({"prompt": "x", "seconds": "0"}, None, "seconds", "seconds must be positive."),
        ({"prompt": "x", "size": "2100x64"}, None, "size", "outside 32x32 to 2048x2048"),
        ({"prompt": "x", "num_inference_steps": "many"}, None, "num_inference_steps", "valid integer"),
        ({"prompt": "x", "colour": "red"}, None, "colour", "unknown field"),
        ({"prompt": "x"}, {"poster": ("a.png", b"x", "image/png")}, "poster", "only input_reference may be a file"),
        (
            {"prompt": "x", "size": "64x64", "seconds": "1"},
            {"input_reference": ("a.txt", b"not an image", "text/plain")},
            "input_reference",
            "decoded",
        ),
    ],
)
def test_bad_forms_are_400s_naming_the_field(client, data, files, param, message):
    # (None, value) parts are plain form fields: a multipart body like the SDK's.
    parts = [(name, (None, value)) for name, value in data.items()] + list((files or {}).items())
    response = client.post("/v1/videos", files=parts)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"]


def test_an_oversized_upload_is_a_413(client):
    response = client.post(
        "/v1/videos",
        data={"prompt": "x", "size": "64x64", "seconds": "1"},
        files={"input_reference": ("big.png", b"\0" * (3 * 2**19), "image/png")},
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "input_reference"


def test_the_sdks_model_picks_a_served_model_and_lists_them(sdk):
    assert [model.id for model in sdk.models.list()] == ["tiny", "tiny-turbo"]
    video = sdk.videos.create(prompt="a kite", model="tiny-turbo", seconds="1", size="64x64", extra_body={"seed": 3})
    assert video.model == "tiny-turbo"
    done = finish(sdk, video.id)
    details = done.model_extra["details"]
    assert done.status == "completed" and details["model"] == "tiny-turbo"
    assert (details["num_inference_steps"], details["guidance_scale"], details["shift"]) == (3, 1.0, 5.0)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.videos.create(prompt="a kite", model="sora-2", seconds="1", size="64x64")
    assert refused.value.body["param"] == "model" and "tiny-turbo" in refused.value.body["message"]


def test_adapters_go_through_the_sdks_extra_body(sdk):
    loras = [{"path": "tiny-style", "scale": 0.8}]
    video = sdk.videos.create(prompt="a styled boat", seconds="1", size="64x64", extra_body={**FAST, "loras": loras})
    (applied,) = finish(sdk, video.id).model_extra["details"]["loras"]
    assert applied["path"] == "tiny-style" and applied["scale"] == 0.8 and len(applied["sha256"]) == 64
