"""MP4 encoding on its own: exact frames, size and rate; deterministic bytes; bad input refused."""

import os

import numpy as np
import pytest
from support.media import colours_seen, probe_mp4

from serve_app.engine.video import encode_mp4


def test_encodes_exactly_the_frames_given():
    frames = np.random.default_rng(0).integers(0, 256, size=(33, 64, 128, 3), dtype=np.uint8)
    video = encode_mp4(frames, fps=16)
    info = probe_mp4(video)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (33, 128, 64, 16.0)
    assert (info["codec"], info["pix_fmt"], info["faststart"]) == ("h264", "yuv420p", True)
    assert encode_mp4(frames, fps=16) == video


def test_colours_are_bt709_tagged_and_come_back_as_made():
    # A player shows HD video as BT.709: ffmpeg's default BT.601 conversion made this red
    # (213, 46, 28) there. A flat patch, so that chroma subsampling changes nothing.
    frames = np.zeros((9, 64, 64, 3), dtype=np.uint8)
    frames[:, :, :32] = (200, 30, 30)
    frames[:, :, 32:] = (30, 160, 220)
    tags, shown = colours_seen(encode_mp4(frames, fps=24))
    assert tags == {"primaries": "BT709", "transfer": "BT709", "matrix": "ITU709", "range": "MPEG"}
    for patch, colour in ((shown[8:56, 4:28], (200, 30, 30)), (shown[8:56, 36:60], (30, 160, 220))):
        assert np.abs(patch.reshape(-1, 3).astype(int) - colour).max() <= 3, patch.mean(axis=(0, 1))


def test_output_is_compact():
    # A smooth 121-frame 704x1280 clip: the guide documented ~150 MB; H.264 makes it a few MB at most.
    ramp = np.linspace(0, 255, 1280, dtype=np.uint8)
    frames = np.broadcast_to(ramp[None, None, :, None], (121, 704, 1280, 3))
    assert len(encode_mp4(frames, fps=24)) < 5 * 2**20


def test_refuses_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((25, 32, 32, 3), dtype=np.float32), fps=24)


def test_ffmpeg_is_started_without_running_the_processs_fork_handlers():
    # A Generator replica is a Ray worker, whose gRPC threads have fork handlers: a child made by
    # fork() once aborted before it could exec ffmpeg (gRPC's poller, restarted in the child, found
    # its epoll descriptor closed), and the job failed with "Broken pipe". CPython runs Python's fork
    # handlers, and forks rather than vforks (so the C libraries' run too), for a preexec_fn.
    forks = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))  # cannot be removed; it only counts
    encode_mp4(np.zeros((5, 16, 16, 3), dtype=np.uint8), fps=24)
    assert forks == []
