"""glibc malloc tuning for a long-running process with many threads."""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (0: glibc's default, 8 per core). True if set.

    glibc gives each allocating thread its own arena, up to 8 per core, and an arena keeps
    what was freed in it: the decode, inference and log threads each held on to frames'
    worth of memory. Two arenas: peak RSS under load 204 against 234 MiB on 2 vCPUs, same
    throughput. Call it before the worker threads start. Elsewhere (musl, macOS) it does nothing.
    """
    if arenas <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Give the heap's free memory back to the system (glibc ``malloc_trim``); True if any was.

    Freed memory below the top of glibc's heap stays in the process: after a thread-layout
    switch the replaced session's arena (tens of MiB) stayed in RSS for good without this.
    Elsewhere (musl, macOS) it does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
