"""MP4 encoding on its own: exact frames, size and rate; deterministic bytes; bad input refused."""

import numpy as np
import pytest
from support.media import probe_mp4

from serve_app.engine.video import encode_mp4


def test_encodes_exactly_the_frames_given():
    frames = np.random.default_rng(0).integers(0, 256, size=(33, 64, 128, 3), dtype=np.uint8)
    video = encode_mp4(frames, fps=16)
    info = probe_mp4(video)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (33, 128, 64, 16.0)
    assert (info["codec"], info["pix_fmt"], info["faststart"]) == ("h264", "yuv420p", True)
    assert encode_mp4(frames, fps=16) == video


def test_output_is_compact():
    # A smooth 121-frame 704x1280 clip: the guide documented ~150 MB; H.264 makes it a few MB at most.
    ramp = np.linspace(0, 255, 1280, dtype=np.uint8)
    frames = np.broadcast_to(ramp[None, None, :, None], (121, 704, 1280, 3))
    assert len(encode_mp4(frames, fps=24)) < 5 * 2**20


def test_refuses_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((25, 32, 32, 3), dtype=np.float32), fps=24)
