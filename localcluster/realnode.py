"""The real node: containerd + runc, a kubelet and kube-proxy, so pods really run.

Beside kwok's simulated GPU pools the local cluster has one real CPU node (``node-1``): the
kubelet registers with kube-apiserver using a client certificate from the cluster CA, runs pods
through containerd (CRI) and runc, puts them on the project's bridge (``network``; CNI bridge +
host-local IPAM from Debian's containernetworking-plugins) and kube-proxy programs Services
with iptables. Images come from ``localcluster.images`` (imported into this containerd; no
registry). Settings this machine needs and why: docs/local-cluster.md ("The real node").

Every file of a running node lives in the cluster's state directory; containerd's content store
lives in ``paths.containerd_root()`` so imported images survive ``down``. ``drain`` and
``cleanup_*`` leave no process, mount, network namespace, cgroup or iptables rule behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localcluster import certs, images, network, paths
from localcluster.components import Ctx, Process, http_get, write_kubeconfig

NODE_NAME = certs.REAL_NODE_NAME
PAUSE_IMAGE = images.image_ref("pause")
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
NETNS_DIR = Path("/var/run/netns")
CRI_NAMESPACE = "k8s.io"
NODE_LABELS = {"type": "real", "node.kubernetes.io/instance-type": "local-cpu"}


def _dir(ctx: Ctx, *parts: str) -> Path:
    return ctx.state_dir.joinpath(*parts)


def socket(ctx: Ctx) -> Path:
    return paths.containerd_socket(ctx.state_dir)


def ctr(ctx: Ctx, *args: str, check: bool = False, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    """Run Debian's ``ctr`` against this node's containerd, in the CRI namespace."""
    return subprocess.run(["ctr", f"--address={socket(ctx)}", "-n", CRI_NAMESPACE, *args],
                          capture_output=True, text=True, check=check, timeout=timeout)


def container_pid(pod: Mapping[str, Any], state_dir: str | os.PathLike[str] | None = None
                  ) -> int:
    """The host PID of the first started container of ``pod`` (a Pod on the real node), from
    its containerd task: what a test or benchmark signals to crash a server (``kill -9``)."""
    cid = next(str(c["containerID"]) for c in (pod.get("status") or {}).get(
        "containerStatuses") or () if c.get("containerID")).split("://", 1)[1]
    out = subprocess.run(["ctr", f"--address={paths.containerd_socket(state_dir)}", "-n",
                          CRI_NAMESPACE, "tasks", "ls"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    for line in out.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            return int(pid)
    raise RuntimeError(f"no containerd task {cid} on the real node")


# ----------------------------------------------------------------------------- containerd


def _containerd_config(ctx: Ctx) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    state = _dir(ctx, "containerd", "state")
    return "\n".join([
        "version = 2",
        f'root = "{paths.containerd_root()}"',
        f'state = "{state}"',
        "[grpc]",
        f'  address = "{socket(ctx)}"',
        "[ttrpc]",
        f'  address = "{socket(ctx)}.ttrpc"',
        "[debug]",
        '  level = "warn"',
        f"[{cri}]",
        f'  sandbox_image = "{PAUSE_IMAGE}"',
        # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj makes every sandbox fail.
        "  restrict_oom_score_adj = true",
        "  enable_selinux = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        f'  bin_dir = "{CNI_BIN_DIR}"',
        f'  conf_dir = "{_dir(ctx, "cni", "net.d")}"',
        "",
    ])


def _cni_config(ctx: Ctx) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "msv",
        "plugins": [
            {
                "type": "bridge", "bridge": network.BRIDGE, "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,  # nothing leaves the machine, so nothing to masquerade
                "hairpinMode": True,  # a pod reaching itself through its Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.NODE_SUBNET, "gateway": network.NODE_IP}]],
                    # No default route: a pod reaches its bridge and the Service range, and
                    # nothing else exists for it (nothing it sends can leave the machine).
                    "routes": [{"dst": network.SERVICE_CIDR, "gw": network.NODE_IP}],
                    "dataDir": str(_dir(ctx, "cni", "ipam")),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


STALE_NETNS = "netns-before-start"
"""In the state directory: the CNI network namespaces found when the node started that could
not be removed (an earlier run's that the kernel still holds, e.g. after a crash or a full
disk): not this cluster's leftovers, reported apart by ``down`` (a reboot clears them)."""


def stale_netns(ctx: Ctx) -> list[str]:
    """The namespaces recorded in ``STALE_NETNS`` that are still there."""
    f = _dir(ctx, STALE_NETNS)
    recorded = set(f.read_text().split()) if f.is_file() else set()
    return [n for n in netns_left() if n in recorded]


def record_stale_netns(ctx: Ctx) -> list[str]:
    """Before the node starts: remove an earlier run's network namespaces; record (and
    return) those that cannot go."""
    _remove_netns()
    stale = netns_left()
    _dir(ctx, STALE_NETNS).write_text("".join(f"{n}\n" for n in stale))
    return stale


def _prepare_containerd(ctx: Ctx) -> None:
    record_stale_netns(ctx)
    for d in ("containerd/state", "cni/net.d", "cni/ipam"):
        _dir(ctx, *d.split("/")).mkdir(parents=True, exist_ok=True)
    paths.containerd_root().mkdir(parents=True, exist_ok=True)
    _dir(ctx, "containerd", "config.toml").write_text(_containerd_config(ctx))
    _dir(ctx, "cni", "net.d", "10-msv.conflist").write_text(
        json.dumps(_cni_config(ctx), indent=2))
    network.setup()


def _containerd(ctx: Ctx) -> list[str]:
    return [shutil.which("containerd") or "/usr/bin/containerd",
            f"--config={_dir(ctx, 'containerd', 'config.toml')}"]


def _containerd_health(ctx: Ctx) -> tuple[bool, str]:
    if not socket(ctx).exists():
        return False, "no socket yet"
    proc = ctr(ctx, "version", timeout=10)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-200:]


# ----------------------------------------------------------------------------- kubelet


def _kubelet_config(ctx: Ctx) -> dict[str, object]:
    pki = ctx.pki
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.NODE_IP,
        "port": ctx.ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ctx.ports["kubelet-healthz"],
        "tlsCertFile": str(pki.kubelet_serving_cert),
        "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{socket(ctx)}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # this machine mounts cgroup v1 controllers (hybrid)
        "failSwapOn": False,
        "resolvConf": "",  # no cluster DNS; pods get no resolver that could lead outside
        "clusterDomain": network.CLUSTER_DOMAIN,
        "podLogsDir": str(_dir(ctx, "pod-logs")),
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,  # model-server images are several GB
        "imageGCLowThresholdPercent": 99,
        # Absolute, small disk thresholds: the disk is shared with the build caches, and
        # under disk pressure the kubelet taints the node and deletes unused images -- with
        # containerd 1.6 the sandbox (pause) image is not pinned and would go too.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "512Mi",
                         "imagefs.available": "512Mi", "nodefs.inodesFree": "1%"},
        "nodeStatusReportFrequency": "10s",
        # Pod resync (default 1m) also refreshes Secret/ConfigMap volumes: prometheus-operator
        # writes Prometheus's config into a Secret, so a new ServiceMonitor became a target
        # only after up to a minute; 10 s keeps that short.
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "maxPods": 60,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def _prepare_kubelet(ctx: Ctx) -> None:
    _dir(ctx, "kubelet").mkdir(parents=True, exist_ok=True)
    _dir(ctx, "pod-logs").mkdir(parents=True, exist_ok=True)
    _dir(ctx, "kubelet-config.json").write_text(json.dumps(_kubelet_config(ctx), indent=2))
    write_kubeconfig(ctx.kubeconfig("kubelet"), ctx.server, ctx.pki, "kubelet")


def _kubelet(ctx: Ctx) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
    return [
        str(paths.binary("kubelet")),
        f"--config={_dir(ctx, 'kubelet-config.json')}",
        f"--kubeconfig={ctx.kubeconfig('kubelet')}",
        f"--root-dir={_dir(ctx, 'kubelet')}",
        f"--cert-dir={_dir(ctx, 'kubelet', 'pki')}",
        f"--node-ip={network.NODE_IP}",
        f"--hostname-override={NODE_NAME}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def _kubelet_health(ctx: Ctx) -> tuple[bool, str]:
    code, body = http_get(f"http://127.0.0.1:{ctx.ports['kubelet-healthz']}/healthz")
    return code == 200 and body.strip() == "ok", body.strip()[:200]


# ----------------------------------------------------------------------------- kube-proxy


def _prepare_kube_proxy(ctx: Ctx) -> None:
    write_kubeconfig(ctx.kubeconfig("kube-proxy"), ctx.server, ctx.pki, "kube-proxy")
    cfg = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(ctx.kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": network.NODE_IP,
        "clusterCIDR": network.POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{ctx.ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ctx.ports['kube-proxy-metrics']}",
        "nodePortAddresses": [f"{network.NODE_IP}/32"],  # NodePorts only on our bridge
        "conntrack": {"maxPerCore": 0},  # leave the machine's conntrack limits alone
        "iptables": {"localhostNodePorts": False},
    }
    _dir(ctx, "kube-proxy-config.json").write_text(json.dumps(cfg, indent=2))


def _kube_proxy(ctx: Ctx) -> list[str]:
    return [str(paths.binary("kube-proxy")), f"--config={_dir(ctx, 'kube-proxy-config.json')}",
            "--v=1"]


def _kube_proxy_health(ctx: Ctx) -> tuple[bool, str]:
    code, body = http_get(f"http://127.0.0.1:{ctx.ports['kube-proxy-healthz']}/healthz")
    return code == 200, body.strip()[:200]


def _cleanup_kube_proxy(ctx: Ctx) -> None:
    """Remove kube-proxy's iptables chains (``kube-proxy --cleanup``)."""
    binary = paths.binary("kube-proxy")
    if binary.exists():
        subprocess.run([str(binary), "--cleanup", "--v=0"], capture_output=True, check=False,
                       timeout=60)


# ----------------------------------------------------------------------------- teardown


def running_tasks(ctx: Ctx) -> list[str]:
    proc = ctr(ctx, "tasks", "ls", "-q", timeout=20)
    return proc.stdout.split() if proc.returncode == 0 else []


def _cleanup_containers(ctx: Ctx) -> None:
    """Kill and remove every container the node still has (after the kubelet stopped)."""
    if not socket(ctx).exists():
        return
    for task in running_tasks(ctx):
        ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", task, timeout=20)
    deadline = time.monotonic() + 20
    while running_tasks(ctx) and time.monotonic() < deadline:
        for task in running_tasks(ctx):
            ctr(ctx, "tasks", "rm", "-f", task, timeout=20)
        time.sleep(0.2)
    proc = ctr(ctx, "containers", "ls", "-q", timeout=20)
    for cid in proc.stdout.split():
        ctr(ctx, "containers", "rm", cid, timeout=20)


def _our_mounts(roots: list[Path]) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(r) or point.startswith(str(r) + "/") for r in roots):
                out.append(point)
    return out


def mounts(ctx: Ctx) -> list[str]:
    """Mounts under the node's directories (kubelet volumes, container root filesystems)."""
    return _our_mounts([ctx.state_dir, paths.containerd_root()])


def _unmount_all(ctx: Ctx) -> None:
    for point in sorted(mounts(ctx), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def cgroups() -> list[Path]:
    """The kubelet's cgroups (``kubepods`` in every v1 controller), deepest first."""
    found: list[Path] = []
    if not CGROUP_ROOT.exists():
        return found
    for controller in CGROUP_ROOT.iterdir():
        top = controller / KUBEPODS
        if top.is_dir():
            found += sorted((p for p in top.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True)
            found.append(top)
    return found


def _remove_cgroups() -> None:
    for _ in range(3):
        for cg in cgroups():
            with contextlib.suppress(OSError):
                cg.rmdir()
        if not cgroups():
            return
        time.sleep(0.5)


def netns_left() -> list[str]:
    """CNI network namespaces still present (containerd names them ``cni-<uuid>``)."""
    return sorted(p.name for p in NETNS_DIR.glob("cni-*")) if NETNS_DIR.exists() else []


def _remove_netns() -> None:
    for name in netns_left():
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _cleanup_containerd(ctx: Ctx) -> None:
    _unmount_all(ctx)
    _remove_netns()
    _remove_cgroups()


def leftovers(ctx: Ctx) -> list[str]:
    """Everything of the node still on the machine (empty after a clean ``down``); network
    namespaces that were there before it started (``stale_netns``) are not its own."""
    stale = set(stale_netns(ctx))
    return ([f"mount {m}" for m in mounts(ctx)]
            + [f"netns {n}" for n in netns_left() if n not in stale]
            + [f"cgroup {c}" for c in cgroups()] + network.leftovers())


PROCESSES: tuple[Process, ...] = (
    Process("containerd", _containerd, _containerd_health,
            lambda ctx: f"unix://{socket(ctx)}", after=("kube-apiserver",),
            prepare=_prepare_containerd, cleanup=_cleanup_containerd, real_node=True),
    Process("kubelet", _kubelet, _kubelet_health,
            lambda ctx: f"http://127.0.0.1:{ctx.ports.get('kubelet-healthz', 0)}/healthz",
            ports=("kubelet", "kubelet-healthz"), after=("containerd", "kube-apiserver"),
            prepare=_prepare_kubelet, cleanup=_cleanup_containers, real_node=True, grace=20),
    Process("kube-proxy", _kube_proxy, _kube_proxy_health,
            lambda ctx: f"http://127.0.0.1:{ctx.ports.get('kube-proxy-healthz', 0)}/healthz",
            ports=("kube-proxy-healthz", "kube-proxy-metrics"), after=("kube-apiserver",),
            prepare=_prepare_kube_proxy, cleanup=_cleanup_kube_proxy, real_node=True),
)


def prerequisites_line() -> str | None:
    """One line saying what to install/change for a real node, or None when all is there."""
    missing = network.missing_prerequisites()
    return "; ".join(missing) if missing else None
