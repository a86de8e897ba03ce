"""localcluster.cluster's process bookkeeping: whether a recorded pid still runs the expected
binary; which test sessions use a cluster (several pytest-xdist workers at once), so that only
the last one stops it; the lock that makes one process at a time change a state directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import cluster as lc
from localcluster import locks
from localcluster.cluster import _proc_alive


def test_a_child_is_alive_from_the_moment_popen_returns() -> None:
    # Right after exec, /proc/<pid>/cmdline reads empty for a moment; a component must not be
    # reported dead in that window (it once failed `up` with "etcd exited" and an empty log).
    sleep = shutil.which("sleep")
    assert sleep
    misses = 0
    for _ in range(200):
        p = subprocess.Popen([sleep, "5"], stdout=subprocess.DEVNULL)
        try:
            if not _proc_alive(p.pid, sleep):
                misses += 1
        finally:
            p.kill()
            p.wait()
    assert misses == 0


def test_a_pid_running_another_binary_or_gone_is_not_alive() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert _proc_alive(p.pid, sys.executable)
        assert not _proc_alive(p.pid, "/usr/bin/definitely-not-this")
    finally:
        p.kill()
        p.wait()
    assert not _proc_alive(p.pid, sys.executable)
    assert not _proc_alive(None)


@pytest.fixture
def two_workers() -> Iterator[tuple[int, int]]:
    """The pids of two live processes, standing for two test workers."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    try:
        yield procs[0].pid, procs[1].pid
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _started_by(owner: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A recorded cluster started by ``owner``; the list fills with each stop of it."""
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({"owner": owner, "ports": {}, "pids": {}}))
    stops: list[Path] = []
    monkeypatch.setattr(lc, "_stop", lambda sd: stops.append(sd) or [])
    return stops


def test_of_two_test_sessions_only_the_last_to_release_stops_the_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_workers: tuple[int, int]) -> None:
    sd = tmp_path / "state"
    stops = _started_by("pytest", sd, monkeypatch)
    first, second = two_workers
    lc.acquire(sd, first)
    lc.acquire(sd, second)
    assert lc.release(sd, first) is False  # the other worker still runs tests on it
    assert stops == []
    assert lc.release(sd, second) is True
    assert stops == [sd]
    assert list((sd / "users").iterdir()) == []


def test_a_session_that_died_without_releasing_does_not_keep_the_cluster_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_workers: tuple[int, int]) -> None:
    sd = tmp_path / "state"
    stops = _started_by("pytest", sd, monkeypatch)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lc.acquire(sd, gone.pid)
    lc.acquire(sd, two_workers[0])
    assert lc.release(sd, two_workers[0]) is True
    assert stops == [sd]
    assert not (sd / "users" / str(gone.pid)).exists()


def test_a_cluster_started_by_hand_is_never_stopped_by_a_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_workers: tuple[int, int]) -> None:
    sd = tmp_path / "state"
    stops = _started_by("cli", sd, monkeypatch)
    lc.acquire(sd, two_workers[0])
    assert lc.release(sd, two_workers[0]) is False
    assert stops == []


def _try_lock(lock_file: Path) -> int:
    """Exit code of another process trying to take ``lock_file`` without waiting (0: took it)."""
    code = ("import fcntl, sys\n"
            "f = open(sys.argv[1], 'a')\n"
            "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code, str(lock_file)], check=False,
                          timeout=60).returncode


def test_a_held_lock_keeps_other_processes_out_until_the_block_ends(tmp_path: Path) -> None:
    lock_file = tmp_path / "state" / ".model-stores.lock"
    with locks.held(lock_file):
        assert lock_file.exists()  # created, with its directory
        assert _try_lock(lock_file) == 3
    assert _try_lock(lock_file) == 0
