"""localcluster.realnode: the real node's configuration files (kubelet, containerd, CNI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster import cluster, network, realnode
from localcluster.components import Ctx


def _ctx(tmp_path: Path, real_node: bool) -> Ctx:
    names = [port for p in cluster.processes(real_node) for port in p.ports]
    return Ctx(tmp_path, {n: 20000 + i for i, n in enumerate(names)}, real_node)


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


def test_network_namespaces_from_before_the_start_are_not_the_nodes_leftovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier run's CNI namespace that cannot be removed (the kernel still holds it) is
    recorded when the node starts; ``down`` then reports it apart, not as this node's."""
    netns = tmp_path / "netns"
    netns.mkdir()
    monkeypatch.setattr(realnode, "NETNS_DIR", netns)
    monkeypatch.setattr(realnode, "_remove_netns", lambda: None)  # it cannot remove them
    monkeypatch.setattr(realnode, "mounts", lambda ctx: [])
    monkeypatch.setattr(realnode, "cgroups", lambda: [])
    monkeypatch.setattr(network, "leftovers", lambda: [])
    ctx = Ctx(tmp_path / "state", {}, True)
    ctx.state_dir.mkdir()
    (netns / "cni-old").touch()
    assert realnode.record_stale_netns(ctx) == ["cni-old"]
    (netns / "cni-mine").touch()  # a pod sandbox of this node, not removed by its down
    assert realnode.leftovers(ctx) == ["netns cni-mine"]
    assert realnode.stale_netns(ctx) == ["cni-old"]
    (netns / "cni-mine").unlink()
    (netns / "cni-old").unlink()  # gone at last (a reboot)
    assert realnode.leftovers(ctx) == [] and realnode.stale_netns(ctx) == []
