"""Exclusive file locks across processes: what several processes (two test workers, the
command line) do to one state directory or one shared object, they do one at a time.

``held(lock_file)`` is an ``flock`` on ``lock_file`` (created if missing): it waits for the
holder, is released when the block ends, and by the kernel when the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block (waits while another holds it)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
