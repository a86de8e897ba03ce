"""localcluster.cluster's process bookkeeping: whether a recorded pid still runs the expected
binary."""

from __future__ import annotations

import shutil
import subprocess
import sys

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
