"""The server's start-up phases: process start, the pull's marker, load, first ready answer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from model_server.pull import MARKER
from model_server.startup import StartupClock, process_started_at, pull_report
from msv_contract import env as contract
from msv_contract import metrics as m

from .conftest import serve_app, wait_ready
from .doubles import EchoBackend


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_marker(directory: Path, **report: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"uri": "https://h/m.tgz", "sha256": None,
                                                **report}))


def test_phases_from_process_start_to_the_first_ready_answer(tmp_path: Path) -> None:
    write_marker(tmp_path, bytes=2048, seconds=0.4567, cacheHit=False, finishedAt=99.0)
    ticks = Ticks(100.0)
    seen: list[dict[str, float]] = []
    clock = StartupClock(tmp_path, on_ready=seen.append, clock=ticks, process_start=98.5)
    assert clock.phases() == {"fetch": 0.457}
    clock.ready_seen()  # before the load ended: not the start's end
    assert clock.ready_at is None and seen == []
    clock.loading()
    ticks.now = 103.25
    clock.loaded()
    ticks.now = 103.75
    clock.ready_seen()
    ticks.now = 110.0
    clock.ready_seen()  # only the first answer counts
    phases = {"fetch": 0.457, "start": 1.5, "load": 3.25, "ready": 0.5, "total": 5.25}
    assert seen == [phases]
    assert set(phases) == set(m.STARTUP_PHASES)
    assert clock.to_json() == {"seconds": phases, "pull": {
        contract.PULL_BYTES: 2048, contract.PULL_SECONDS: 0.4567, contract.PULL_CACHE_HIT: False}}


def test_no_fetch_phase_without_a_pull_marker(tmp_path: Path) -> None:
    assert pull_report(tmp_path) is None  # a PVC or host path: nothing pulled
    write_marker(tmp_path)  # a marker of an older pull, without timings
    assert pull_report(tmp_path) is None
    clock = StartupClock(tmp_path, clock=Ticks(5.0), process_start=4.0)
    clock.loading()
    clock.loaded()
    clock.ready_seen()
    assert set(clock.phases()) == {"start", "load", "ready", "total"}
    assert "pull" not in clock.to_json()


def test_process_start_from_proc(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    fields = ["S"] + ["0"] * 18 + ["250"] + ["0"] * 10  # field 22 (starttime) = 250 ticks
    (tmp_path / "self" / "stat").write_text(f"42 (model server) {' '.join(fields)}\n")
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n")
    assert process_started_at(tmp_path) == 1700000000 + 250 / os.sysconf("SC_CLK_TCK")
    assert process_started_at(tmp_path / "absent") is None


def test_process_start_of_this_process_is_in_the_past() -> None:
    started = process_started_at()
    if started is not None:  # Linux
        assert started <= time.time()


def test_the_served_app_exports_its_phases(tmp_path: Path) -> None:
    write_marker(tmp_path, bytes=10, seconds=0.25, cacheHit=True)
    with serve_app(EchoBackend(), model_dir=tmp_path) as (client, _, registry):
        labels = {"model": "echo", "variant": "int8"}
        for phase in m.STARTUP_PHASES:
            value = registry.get_sample_value(m.STARTUP_PHASE_SECONDS,
                                              {**labels, m.LABEL_PHASE: phase})
            assert value is not None and value >= 0, phase
        assert registry.get_sample_value(
            m.STARTUP_PHASE_SECONDS, {**labels, m.LABEL_PHASE: "fetch"}) == 0.25
        startup = client.get("/v2/models/echo").json()["parameters"]["startup"]
        assert set(startup["seconds"]) == set(m.STARTUP_PHASES)
        assert startup["pull"] == {"bytes": 10, "seconds": 0.25, "cacheHit": True}


def test_live_answers_while_ready_does_not_during_the_load() -> None:
    backend = EchoBackend()
    backend.release_load.clear()  # the load holds until the test lets it go
    with serve_app(backend, ready=False) as (client, _, registry):
        assert client.get("/v2/health/live").status_code == 200
        r = client.get("/v2/health/ready")
        assert r.status_code == 503 and "loading" in r.text
        total = {"model": "echo", "variant": "int8", m.LABEL_PHASE: "total"}
        assert registry.get_sample_value(m.STARTUP_PHASE_SECONDS, total) is None
        backend.release_load.set()
        wait_ready(client)
        assert registry.get_sample_value(m.STARTUP_PHASE_SECONDS, total) is not None
