"""Free loopback ports below the ephemeral and NodePort ranges (localcluster.ports)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from localcluster import ports


def test_ports_are_distinct_bindable_and_below_both_ranges() -> None:
    low, high = ports.listen_range()
    assert high <= min(ports.NODE_PORTS, ports.ephemeral_range()[0])
    picked = ports.free_ports(20)
    assert len(set(picked)) == 20
    assert all(low <= p < high for p in picked)
    for p in picked:  # free after the call: the caller's listener can bind each
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_bound_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        # a range of that one port: nothing free in it
        monkeypatch.setattr(ports, "listen_range", lambda: (port, port + 1))
        with pytest.raises(OSError, match=f"no 1 free ports found on 127.0.0.1 in {port}-{port}"):
            ports.free_port()


def test_a_low_ephemeral_range_moves_the_lower_bound(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("10000\t65000\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", range_file)
    assert ports.ephemeral_range() == (10000, 65000)
    assert ports.listen_range() == (1024, 10000)
    monkeypatch.setattr(ports, "_RANGE_FILE", tmp_path / "missing")
    assert ports.ephemeral_range() == (32768, 60999)
