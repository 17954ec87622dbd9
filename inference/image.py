"""Image decoding as Ultralytics' reader does it, behind a header check against bombs.

Ultralytics reads files with ``cv2.imdecode(buf, cv2.IMREAD_COLOR)``: grayscale becomes three
equal channels, alpha is dropped, 16-bit samples are scaled to 8 bits and the EXIF orientation
is applied. Decoding the same way is what makes our boxes match theirs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from inference.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageFormatError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Other formats a camera or a confused client might send: named so the error can say what it got.
_OTHER_MAGIC = {
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}

DEFAULT_MAX_PIXELS = 50_000_000  # 8K UHD is 33 MP; a bomb declares gigapixels


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "jpeg" | "png"
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, another format's name, or None for unrecognised bytes."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _OTHER_MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def read_header(data: bytes) -> ImageHeader:
    """Format and declared size, read from the header alone (no pixel is decoded)."""
    fmt = sniff_format(data)
    if fmt == "jpeg":
        width, height = _jpeg_size(data)
    elif fmt == "png":
        width, height = _png_size(data)
    elif fmt is None:
        raise InvalidImageError("body is not a JPEG or PNG image")
    else:
        raise UnsupportedImageFormatError(
            f"{fmt} images are not supported; send JPEG or PNG", {"format": fmt}
        )
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{fmt} header declares an empty image ({width}x{height})")
    return ImageHeader(fmt, width, height)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG bytes to an HxWx3 uint8 BGR array, refusing oversized images first."""
    header = read_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image declares {header.width}x{header.height} = {pixels} pixels,"
            f" more than the limit of {max_pixels}",
            {"width": header.width, "height": header.height, "max_pixels": max_pixels},
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InvalidImageError(f"cannot decode {header.format} image (corrupt or truncated)")
    return image


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature (8) + IHDR chunk length (4) + b"IHDR" (4) + width (4) + height (4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImageError("PNG has no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise InvalidImageError("JPEG marker structure is corrupt")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise InvalidImageError("JPEG segment length is corrupt")
        if marker in _SOF_MARKERS:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            return width, height
        i += length
    raise InvalidImageError("JPEG has no frame header (truncated or corrupt)")
