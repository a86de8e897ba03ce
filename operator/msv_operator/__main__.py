"""CLI entry point ``msv-operator run`` (== ``python -m msv_operator run``).

Flags and ``MSV_*`` environment variables -> ``OperatorConfig`` (see ``config`` and
docs/operator-config.md) -> logging, the ``/metrics`` endpoint, the ``/healthz`` liveness
endpoint (kopf's) -> ``handlers.operate``. kopf's per-attempt retry lines during an
API-server outage are thinned out (``RetryLinesFilter``). SIGTERM/SIGINT stop the watches,
let running passes finish and close the client (kopf's graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import start_http_server

from msv_operator import handlers, leader, memory
from msv_operator.config import ConfigError, OperatorConfig, load
from msv_operator.metrics import OperatorMetrics

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class RetryLinesFilter(logging.Filter):
    """At most one of kopf's per-attempt retry lines ("Request attempt #3/9 failed; will
    retry", "...; escalating") per ``window`` seconds, as a WARNING that counts the ones left
    out. While the API server is away kopf writes one ERROR line per watch stream and attempt
    (about 180 in a 60 s outage), and every one of them is retried and then recovered from.
    """

    def __init__(self, window: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.last: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kopf") or not str(record.msg).startswith(
                "Request attempt"):
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.window:
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar lines left out)"
        self.last, self.suppressed = now, 0
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(cfg: OperatorConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RetryLinesFilter())
    if cfg.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level)
    # kopf logs every handler success at INFO; keep its noise at WARNING unless debugging.
    if cfg.log_level != "DEBUG":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        # The API client's connection retries: the operator logs the request's final failure.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command, cfg = load(argv)
    except ConfigError as e:
        print(f"msv-operator: {e}", file=sys.stderr)
        return 2
    if command != "run":  # pragma: no cover - argparse restricts the choices
        return 2
    setup_logging(cfg)
    memory.limit_malloc_arenas()
    metrics = OperatorMetrics()
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=cfg.bind_address, registry=metrics.registry)
    liveness = (f"http://{cfg.bind_address}:{cfg.health_port}/healthz"
                if cfg.health_port else None)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(handlers.operate(cfg, metrics, liveness_endpoint=liveness))
        except leader.LeadershipLost as e:
            # As client-go's controllers do: exit, and come back (restarted) as a standby.
            print(f"msv-operator: {e}; exiting so the replica restarts as a standby",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
