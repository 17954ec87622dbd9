"""Hostile bytes never escape as anything but the project's own image errors."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import image_bytes

from inference.errors import EdgeError
from inference.image import decode_image

SEEDS = [image_bytes("coffee-600x400.jpg")[:4000], image_bytes("camera-gray.png")[:4000]]


def _decode_or_edge_error(data: bytes) -> None:
    try:
        img = decode_image(data, max_pixels=4_000_000)
    except EdgeError:
        return
    assert img.dtype == np.uint8
    assert img.ndim == 3
    assert img.shape[2] == 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _decode_or_edge_error(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 3999), st.integers(0, 255)), max_size=12),
    st.integers(2, 4000),
)
def test_mutated_real_images(seed, flips, cut):
    data = bytearray(seed[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _decode_or_edge_error(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_png_header_sizes(width, height):
    head = bytearray(image_bytes("camera-gray.png")[:4000])
    head[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    _decode_or_edge_error(bytes(head))
