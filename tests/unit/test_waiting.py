"""tests/waiting.py: the one ``wait_for`` of the cluster and process tests."""

from __future__ import annotations

import re

import pytest
from waiting import wait_for


def test_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, [], {"ready": True}])
    assert wait_for("a value", lambda: next(values), timeout=5, interval=0) == {"ready": True}


def test_until_decides_and_the_value_is_returned() -> None:
    values = iter([{"phase": "Pending"}, {"phase": "Running"}])
    got = wait_for("Running", lambda: next(values), timeout=5, interval=0,
                   until=lambda v: v["phase"] == "Running")
    assert got == {"phase": "Running"}


def test_a_timeout_names_what_was_awaited_and_the_last_value_observed() -> None:
    values = iter(range(1_000_000))
    with pytest.raises(AssertionError) as failed:
        wait_for("the count to be negative", lambda: {"count": next(values)}, timeout=0.05,
                 interval=0.01, until=lambda v: v["count"] < 0)
    message = str(failed.value)
    assert message.startswith("timed out after 0.05s waiting for the count to be negative; ")
    count = int(re.fullmatch(r".*last: \{'count': (\d+)\}", message).group(1))  # type: ignore[union-attr]
    assert count >= 1  # polled more than once: the last value, not the first


def test_an_assertion_means_not_yet_and_is_reported_on_timeout() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        assert len(calls) >= 3, f"only {len(calls)} calls"
        return True

    assert wait_for("three calls", check, timeout=5, interval=0) is True
    assert len(calls) == 3

    def never() -> None:
        raise AssertionError("0 of 2 pods ready")

    with pytest.raises(AssertionError, match=re.escape(
            "waiting for two pods; last: AssertionError('0 of 2 pods ready')")):
        wait_for("two pods", never, timeout=0, interval=0)


def test_any_other_error_ends_the_wait_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="the process exited"):
        wait_for("a process", broken, timeout=60, interval=0)
    assert calls == [1]
