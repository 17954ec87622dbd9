"""glibc arena limit: set through mallopt on glibc (the CI image, Debian/Ubuntu, Jetson)."""

from __future__ import annotations

import platform

import pytest

from agent.malloc import limit_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_glibc_accepts_the_arena_limit():
    assert limit_arenas(2) is True


def test_zero_leaves_glibc_default():
    assert limit_arenas(0) is False
