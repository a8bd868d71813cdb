"""The OpenAI form's mapping to what the model makes: the nearest size, the frames for a duration,
the adapters as the SDK writes a list."""

import asyncio

import pytest
from starlette.datastructures import Headers

from serve_app.api.errors import InvalidRequest
from serve_app.api.openai_form import LORA_PATH, LORA_SCALE, frames_for, map_form, nearest_size
from serve_app.api.parsing import parse_form_video_request


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1280x720", (1280, 704)), ("720x1280", (704, 1280)), ("1792x1024", (1792, 1024)), ("100x49", (96, 64))],
)
def test_nearest_size(size, expected):
    assert nearest_size(size) == expected


@pytest.mark.parametrize(
    ("seconds", "fps", "frames"), [("4", 24, 97), ("5", 24, 121), ("2", 16, 33), ("0.5", 24, 25), ("3.4", 30, 101)]
)
def test_frames_for_a_duration(seconds, fps, frames):
    assert frames_for(seconds, fps) == frames


def test_the_sdks_list_of_adapters_maps_to_loras_in_order():
    repeated = {LORA_PATH: ["tiny-style", "owner/repo"], LORA_SCALE: ["0.5", "2"]}
    data, requested = map_form({"prompt": "a fox"}, None, repeated)
    assert data["loras"] == [{"path": "tiny-style", "scale": "0.5"}, {"path": "owner/repo", "scale": "2"}]
    assert requested == {}
    data, _ = map_form({"prompt": "a fox"}, None, {LORA_PATH: ["tiny-style"]})
    assert data["loras"] == [{"path": "tiny-style"}]  # the default scale


@pytest.mark.parametrize(
    ("fields", "repeated"),
    [
        ({}, {LORA_PATH: ["a", "b"], LORA_SCALE: ["1"]}),  # which adapter's scale is it?
        ({}, {LORA_SCALE: ["1"]}),
        ({"loras": "[]"}, {LORA_PATH: ["a"]}),
    ],
    ids=["a-scale-short", "a-scale-alone", "both-forms"],
)
def test_adapters_a_form_cannot_pair_are_a_400(fields, repeated):
    with pytest.raises(InvalidRequest) as refused:
        map_form({"prompt": "a fox", **fields}, None, repeated)
    assert refused.value.status_code == 400 and refused.value.param in ("loras", LORA_PATH)


def test_a_multipart_body_as_the_openai_sdk_sends_it_gives_the_adapters():
    """The SDK writes `extra_body={"loras": [{"path": ..., "scale": ...}, ...]}` as repeated
    bracketed fields (its `_serialize_multipartform`); such a body, written here."""
    fields = [("prompt", "a fox"), (LORA_PATH, "tiny-style"), (LORA_SCALE, "0.8"), (LORA_PATH, "style-2"),
              (LORA_SCALE, "1.5")]  # fmt: skip
    boundary = "wan-test"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n' for name, v in fields]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    headers = Headers({"content-type": f"multipart/form-data; boundary={boundary}"})
    parsed, _ = asyncio.run(parse_form_video_request(headers, body))
    assert [(lora.path, lora.scale) for lora in parsed.loras] == [("tiny-style", 0.8), ("style-2", 1.5)]
