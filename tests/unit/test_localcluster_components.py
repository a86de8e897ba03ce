"""localcluster.components: the run-side records of the control plane, complete, ordered,
listening where they should (the real node's records: test_localcluster_realnode.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import cluster, components, network
from localcluster.components import Ctx


def _ctx(tmp_path: Path, real_node: bool) -> Ctx:
    names = [port for p in cluster.processes(real_node) for port in p.ports]
    return Ctx(tmp_path, {n: 20000 + i for i, n in enumerate(names)}, real_node)


@pytest.mark.parametrize("real_node", [False, True])
def test_each_process_starts_after_what_it_needs_and_ports_are_distinct(
        real_node: bool) -> None:
    procs = cluster.processes(real_node)
    seen: set[str] = set()
    for p in procs:
        assert set(p.after) <= seen, f"{p.name} needs {p.after} but starts before them"
        seen.add(p.name)
    ports = [port for p in procs for port in p.ports]
    assert len(ports) == len(set(ports))
    assert any(p.real_node for p in procs) == real_node


def test_without_a_real_node_everything_listens_on_loopback(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, real_node=False)
    api = components.CONTROL_PLANE[1].command(ctx)
    assert "--bind-address=127.0.0.1" in api
    assert "--endpoint-reconciler-type=none" in api
    assert ctx.server.startswith("https://127.0.0.1:")


def test_with_a_real_node_the_api_server_listens_on_the_nodes_bridge(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, real_node=True)
    api = components.CONTROL_PLANE[1].command(ctx)
    assert f"--bind-address={network.NODE_IP}" in api
    assert f"--advertise-address={network.NODE_IP}" in api
    assert not any(a.startswith("--endpoint-reconciler-type") for a in api)
    # Nothing binds to every address.
    for p in cluster.processes(True):
        assert not any("0.0.0.0" in a for a in p.command(ctx)), p.name
