"""Images to send, and what a player sees in a video we return."""

import io

import av
import numpy as np
from PIL import Image


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def probe_mp4(data: bytes) -> dict:
    """What a player sees in the file: codec, pixel format, size, rate, decoded frame count."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.width,
            "height": stream.height,
            "fps": float(stream.average_rate),
            "frames": frames,
            # +faststart: the index (moov) comes before the media data (mdat).
            "faststart": data.find(b"moov") < data.find(b"mdat"),
        }


def colours_seen(data: bytes) -> tuple[dict[str, str], np.ndarray]:
    """The first frame's colour tags (primaries, transfer, matrix, range), and its pixels as a
    player shows HD video: decoded with BT.709 in limited range, whatever the tags say."""
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(container.streams.video[0]))
        tags = {
            "primaries": frame.color_primaries, "transfer": frame.color_trc,
            "matrix": frame.colorspace, "range": frame.color_range,
        }  # fmt: skip
        shown = frame.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray()
    names = {"primaries": av.video.reformatter.ColorPrimaries, "transfer": av.video.reformatter.ColorTrc,
             "matrix": av.video.reformatter.Colorspace, "range": av.video.reformatter.ColorRange}  # fmt: skip
    return {key: names[key](value).name for key, value in tags.items()}, shown


def decoded_frames(data: bytes) -> np.ndarray:
    """Every frame of the video as a player decodes it: (frames, height, width, 3) uint8."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])
