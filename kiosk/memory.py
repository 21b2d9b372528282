"""Keeping a small device's memory small: asking glibc to give freed memory back (ctypes; no-ops elsewhere).

A line's large temporary buffers (the local voice's tensors, the loudness limiter's arrays) are freed when the line
is done, but glibc keeps freed heap memory for reuse: without a trim it stays resident for good.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

_M_ARENA_MAX = -8  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
#: Allocations at least this large get pages of their own, given back the moment they are freed (16 MB: the
#: local voice's largest tensors; at 1 MB its first clause came 100 ms later, from the page faults).
_MMAP_THRESHOLD = 16 << 20
_LIBC: list = []


def release_freed_memory() -> None:
    """Return freed heap memory to the system; a no-op where the C library has no malloc_trim."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def limit_malloc_arenas() -> None:
    """At most two malloc arenas from now on: threads then share memory they free instead of each keeping its own
    (glibc's default allows 8 per core). And a fixed threshold of 16 MB for allocations that get pages of their own:
    glibc otherwise raises it after each large free, up to 32 MB, and a model's tensors then land in the heap,
    where freed ones fragment it instead of going back. A no-op where the C library has no mallopt."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, 2)
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def _libc():
    if not _LIBC:
        library = None
        with contextlib.suppress(OSError):
            library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.append(library)
    return _LIBC[0]
