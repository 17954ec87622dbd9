from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from support import image_bytes

from inference.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageFormatError
from inference.image import decode_image, read_header, sniff_format


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _jpeg(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


def test_header_reads_jpeg_and_png_sizes():
    head = read_header(_jpeg(37, 21))
    assert (head.format, head.width, head.height) == ("jpeg", 37, 21)
    head = read_header(image_bytes("camera-gray.png"))
    assert (head.format, head.width, head.height) == ("png", 512, 512)
    head = read_header(image_bytes("astronaut-1080p.jpg"))
    assert (head.width, head.height) == (1920, 1080)


def test_bomb_is_refused_from_the_header_without_decoding():
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels declared, 33 bytes sent
    with pytest.raises(ImageTooLargeError) as err:
        decode_image(bomb, max_pixels=50_000_000)
    assert err.value.detail["width"] == 100_000


def test_jpeg_over_the_pixel_limit_is_refused():
    with pytest.raises(ImageTooLargeError):
        decode_image(_jpeg(200, 100), max_pixels=200 * 100 - 1)
    assert decode_image(_jpeg(200, 100), max_pixels=200 * 100).shape == (100, 200, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImageError),
        (b"hello world", InvalidImageError),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", InvalidImageError),  # JPEG cut before its frame header
        (b"\x89PNG\r\n\x1a\n\x00\x00", InvalidImageError),
        (b"GIF89a\x01\x00\x01\x00", UnsupportedImageFormatError),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", UnsupportedImageFormatError),
    ],
)
def test_bad_bytes_raise_clear_errors(data, error):
    with pytest.raises(error):
        decode_image(data)


def test_truncated_jpeg_body_is_an_invalid_image_or_decodes():
    data = image_bytes("coffee-600x400.jpg")
    # The header survives, the entropy-coded data is cut: libjpeg may pad it, never crash.
    try:
        img = decode_image(data[: len(data) // 3])
    except InvalidImageError:
        return
    assert img.shape == (400, 600, 3)


def test_sniff_names_formats():
    assert sniff_format(image_bytes("coffee-600x400.jpg")) == "jpeg"
    assert sniff_format(image_bytes("camera-gray.png")) == "png"
    assert sniff_format(b"BM....") == "bmp"
    assert sniff_format(b"???") is None


@pytest.mark.parametrize(
    "name", ["camera-gray.png", "chelsea-rgba.png", "rocket-16bit.png", "astronaut-exif6.jpg"]
)
def test_decode_matches_ultralytics_reader(name):
    """Ultralytics reads with cv2.imdecode(IMREAD_COLOR): 3-channel 8-bit BGR, EXIF applied."""
    data = image_bytes(name)
    ours = decode_image(data)
    theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert ours.dtype == np.uint8
    assert ours.ndim == 3
    assert ours.shape[2] == 3
    np.testing.assert_array_equal(ours, theirs)


def test_grayscale_becomes_three_equal_channels():
    img = decode_image(image_bytes("camera-gray.png"))
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 1], img[..., 2])


def test_sixteen_bit_keeps_the_high_byte():
    data = image_bytes("rocket-16bit.png")
    raw16 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16
    np.testing.assert_array_equal(decode_image(data), (raw16 >> 8).astype(np.uint8))


def test_exif_orientation_is_applied():
    data = image_bytes("astronaut-exif6.jpg")
    stored = cv2.imdecode(
        np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    upright = decode_image(data)
    # Orientation 6: the stored pixels are rotated 90 degrees counter-clockwise.
    np.testing.assert_array_equal(upright, cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE))
    assert not np.array_equal(upright, stored)
