"""Decode untrusted image bytes into BGR uint8, or raise `ImageError` with a message naming the image.

`decode_image` is the one decoder of scoring, training and evaluation, so all three see the same
pixels. On a GPU, scoring decodes JPEGs in batches with nvJPEG (`decode_jpegs`, chosen by `probe`) and
falls back to `decode_image` for everything else. Coordinates are
those of the stored pixels (EXIF orientation is not applied), which is the frame VOC and COCO boxes
are written in.
"""
from __future__ import annotations

import io
import struct
import threading
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from raylib import storage

# We enforce our own limit (`max_pixels`) from the header before decoding; Pillow's own bomb check stays
# on as a second line, set above any sensible `data.max_pixels` (it warns above this, fails at twice it).
PIL_MAX_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = PIL_MAX_PIXELS
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # an image file this big is not a photo of a scene: refused unread
FIRST_READ_BYTES = 1024 * 1024  # most photos whole, in one read (read_image_bytes)
DEFAULT_MAX_PIXELS = 40_000_000  # decode_image's limit where the caller gives none (data.max_pixels' default)
# Header reads: most headers are in the first 64 KiB; a JPEG's EXIF/ICC segments (before its size) may
# push it further, so a failed parse reads on, up to 1 MiB.
HEAD_BYTES = (64 * 1024, 1024 * 1024)
# ICO: Pillow decodes the largest frame inside Image.open, before any size check can run, and the
# frame's own header (a PNG or DIB inside the icon) is what gets decoded, not the directory's size.
# Icons are at most 256x256 by the format (a DIB frame's height counts its mask too: up to 512).
_ICO_MAGIC = b"\0\0\1\0"
_ICO_MAX_SIDE = 512
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_WARNING_FILTERS = threading.Lock()


class ImageError(ValueError):
    """An image that can't be used; recorded as an error row, never fatal for the run."""


def read_image_bytes(uri: str, name: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the image at `uri` (local or s3://), reading at most `max_bytes` + 1: a bigger file
    raises ImageError without being loaded whole (a multi-GB file in a pool is not a photo). A missing
    or unreadable file raises ImageError too, with the message its status row gets."""
    try:
        fs, path = storage.resolve(uri)
        with fs.open_input_stream(path) as stream:
            # A read allocates what it asks for: from 4 MiB up that cost ~0.2 ms a call here, 7x the read
            # of a 130 KB JPEG (1 MiB: 0.03 ms). A read stops short only at the end of the file.
            data = stream.read(min(FIRST_READ_BYTES, max_bytes + 1))
            if len(data) == FIRST_READ_BYTES:
                data += stream.read(max_bytes + 1 - len(data))
    except FileNotFoundError as exc:  # local files and S3 keys alike (pyarrow maps NoSuchKey to it)
        raise ImageError(f"image '{name}' is missing at its uri; recorded, skipped") from exc
    except Exception as exc:  # noqa: BLE001 - OSError from S3, permissions, ...
        raise ImageError(f"image '{name}' could not be read ({type(exc).__name__}: {str(exc)[:200]}); "
                         "recorded, skipped") from exc
    if len(data) > max_bytes:
        raise ImageError(f"image '{name}' is larger than {max_bytes / 2**20:.0f} MiB; not read (skipped)")
    return data


def header_size_of(uri: str, name: str) -> tuple[int, int]:
    """(width, height) of the image at `uri` from its first bytes only (HEAD_BYTES)."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream:
        data = stream.read(HEAD_BYTES[0])
        try:
            return header_size(data, name)
        except ImageError:
            if len(data) < HEAD_BYTES[0]:
                raise  # the whole file was read
        return header_size(data + stream.read(HEAD_BYTES[1] - len(data)), name)


def header_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header only: cheap, and safe against decompression bombs."""
    width, height, _, _ = _header(data, name)
    return width, height


def image_size(uri: str, name: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of the image at `uri` from its header, after the checks `decode_image` makes before
    it decodes (file size, format, ICO frames, `max_pixels`; None: DEFAULT_MAX_PIXELS): what training
    needs to know of a labelled image, without decoding it. Pixels that don't decode (a truncated scan)
    are only found when the image is decoded."""
    width, height = header_size(read_image_bytes(uri, name), name)
    _check_pixels(width, height, name, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    return width, height


def _check_icon_frames(data: bytes, name: str) -> None:
    """Refuse an ICO whose frames (read from each frame's own PNG/DIB header, as Pillow will decode
    them) are larger than an icon can be, before Image.open decodes one."""
    try:
        (count,) = struct.unpack_from("<H", data, 4)
        for index in range(count):
            offset = struct.unpack_from("<I", data, 6 + 16 * index + 12)[0]
            if data[offset:offset + 8] == _PNG_MAGIC:
                width, height = struct.unpack_from(">II", data, offset + 16)  # IHDR
            else:
                width, height = (abs(v) for v in struct.unpack_from("<ii", data, offset + 4))  # BITMAPINFOHEADER
            if width > _ICO_MAX_SIDE or height > _ICO_MAX_SIDE:
                raise ImageError(f"image '{name}': ICO frame {index} is {width}x{height}, larger than an icon "
                                 f"can be ({_ICO_MAX_SIDE} px a side); refused before decoding")
    except struct.error as exc:
        raise ImageError(f"image '{name}' has a corrupt header (ICO directory: {exc})") from exc


def _header(data: bytes, name: str) -> tuple[int, int, str | None, str]:
    """(width, height, format, mode) from the header only."""
    if not data:
        raise ImageError(f"image '{name}' is empty (0 bytes)")
    if data[:4] == _ICO_MAGIC:
        _check_icon_frames(data, name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size[0], image.size[1], image.format, image.mode
    except UnidentifiedImageError as exc:
        raise ImageError(f"image '{name}' is not a readable image file") from exc
    except Image.DecompressionBombError as exc:  # Pillow's second line (PIL_MAX_PIXELS); not an OSError
        raise ImageError(f"image '{name}' is over the limit of {2 * PIL_MAX_PIXELS / 1e6:.0f} MP that no "
                         f"data.max_pixels can raise (Pillow's bomb check: {exc}); skipped") from exc
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ImageError(f"image '{name}' has a corrupt header ({exc})") from exc


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> HxWx3 uint8 BGR. Grayscale, palette, CMYK, alpha and 16-bit images are converted;
    truncated or corrupt files and images over `max_pixels` raise ImageError."""
    width, height = header_size(data, name)
    _check_pixels(width, height, name, max_pixels)
    try:
        # PIL warns, instead of failing, on some corrupt data: warnings become errors while decoding.
        # The warning filters are process-wide, so threads (a GPU actor's concurrent batches) take
        # turns: interleaved catch_warnings blocks can leave the filter at "error" for good.
        with _WARNING_FILTERS, warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                array = _to_rgb8(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Warning, Image.DecompressionBombError) as exc:
        reason = "truncated" if "truncated" in str(exc) else str(exc)
        raise ImageError(f"image '{name}' could not be decoded ({reason})") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise odd types on hostile files: never fatal
        raise ImageError(f"image '{name}' could not be decoded ({type(exc).__name__}: {exc}); skipped") from exc
    return np.ascontiguousarray(array[:, :, ::-1])


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image '{name}' is {width}x{height} ({width * height / 1e6:.0f} MP), over the limit of "
            f"{max_pixels / 1e6:.0f} MP (data.max_pixels); skipped"
        )


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        span = max(float(values.max() - values.min()), 1e-12)
        gray = ((values - values.min()) * (255.0 / span)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on YOLOX's pad grey so transparent areas look like padding, not black objects.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (114, 114, 114, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if image.mode in ("RGB;16", "RGB;16B"):
        raise ImageError("48-bit RGB is not supported")
    return np.asarray(image.convert("RGB"))


# Formats and modes the device decoder (nvJPEG through torchvision) reads as we do; anything else,
# CMYK JPEGs included (PIL inverts Adobe CMYK, nvJPEG does not), goes to `decode_image` on a CPU.
_DEVICE_MODES = ("RGB", "L")
_JPEG_END = b"\xff\xd9"


def probe(data: bytes, name: str, max_pixels: int) -> tuple[int, int, bool]:
    """(width, height, device_decodable) from the header; raises ImageError as `decode_image` would
    for empty, unreadable and over-limit files. `device_decodable`: a complete baseline/progressive
    JPEG in RGB or grayscale, which `decode_jpegs` may decode on a GPU. A JPEG without its end marker
    is left to the CPU, whose decoder reports it as truncated (nvJPEG may decode it silently)."""
    width, height, kind, mode = _header(data, name)
    _check_pixels(width, height, name, max_pixels)
    return width, height, kind == "JPEG" and mode in _DEVICE_MODES and data[-64:].rstrip(b"\0\r\n ").endswith(_JPEG_END)


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """JPEG bytes -> [3, H, W] uint8 BGR tensors on `device`, decoded as one batch (nvJPEG on a GPU).
    An image the batch decoder refuses is retried alone; one that still fails is None, for the caller
    to decode with `decode_image` (same pixels rules, same error messages)."""
    if not datas:
        return []
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
        for tensor in tensors:
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    return [None if image is None else image.flip(0) for image in decoded]
