"""glibc allocator knobs of the operator process: fewer malloc arenas, and memory handed back
to the system once the start-up burst is over (no-ops where the C library is not glibc)."""

from __future__ import annotations

import ctypes
import gc


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (like ``MALLOC_ARENA_MAX``): the reconcile
    threads otherwise each grow an arena and keep the RSS up long after a burst."""
    libc = _libc()
    try:
        if libc is not None:
            libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except AttributeError:
        pass  # not glibc: nothing to do


def release() -> None:
    """Collect garbage and return free heap pages to the system (``malloc_trim``): the
    start-up listing of thousands of objects leaves most of its peak behind as free but
    still resident memory."""
    gc.collect()
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
