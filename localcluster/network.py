"""The local cluster's addresses, and the host network of its real node (bridge, routes, rules).

Everything stays on this machine. The real node's pods live on one Linux bridge (``msv0``,
``NODE_SUBNET``) that the project creates; its gateway address ``NODE_IP`` is the node's
address, where kube-apiserver and the kubelet listen so that pods can reach them. The whole
pod range and the Service range are routed to that bridge or marked unreachable, and a
forwarding rule drops anything a pod sends that would leave through another interface, so no
pod or Service address ever leads off the machine.

``setup`` and ``teardown`` are idempotent; ``teardown`` removes exactly what ``setup`` added.
They need root (CAP_NET_ADMIN); ``missing_prerequisites`` says what is missing in one line each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SERVICE_CIDR = "10.96.0.0/16"
MODEL_CACHE_IP = "10.96.0.85"
"""The chart's model cache Service as ``make demo`` installs it (``modelCache.clusterIP``):
with no cluster DNS, the pulls reach the agents by this address (the static band, like the
stores' and Prometheus's)."""
CLUSTER_DOMAIN = "cluster.local"  # the kubelet's; no DNS server answers for it
POD_CIDR = "10.244.0.0/16"  # the cluster's pod range: kwok's pools and the real node
KWOK_POD_CIDR = "10.244.0.0/17"  # simulated pods (their IPs lead nowhere: unreachable)
NODE_SUBNET = "10.244.200.0/24"  # the real node's pods, on the bridge
NODE_IP = "10.244.200.1"  # the bridge's address: the real node, kube-apiserver, kubelet
BRIDGE = "msv0"
LOOPBACK = "127.0.0.1"

_FORWARD_RULE = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP",
                 "-m", "comment", "--comment", "msv: pods never leave the machine"]
_ROUTES = (
    ["unreachable", POD_CIDR],  # the /24 on the bridge is more specific and wins
    [SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP],  # kube-proxy DNATs these; never routed out
)


class NetworkError(RuntimeError):
    """The host network for the real node could not be set up; the message says why."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def missing_prerequisites() -> list[str]:
    """What the real node needs and this machine lacks, one line each (empty: all there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("the real node needs root (network setup, containerd, kubelet): "
                       "run as root, or start a simulated-only cluster with --no-real-node")
    tools = {"ip": "iproute2", "iptables": "iptables", "containerd": "containerd",
             "runc": "runc", "ctr": "containerd", "conntrack": "conntrack"}
    absent = sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})
    if not Path("/usr/lib/cni/bridge").exists():
        absent.append("containernetworking-plugins")
    if absent:
        missing.append("missing Debian packages for the real node: apt-get install "
                       + " ".join(absent))
    return missing


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def setup() -> None:
    """Create the bridge with ``NODE_IP``, the routes and the forwarding rule (idempotent)."""
    if not bridge_exists():
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    prefix = NODE_SUBNET.split("/")[1]
    addrs = _run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f" {NODE_IP}/" not in addrs:
        _run("ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    for route in _ROUTES:
        _run("ip", "route", "replace", *route)
    if _run("iptables", "-C", *_FORWARD_RULE, check=False).returncode != 0:
        _run("iptables", "-I", *_FORWARD_RULE)
    # Pod -> Service -> pod on the same bridge needs bridged packets to pass iptables (DNAT).
    _write_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")


def _write_sysctl(path: str, value: str) -> None:
    try:
        Path(path).write_text(value)
    except OSError as e:
        raise NetworkError(f"cannot set {path} = {value}: {e}") from e


def teardown() -> None:
    """Remove the routes, the rule and the bridge (whatever of them exists)."""
    for route in _ROUTES:
        dest = [route[0], route[1]] if route[0] == "unreachable" else [route[0]]
        _run("ip", "route", "del", *dest, check=False)
    while _run("iptables", "-C", *_FORWARD_RULE, check=False).returncode == 0:
        _run("iptables", "-D", *_FORWARD_RULE, check=False)
    if bridge_exists():
        _run("ip", "link", "del", BRIDGE, check=False)


def leftovers() -> list[str]:
    """What of ours is still on the host network (empty after a clean ``teardown``)."""
    found = []
    if bridge_exists():
        found.append(f"bridge {BRIDGE}")
    routes = _run("ip", "route", "show", "table", "all", check=False).stdout
    for route in (POD_CIDR, SERVICE_CIDR, NODE_SUBNET):
        if any(line.split()[:2] in ([route], ["unreachable", route]) or
               line.startswith(route + " ") for line in routes.splitlines()):
            found.append(f"route {route}")
    if _run("iptables", "-C", *_FORWARD_RULE, check=False).returncode == 0:
        found.append("iptables FORWARD rule for " + BRIDGE)
    return found
