"""Encoding: uint8 frames to H.264 MP4 with ffmpeg (the binary imageio-ffmpeg ships), and the
first frame to a JPEG thumbnail."""

import io
import os
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

# imageio-ffmpeg starts ffmpeg with `preexec_fn=os.setpgrp` (to keep a terminal's Ctrl-C from it)
# unless this says not to. A preexec_fn makes CPython fork() where it would vfork(), and a fork runs
# the process's fork handlers: in a Ray worker, gRPC's, which restart its poller in the child; one
# found its epoll descriptor closed before the exec and aborted the child (the job failed with
# "Broken pipe"). Without it, ffmpeg is started by vfork and exec, and no handler runs. The library
# reads it at each start.
os.environ["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = "1"

# HD video's colours, BT.709 in limited range (what players assume for HD video). The scaler
# converts RGB with the BT.709 matrix (its default is BT.601) and tags the frames with all four;
# the encoder options tag the stream too, for ffmpeg releases that do not take the frames' tags
# (9.0 takes them, and ignores the primaries and transfer options).
BT709_FILTER = (
    "scale=out_color_matrix=bt709:out_range=tv,"
    "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
)
BT709_OPTIONS = ["-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709", "-color_range", "tv"]


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Encode `frames` (frames, height, width, 3; uint8 RGB) as H.264 yuv420p MP4 with +faststart,
    in BT.709 limited range, tagged so (primaries, transfer, matrix, range): players show HD video
    as BT.709, so that ffmpeg's default BT.601 conversion shifted the colours.

    ffmpeg writes to a file because +faststart moves the index to the front after encoding,
    which a pipe cannot do. The bit-exact flags keep the bytes identical for identical frames.
    """
    count, height, width, channels = frames.shape
    if frames.dtype != np.uint8 or channels != 3:
        raise ValueError(f"expected uint8 RGB frames, got {frames.dtype} with {channels} channels")
    with tempfile.TemporaryDirectory(prefix="wan-mp4-") as folder:
        path = Path(folder) / "video.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=[
                "-vf", BT709_FILTER,
                *BT709_OPTIONS,
                "-crf", "18",
                "-preset", "medium",
                "-movflags", "+faststart",
                "-fflags", "+bitexact",
                "-flags:v", "+bitexact",
                "-map_metadata", "-1",
            ],
        )  # fmt: skip
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def encode_jpeg(frame: np.ndarray) -> bytes:
    """One uint8 RGB frame (height, width, 3) as a JPEG."""
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=90)
    return out.getvalue()
