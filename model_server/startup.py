"""The server's own start-up phases: pull, process start, load, first ready answer.

`StartupClock` is made by the app (model_server.app) before anything loads. It knows when the
process started (``/proc/self/stat`` on Linux, else when this module was imported), reads what
the pull took from the marker the init container left in the model directory
(model_server.pull: ``.model-pull.json``), and is told when the load starts and ends and when
``/v2/health/ready`` first answers 200 (routers/v2.py). At that answer the phases are final:
they go to ``model_server_startup_phase_seconds{phase=...}`` (msv_contract.metrics), to one
log line ("Started in ...") and to the model metadata (``parameters.startup``).

Phases (msv_contract.metrics.STARTUP_PHASES): ``fetch`` (the pull, before this process),
``start`` (process start -> load begins: interpreter, imports, settings), ``load`` (the
backend's load), ``ready`` (load done -> the first ready answer: how long until a probe
asked) and ``total`` (process start -> that answer).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_server.pull import read_marker
from msv_contract import env as contract

log = logging.getLogger(__name__)

_IMPORTED_AT = time.time()


def process_started_at(proc: Path = Path("/proc")) -> float | None:
    """When this process started (seconds since the epoch), from ``/proc``; None elsewhere."""
    try:
        stat = (proc / "self" / "stat").read_text()
        # the command name (field 2) may hold spaces: fields after its closing parenthesis
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        btime = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                     if line.startswith("btime "))
        hertz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / hertz


def pull_report(model_dir: str | Path) -> dict[str, Any] | None:
    """What the pull into ``model_dir`` took (msv_contract.env.PULL_* keys), from its
    marker; None when the directory was not pulled (a PVC, a host path) or says nothing."""
    marker = read_marker(model_dir)
    if marker is None or not isinstance(marker.get(contract.PULL_SECONDS), int | float):
        return None
    return {key: marker[key] for key in (contract.PULL_BYTES, contract.PULL_SECONDS,
                                         contract.PULL_CACHE_HIT) if key in marker}


class StartupClock:
    """The times of one server's start; phases once the first ready answer was given."""

    def __init__(self, model_dir: str | Path, *, on_ready: Callable[[dict[str, float]], None]
                 | None = None, clock: Callable[[], float] = time.time,
                 process_start: float | None = None) -> None:
        self._clock = clock
        self.process_start = (process_start if process_start is not None
                              else process_started_at() or _IMPORTED_AT)
        self.pull = pull_report(model_dir)
        self.load_start: float | None = None
        self.load_end: float | None = None
        self.ready_at: float | None = None
        self._on_ready = on_ready

    def loading(self) -> None:
        self.load_start = self._clock()

    def loaded(self) -> None:
        self.load_end = self._clock()

    def ready_seen(self) -> None:
        """A ready answer was given: the first one after the load ends the start."""
        if self.ready_at is not None or self.load_end is None:
            return
        self.ready_at = self._clock()
        phases = self.phases()
        log.info("Started in %.2f s: %s", phases["total"],
                 ", ".join(f"{k} {v:.2f} s" for k, v in phases.items() if k != "total"),
                 extra={"startup": self.to_json()})
        if self._on_ready is not None:
            self._on_ready(phases)

    def phases(self) -> dict[str, float]:
        """Seconds per phase known so far (all of them once ready was seen)."""
        out: dict[str, float] = {}
        if self.pull is not None:
            out["fetch"] = round(float(self.pull[contract.PULL_SECONDS]), 3)
        if self.load_start is not None:
            out["start"] = _span(self.process_start, self.load_start)
        if self.load_start is not None and self.load_end is not None:
            out["load"] = _span(self.load_start, self.load_end)
        if self.load_end is not None and self.ready_at is not None:
            out["ready"] = _span(self.load_end, self.ready_at)
            out["total"] = _span(self.process_start, self.ready_at)
        return out

    def to_json(self) -> dict[str, Any]:
        """``{"seconds": {phase: s}, "pull": {bytes, seconds, cacheHit}}`` (what is known)."""
        out: dict[str, Any] = {"seconds": self.phases()}
        if self.pull is not None:
            out["pull"] = dict(self.pull)
        return out


def _span(start: float, end: float) -> float:
    return round(max(end - start, 0.0), 3)
