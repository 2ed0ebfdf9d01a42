"""The server process's memory under a stream of varied pictures: large blocks and free heap
memory go back to the system (glibc only; elsewhere these do nothing)."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

MMAP_THRESHOLD = 1024 * 1024
"""Allocations from this size on get their own memory map, given back to the system when freed."""
TRIM_EVERY_S = 1.0
"""After a worker's job, free heap memory is given back to the system at most this often."""


_libc: Any = None
_trimmed = 0.0
_trimming = threading.Lock()


def give_back_memory() -> None:
    """`malloc_trim`: free memory in the heaps of glibc goes back to the system (at most every
    TRIM_EVERY_S seconds: it takes a few milliseconds)."""
    global _trimmed
    if _libc is None or not _trimming.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _trimmed >= TRIM_EVERY_S:
            _libc.malloc_trim(0)
            _trimmed = time.monotonic()
    finally:
        _trimming.release()


def keep_memory_flat() -> None:
    """Make glibc give large freed blocks back to the system at once. By default it raises its
    memory-map threshold after the first large block is freed (up to 32 MB), so decoded pictures
    then come from the heaps of the worker threads, which seldom shrink: under a stream of
    varied pictures the server grew to over 1 GB. A no-op where the C library is not glibc."""
    global _libc
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc, not another C library)
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    _libc = libc
