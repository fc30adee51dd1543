"""A corpus of good and bad image files, generated in the test: what real, uncleaned pools contain."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def scene(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A noisy background with two filled rectangles."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 60 + 80).astype(np.uint8)
    pixels[20:60, 30:80] = (220, 40, 40)
    pixels[70:110, 90:150] = (40, 40, 220)
    return Image.fromarray(pixels)


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares huge dimensions (decompression bomb), with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW for display
    return _encode(scene(), "JPEG", exif=exif.tobytes())


def corpus() -> dict[str, tuple[bytes | None, str]]:
    """{file name: (bytes or None for "missing", expected status)}."""
    good = scene()
    gray16 = Image.fromarray((np.asarray(good.convert("L"), dtype=np.uint16) * 257))
    return {
        "good_0.jpg": (_encode(scene(seed=1), "JPEG", quality=92), "ok"),
        "good_1.png": (_encode(scene(200, 150, seed=2), "PNG"), "ok"),
        "gray.png": (_encode(good.convert("L"), "PNG"), "ok"),
        "cmyk.jpg": (_encode(good.convert("CMYK"), "JPEG"), "ok"),
        "rgba.png": (_encode(good.convert("RGBA"), "PNG"), "ok"),
        "palette.png": (_encode(good.convert("P"), "PNG"), "ok"),
        "gray16.png": (_encode(gray16, "PNG"), "ok"),
        "exif_rotated.jpg": (exif_rotated_jpeg(), "ok"),
        "png_named.jpg": (_encode(good, "PNG"), "ok"),  # wrong extension: content decides
        "zero_bytes.jpg": (b"", "error"),
        "truncated.jpg": (_encode(good, "JPEG")[:400], "error"),
        "truncated.png": (_encode(good, "PNG")[:300], "error"),
        "not_an_image.jpg": (b"<html>this is not an image</html>", "error"),
        "bomb.png": (png_bomb_header(), "error"),
        "missing.jpg": (None, "error"),
    }
