"""Reference images without Ray: cover and centre crop, colour modes, a decompression bomb refused from its header."""

import io

import pytest
from PIL import Image

from serve_app.api.errors import PayloadTooLarge
from serve_app.api.images import ImagePolicy, prepare_image

POLICY = ImagePolicy(max_bytes=2**20, max_pixels=4_000_000, fetch_timeout_s=3)


def _decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def test_image_is_covered_and_centre_cropped_not_stretched():
    # A green square between two red bands: cropping to a square keeps only green;
    # stretching would squeeze the red bands in.
    source = Image.new("RGB", (300, 100), (255, 0, 0))
    source.paste((0, 255, 0), (100, 0, 200, 100))
    out = io.BytesIO()
    source.save(out, format="PNG")
    result = _decode(prepare_image(out.getvalue(), 64, 64, POLICY, "image_base64"))
    assert result.size == (64, 64)
    assert result.mode == "RGB"
    assert result.getpixel((0, 32))[0] < 30 and result.getpixel((63, 32))[0] < 30


def test_non_rgb_images_are_converted():
    out = io.BytesIO()
    Image.new("LA", (50, 50), (128, 200)).save(out, format="PNG")
    result = _decode(prepare_image(out.getvalue(), 32, 64, POLICY, "image_base64"))
    assert (result.size, result.mode) == ((32, 64), "RGB")


def test_decompression_bomb_is_refused_from_the_header():
    out = io.BytesIO()
    Image.new("1", (5000, 5000)).save(out, format="PNG")  # 25 MP in a few KB
    with pytest.raises(PayloadTooLarge, match="pixel limit"):
        prepare_image(out.getvalue(), 64, 64, POLICY, "image_url")
