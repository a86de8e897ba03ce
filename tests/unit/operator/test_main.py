"""msv_operator.__main__, the log setup: kopf's retry lines during an API-server outage are
thinned out."""

from __future__ import annotations

import logging

from msv_operator.__main__ import RetryLinesFilter


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_one_retry_line_per_window_as_a_warning_counting_the_rest() -> None:
    now = [0.0]
    f = RetryLinesFilter(window=60, clock=lambda: now[0])
    first = record("kopf._cogs.clients.watching", "Request attempt #1/9 failed; will retry")
    assert f.filter(first) and first.levelname == "WARNING"
    for i in range(2, 10):
        now[0] += 5
        assert not f.filter(record("kopf.objects", f"Request attempt #{i}/9 failed"))
    now[0] = 61
    later = record("kopf._cogs.clients.watching", "Request attempt #1/9 failed; escalating")
    assert f.filter(later)
    assert later.getMessage().endswith("(8 similar lines left out)")


def test_other_lines_pass_untouched() -> None:
    f = RetryLinesFilter(window=60, clock=lambda: 0.0)
    assert f.filter(record("kopf._cogs.clients.watching", "Request attempt #1/9 failed"))
    other = record("kopf.objects", "Handler failed")
    ours = record("msv_operator.handlers", "Request attempt is our word too")
    assert f.filter(other) and other.levelname == "ERROR"
    assert f.filter(ours) and ours.levelname == "ERROR"
