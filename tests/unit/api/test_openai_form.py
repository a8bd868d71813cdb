"""The OpenAI form's mapping to what the model makes: the nearest size, the frames for a duration."""

import pytest

from serve_app.api.openai_form import frames_for, nearest_size


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
