"""The run-side records of the local cluster: complete, ordered, and wired to real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster import cluster, components, network, nodes, realnode
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


def test_kubelet_config_has_what_this_machine_needs(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, real_node=True)
    cfg = realnode._kubelet_config(ctx)
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["address"] == network.NODE_IP and cfg["readOnlyPort"] == 0
    assert cfg["authentication"]["anonymous"] == {"enabled": False}  # type: ignore[index]
    assert str(realnode.socket(ctx)) in str(cfg["containerRuntimeEndpoint"])


def test_containerd_and_cni_configs(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, real_node=True)
    toml = realnode._containerd_config(ctx)
    assert "restrict_oom_score_adj = true" in toml
    assert f'sandbox_image = "{realnode.PAUSE_IMAGE}"' in toml
    cni = json.loads(json.dumps(realnode._cni_config(ctx)))
    bridge = cni["plugins"][0]
    assert bridge["bridge"] == network.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"][0][0]["subnet"] == network.NODE_SUBNET


def test_with_a_real_node_simulated_cpu_nodes_are_tainted_gpu_nodes_unchanged() -> None:
    items = {n["metadata"]["name"]: n for n in nodes.pool_manifest(real_node=True)["items"]}
    plain = {n["metadata"]["name"]: n for n in nodes.pool_manifest()["items"]}
    assert items.keys() == plain.keys()
    for name, node in items.items():
        taints = node["spec"].get("taints", [])
        if node["metadata"]["labels"].get("nvidia.com/gpu.present"):
            assert taints == plain[name]["spec"]["taints"]
        else:
            assert taints == [nodes.SIMULATED_TAINT]
            assert not plain[name]["spec"].get("taints")
