"""Polling until something holds: the one ``wait_for`` of the tests that wait on a cluster or
a process (tests/integration, tests/e2e, tests/conftest.py, and the bench scripts that
run real pods)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 60.0, interval: float = 0.25,
             *, until: Callable[[T], object] | None = None) -> T:
    """Call ``fn`` every ``interval`` seconds until its value is truthy, or with ``until``
    until ``until(value)`` is, and return that value.

    ``fn`` (or ``until``) raising ``AssertionError`` means "not yet": the error is the value
    observed. Any other exception ends the wait at once. After ``timeout`` seconds, fail with
    an ``AssertionError`` naming ``what`` (what is awaited, e.g. "the Deployment") and the
    last value observed.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            done = until(last) if until is not None else last
        except AssertionError as e:
            last = e
        else:
            if done:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
