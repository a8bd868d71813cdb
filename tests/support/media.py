"""Images to send, and what a player sees in a video we return."""

import io

import av
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
