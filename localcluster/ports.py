"""Free loopback TCP ports for the listeners the project starts: the local cluster's
components, and the tests' and benchmarks' servers (one helper for all of them).

Ports come from below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``,
32768-60999 by default) and below Kubernetes' NodePort range (30000-32767), never from
``bind(0)``. A port ``bind(0)`` hands out lies in the ephemeral range, so between the check
and the listener's own bind any outgoing connection on the machine may take it as its local
port: nginx then fails with "bind() ... (98: Address already in use)", as a CI run saw. Below
both ranges only another listener can take it, and each candidate is checked by binding it
(all of one call's ports are held until all are chosen, so they are distinct).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
"""The lowest port handed out."""
NODE_PORTS = 30000
"""The start of Kubernetes' default NodePort range: ports are handed out below it."""
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def listen_range() -> tuple[int, int]:
    """[low, high) of the ports handed out: from LOWEST to the first of the NodePort and
    ephemeral ranges (from 1024 if the ephemeral range starts lower than LOWEST + 1000)."""
    high = min(NODE_PORTS, ephemeral_range()[0])
    low = LOWEST if high - LOWEST >= 1000 else 1024
    return low, high


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing is bound to on ``host``, picked at random in
    ``listen_range()``."""
    low, high = listen_range()
    pick = random.SystemRandom()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        tries = 100 * count + 100
        while len(ports) < count and tries:
            tries -= 1
            port = pick.randrange(low, high)
            if port in ports:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < count:
        raise OSError(f"no {count} free ports found on {host} in {low}-{high - 1}")
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port nothing is bound to on ``host`` (free_ports)."""
    return free_ports(1, host)[0]
