"""Starts, checks, repairs and stops a local cluster: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok (simulated GPU pools) and, with a real node,
containerd, a kubelet and kube-proxy, all owned by one state directory.

What each process runs and how it is checked lives in ``components`` (control plane) and
``realnode``; this module only starts, waits for, restarts and stops ``Process`` records.

The state directory (``paths.resolve_state_dir``) holds ``state.json`` (ports and pids),
the PKI, etcd's data, one kubeconfig per client and ``logs/<component>.log``. Several
clusters can run side by side with different state directories; ports are picked free at
``up`` time. ``down`` stops exactly the pids it recorded and keeps only the logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import (
    addons,
    build,
    certs,
    components,
    images,
    keda,
    locks,
    monitoring,
    network,
    nodes,
    paths,
    ports,
    realnode,
)
from localcluster.gateway import install as gateway_install

# The machine's one real node (its bridge, iptables and kubelet cgroups are host-wide):
# which state directory runs it.
REAL_NODE_OWNER = Path("/run/msv-localcluster/real-node-owner")


class ClusterError(RuntimeError):
    """The control plane could not be started or is unhealthy; the message says why."""


class NotBuiltError(ClusterError):
    """The binaries are missing: run ``python -m localcluster build``."""


@dataclass
class Cluster:
    """A running control plane, as callers (tests, scripts) need it."""

    state_dir: Path
    ports: dict[str, int]
    reused: bool = False
    real_node: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return components.Ctx(self.state_dir, self.ports, self.real_node).server

    @property
    def kubectl(self) -> Path:
        return paths.kubectl()

    @property
    def helm(self) -> Path:
        return paths.helm()

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, the matching kubectl/helm first on PATH."""
        path = os.pathsep.join(
            [str(self.kubectl.parent), str(self.helm.parent), os.environ.get("PATH", "")]
        )
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig), PATH=path)

    def kubectl_run(self, *args: str, input: str | None = None, check: bool = True,
                    timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl against this cluster; raises ClusterError if ``check``."""
        proc = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each named CRD reports ``Established=True``.

        Polls instead of ``kubectl wait --for=condition=Established``: in the moment after
        a CRD is created its ``status.conditions`` is still absent, and kubectl's wait
        fails on that instead of waiting.
        """
        deadline = time.monotonic() + timeout
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        for name in crds:
            while True:
                proc = self.kubectl_run("get", f"crd/{name}", f"-o=jsonpath={jsonpath}",
                                        check=False)
                if proc.returncode == 0 and proc.stdout.strip() == "True":
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"CRD {name} not Established after {timeout:.0f}s "
                        f"({proc.stderr.strip() or 'status: ' + (proc.stdout or 'none')}); "
                        f"inspect it with: kubectl get crd/{name} -o yaml")
                time.sleep(0.2)

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl <args> -o json``, parsed."""
        return json.loads(self.kubectl_run(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> str:
        """``kubectl apply`` a manifest (a dict, or YAML/JSON text)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = [f"--namespace={namespace}"] if namespace else []
        return self.kubectl_run("apply", *ns, "-f", "-", input=text).stdout


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    alive: bool
    healthy: bool
    endpoint: str
    detail: str = ""
    log: Path | None = None
    log_tail: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def real_node_default() -> bool:
    """Whether ``up`` adds the real node unless told: yes, unless ``MSV_REAL_NODE=0``."""
    return os.environ.get("MSV_REAL_NODE", "1") != "0"


def processes(real_node: bool) -> tuple[components.Process, ...]:
    """The processes of a cluster, in start order."""
    every = components.CONTROL_PLANE + realnode.PROCESSES
    return tuple(p for p in every if real_node or not p.real_node)


def _by_name(name: str) -> components.Process:
    for p in components.CONTROL_PLANE + realnode.PROCESSES:
        if p.name == name:
            return p
    raise KeyError(name)


def _ctx(sd: Path, state: dict[str, Any]) -> components.Ctx:
    return components.Ctx(sd, state["ports"], bool(state.get("real_node", False)))


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_state_file(state_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = _state_file(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, _state_file(state_dir))


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down/release on one state directory."""
    return locks.held(path / ".lock")


def _free_ports(names: list[str]) -> dict[str, int]:
    """Distinct free loopback ports, one per name (localcluster.ports)."""
    return dict(zip(names, ports.free_ports(len(names)), strict=True))


def _proc_alive(pid: int | None, binary: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, runs ``binary``."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap our own dead child
        return False
    if binary is None:
        return True
    if cmdline and cmdline[0]:
        return cmdline[0].decode(errors="replace") == binary
    # Right after exec the kernel has switched the image but not yet published argv, so
    # cmdline reads empty for a moment: ask which file the process executes instead.
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(binary)
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def _wait(what: str, check: Callable[[], tuple[bool, str]], deadline: float,
          died: Callable[[], str | None] = lambda: None) -> None:
    last = ""
    while True:
        ok, last = check()
        if ok:
            return
        reason = died()
        if reason:
            raise ClusterError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what} (last: {last})")
        time.sleep(0.25)


def _kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    return cluster.kubectl_run(*args, input=stdin).stdout


def api_get(cluster: Cluster, path: str) -> dict[str, Any]:
    """GET a Kubernetes API path as the admin user (used for readiness checks)."""
    code, body = components.http_get(cluster.server + path,
                                     components.ssl_context(cluster.state_dir), timeout=5)
    if code != 200:
        raise ClusterError(f"GET {path}: HTTP {code}: {body[:200]}")
    data: dict[str, Any] = json.loads(body)
    return data


# ----------------------------------------------------------------------------- up/down/status


def _alive(ctx: components.Ctx, state: dict[str, Any], p: components.Process) -> bool:
    return _proc_alive(state.get("pids", {}).get(p.name), p.executable(ctx))


def status(state_dir: str | os.PathLike[str] | None = None) -> list[ComponentStatus]:
    """Report each component of the cluster in ``state_dir`` (empty list: not running)."""
    sd = paths.resolve_state_dir(state_dir)
    state = _read_state(sd)
    if not state:
        return []
    ctx = _ctx(sd, state)
    out = []
    for p in processes(ctx.real_node):
        if any(port not in ctx.ports for port in p.ports):
            continue  # started by an older localcluster that lacked this component
        pid = state.get("pids", {}).get(p.name)
        alive = _alive(ctx, state, p)
        healthy, detail = p.health(ctx) if alive else (False, "not running")
        st = ComponentStatus(p.name, pid, alive, healthy, p.endpoint(ctx), detail, ctx.log(p.name))
        if not healthy:
            st.log_tail = _log_tail(ctx.log(p.name))
        out.append(st)
    return out


def is_healthy(state_dir: str | os.PathLike[str] | None = None) -> bool:
    st = status(state_dir)
    return bool(st) and all(s.healthy for s in st)


def current(state_dir: str | os.PathLike[str] | None = None) -> Cluster | None:
    """The healthy cluster in ``state_dir``, or None."""
    sd = paths.resolve_state_dir(state_dir)
    state = _read_state(sd)
    if state and is_healthy(sd):
        return Cluster(sd, state["ports"], reused=True, real_node=bool(state.get("real_node")))
    return None


def up(state_dir: str | os.PathLike[str] | None = None, *, timeout: float = 180,
       out: Callable[[str], None] = lambda _line: None, owner: str | None = None,
       user: int | None = None, real_node: bool | None = None) -> Cluster:
    """Start the cluster (or reuse a healthy one, or restart only its dead parts).

    ``real_node`` (default: ``real_node_default()``) adds the real node (containerd, kubelet,
    kube-proxy; needs root) beside kwok's simulated GPU pools; without it the CPU nodes are
    simulated too. A cluster with dead components keeps its data: only what is missing is
    started again. ``owner`` is recorded when it starts: "pytest" lets the last test session
    stop it (see ``release``); "cli" (the ``up`` command) also claims a reused cluster so tests
    never stop it. ``user`` (a pid) registers that process as a user of the cluster.
    Raises NotBuiltError if the binaries are missing and ClusterError (naming the component
    and its log) if anything fails to become healthy within ``timeout`` seconds.
    """
    want_real = real_node_default() if real_node is None else real_node
    missing = build.missing_binaries()
    if missing:
        raise NotBuiltError(
            f"control-plane binaries not built ({', '.join(missing)}); "
            "run: python -m localcluster build"
        )
    sd = paths.resolve_state_dir(state_dir)
    with _locked(sd):
        state = _read_state(sd)
        c = current(sd)
        if c:
            out(f"cluster already running ({c.server}); reusing it")
            if owner == "cli" and state and state.get("owner") != "cli":
                state["owner"] = "cli"  # someone asked for it by hand: tests must not stop it
                _write_state(sd, state)
            if c.real_node and state:
                # Images rebuilt since it started (or removed by the kubelet) are imported
                # again; unchanged ones cost one `ctr images ls`.
                _load_images(_ctx(sd, state), out)
                _ensure_monitoring(c, out)
                _ensure_keda(c, out)
                _ensure_gateway(c, out)
        elif state and _repairable(sd, state):
            c = _repair(sd, state, timeout, out)
        else:
            if state:
                out("stopping the remains of a previous cluster that cannot be repaired")
                _stop(sd)
            if want_real:
                _check_real_node_possible(sd)
            c = _start_retrying_busy_ports(sd, timeout, out, owner or "api", want_real)
        if user:
            acquire(sd, user)
        return c


def _check_real_node_possible(sd: Path) -> None:
    line = realnode.prerequisites_line()
    if line:
        raise ClusterError(line)
    other = _real_node_owner()
    if other and other != sd and is_healthy(other):
        raise ClusterError(
            f"another local cluster already runs the machine's one real node (state dir "
            f"{other}); stop it with: python -m localcluster down --state-dir {other} "
            "- or start this one with --no-real-node")


def _real_node_owner() -> Path | None:
    try:
        return Path(REAL_NODE_OWNER.read_text().strip())
    except (FileNotFoundError, OSError):
        return None


def _repairable(sd: Path, state: dict[str, Any]) -> bool:
    """A cluster whose PKI and etcd data exist can have its dead processes restarted."""
    return (sd / "pki").is_dir() and (sd / "etcd-data").is_dir() and bool(state.get("ports"))


def _start_process(ctx: components.Ctx, state: dict[str, Any], p: components.Process) -> None:
    if p.prepare:
        p.prepare(ctx)
    log = open(ctx.log(p.name), "ab")  # noqa: SIM115 - handed to the child
    log.write(f"\n==== localcluster up {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        p.command(ctx), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=ctx.state_dir, start_new_session=True,
    )
    log.close()
    state["pids"][p.name] = proc.pid
    _write_state(ctx.state_dir, state)


def _run_processes(ctx: components.Ctx, state: dict[str, Any], todo: list[components.Process],
                   deadline: float, out: Callable[[str], None], t0: float,
                   after_healthy: Callable[[str], None] = lambda _name: None) -> None:
    """Start ``todo`` in order, each once what it needs is healthy; wait until all are."""
    healthy = {p.name for p in processes(ctx.real_node) if p not in todo}

    def died(p: components.Process) -> Callable[[], str | None]:
        def check() -> str | None:
            if _alive(ctx, state, p):
                return None
            tail = "\n    ".join(_log_tail(ctx.log(p.name), 15))
            return f"{p.name} exited; see {ctx.log(p.name)}:\n    {tail}"
        return check

    def wait_healthy(p: components.Process) -> None:
        _wait(f"{p.name} to become healthy", lambda: p.health(ctx), deadline, died(p))
        healthy.add(p.name)
        out(f"  {p.name} healthy ({time.monotonic() - t0:.1f} s)")
        after_healthy(p.name)

    started: list[components.Process] = []
    for p in todo:
        for dep in p.after:
            waiting = next((q for q in started if q.name == dep and dep not in healthy), None)
            if waiting:
                wait_healthy(waiting)
        _start_process(ctx, state, p)
        started.append(p)
    for p in started:
        if p.name not in healthy:
            wait_healthy(p)


def _repair(sd: Path, state: dict[str, Any], timeout: float, out: Callable[[str], None]
            ) -> Cluster:
    t0 = time.monotonic()
    ctx = _ctx(sd, state)
    dead = [p for p in processes(ctx.real_node) if not _alive(ctx, state, p)]
    unhealthy = [p for p in processes(ctx.real_node) if p not in dead and not p.health(ctx)[0]]
    for p in unhealthy:  # alive but stuck: replace it too
        _signal_and_wait(state.get("pids", {}).get(p.name), p.executable(ctx), p.grace)
    todo = [p for p in processes(ctx.real_node) if p in dead or p in unhealthy]
    out(f"restarting {', '.join(p.name for p in todo)}; keeping the cluster's data")
    _run_processes(ctx, state, todo, t0 + timeout, out, t0)
    c = Cluster(sd, state["ports"], real_node=ctx.real_node)
    _wait_ready(c, ctx, t0 + timeout, out, t0)
    if ctx.real_node:
        _load_images(ctx, out)
        _ensure_monitoring(c, out)
        _ensure_keda(c, out)
        _ensure_gateway(c, out)
    return c


def _start_retrying_busy_ports(sd: Path, timeout: float, out: Callable[[str], None],
                               owner: str, real_node: bool, attempts: int = 3) -> Cluster:
    """Start; if a port picked as free was taken before a component bound it, pick new ports."""
    for attempt in range(1, attempts + 1):
        try:
            return _start(sd, timeout, out, owner, real_node)
        except ClusterError as e:
            _stop(sd)
            if "address already in use" not in str(e) or attempt == attempts:
                raise
            out(f"  a port was taken meanwhile ({str(e).splitlines()[0]}); retrying on new ports")
        except BaseException:
            _stop(sd)
            raise
    raise AssertionError("unreachable")


def _start(sd: Path, timeout: float, out: Callable[[str], None], owner: str,
           real_node: bool) -> Cluster:
    t0 = time.monotonic()
    deadline = t0 + timeout
    for d in ("etcd-data", "pki", "serving-controller-manager", "serving-scheduler"):
        shutil.rmtree(sd / d, ignore_errors=True)
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    procs = processes(real_node)
    ports = _free_ports([port for p in procs for port in p.ports])
    state: dict[str, Any] = {"ports": ports, "pids": {}, "started_at": time.time(),
                             "owner": owner, "real_node": real_node}
    ctx = _ctx(sd, state)
    pki = certs.generate(sd / "pki")
    cluster = Cluster(sd, ports, real_node=real_node)
    components.write_kubeconfig(cluster.kubeconfig, ctx.server, pki, "admin")
    for client in ("controller-manager", "scheduler", "kwok"):
        components.write_kubeconfig(ctx.kubeconfig(client), ctx.server, pki, client)
    _write_state(sd, state)
    if real_node:
        REAL_NODE_OWNER.parent.mkdir(parents=True, exist_ok=True)
        REAL_NODE_OWNER.write_text(str(sd))
        out("  setting up the real node's network (bridge "
            f"{network.BRIDGE}, {network.NODE_SUBNET})")
        network.setup()  # kube-apiserver listens on the bridge

    def after_healthy(name: str) -> None:
        if name == "kube-apiserver":
            _bootstrap_objects(cluster, real_node)

    _run_processes(ctx, state, list(procs), deadline, out, t0, after_healthy)
    _wait_ready(cluster, ctx, deadline, out, t0)
    if real_node:
        _load_images(ctx, out)  # unbounded by ``timeout``: a first import moves gigabytes
        _install_monitoring(cluster, out)
        _install_keda(cluster, out)
        _install_gateway(cluster, out)  # after monitoring: its ServiceMonitor needs the CRD
    return cluster


def _bootstrap_objects(cluster: Cluster, real_node: bool) -> None:
    """The simulated node pool, once the API server answers."""
    _kubectl(cluster, "apply", "--server-side", "-f", "-",
             stdin=json.dumps(nodes.pool_manifest(real_node=real_node)))


def _install_monitoring(cluster: Cluster, out: Callable[[str], None]) -> None:
    """Prometheus (via prometheus-operator) and metrics-server, as pods on the real node."""
    try:
        monitoring.install(cluster, out=out)
    except (monitoring.MonitoringError, subprocess.CalledProcessError) as e:
        raise ClusterError(f"the monitoring stack did not start: {e}") from e


def _ensure_monitoring(cluster: Cluster, out: Callable[[str], None]) -> None:
    """Install the monitoring stack again if a part of it is missing or unhealthy."""
    if not all(ok for _name, ok, _detail in monitoring.health(cluster)):
        _install_monitoring(cluster, out)


def _install_keda(cluster: Cluster, out: Callable[[str], None]) -> None:
    """KEDA's operator and metrics adapter (external.metrics.k8s.io), as pods on the real
    node, with its CRDs."""
    try:
        keda.install(cluster, out=out)
    except (keda.KedaError, monitoring.MonitoringError, addons.AddonError,
            subprocess.CalledProcessError) as e:
        raise ClusterError(f"KEDA did not start: {e}") from e


def _ensure_keda(cluster: Cluster, out: Callable[[str], None]) -> None:
    """Install KEDA again if a part of it is missing or unhealthy."""
    if not all(ok for _name, ok, _detail in keda.health(cluster)):
        _install_keda(cluster, out)


def _install_gateway(cluster: Cluster, out: Callable[[str], None]) -> None:
    """The Gateway API implementation (``localcluster.gateway``: nginx and its controller)
    as a pod on the real node, with the experimental-channel Gateway API CRDs."""
    try:
        gateway_install.install(cluster, out=out)
    except (gateway_install.GatewayError, ClusterError, subprocess.CalledProcessError) as e:
        raise ClusterError(f"the gateway did not start: {e}") from e


def _ensure_gateway(cluster: Cluster, out: Callable[[str], None]) -> None:
    """Apply the gateway again (idempotent; a rebuilt image rolls its pod, a missing or
    unhealthy part is restored) and wait until it is programmed."""
    _install_gateway(cluster, out)


def _load_images(ctx: components.Ctx, out: Callable[[str], None]) -> None:
    """Import the locally built images (every one: the model-server image of each runtime,
    operator, model-store, pause and the monitoring images)."""
    try:
        images.load(realnode.socket(ctx), out=out)
    except images.ImageError as e:
        raise ClusterError(f"{e}; build them with: python -m localcluster images build") from e


def _wait_ready(cluster: Cluster, ctx: components.Ctx, deadline: float,
                out: Callable[[str], None], t0: float) -> None:
    want = {n.name for n in nodes.DEFAULT_POOL}
    if ctx.real_node:
        want.add(realnode.NODE_NAME)

    def nodes_ready() -> tuple[bool, str]:
        ready = set()
        for item in api_get(cluster, "/api/v1/nodes").get("items", []):
            conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
            taints = [t["key"] for t in item.get("spec", {}).get("taints", []) or []
                      if t["key"].startswith("node.kubernetes.io/")]
            if conds.get("Ready") == "True" and not taints:
                ready.add(item["metadata"]["name"])
        return ready >= want, f"ready nodes: {sorted(ready)}"

    def default_sa() -> tuple[bool, str]:
        try:
            api_get(cluster, "/api/v1/namespaces/default/serviceaccounts/default")
        except ClusterError as e:
            return False, str(e)
        return True, ""

    _wait("the nodes to become Ready", nodes_ready, deadline)
    _wait("the default service account", default_sa, deadline)
    out(f"  {len(want)} nodes Ready ({time.monotonic() - t0:.1f} s)")


def _signal_and_wait(pid: int | None, binary: str, grace: float) -> bool:
    """SIGTERM ``pid`` if it runs ``binary``, SIGKILL after ``grace`` s; True if it ran."""
    if not pid or not _proc_alive(pid, binary):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while _proc_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if _proc_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _proc_alive(pid):
            time.sleep(0.05)
    return True


def _stop(sd: Path) -> list[str]:
    """Stop every recorded process (last started first) and undo what each left behind.

    With a real node, its pods are deleted through the API first (the kubelet then stops
    them through the CRI, which releases their network), while the API server still runs.
    """
    state = _read_state(sd) or {}
    stopped: list[str] = []
    if not state:
        return stopped
    ctx = _ctx(sd, {"ports": {}, **state})
    procs = processes(ctx.real_node)
    pids: dict[str, int] = state.get("pids", {})
    if ctx.real_node:
        _drain_real_node(sd, state, ctx)
    for p in reversed(procs):
        if _signal_and_wait(pids.get(p.name), p.executable(ctx), p.grace):
            stopped.append(p.name)
        if p.cleanup:
            p.cleanup(ctx)
    if ctx.real_node:
        network.teardown()
        if _real_node_owner() == sd:
            REAL_NODE_OWNER.unlink(missing_ok=True)
    for item in sd.iterdir() if sd.exists() else []:
        if item.name in ("logs", ".lock", realnode.STALE_NETNS):  # the last for `down`'s check
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return stopped


def _drain_real_node(sd: Path, state: dict[str, Any], ctx: components.Ctx) -> None:
    """Stop pod re-creation, delete the real node's pods and wait until the kubelet stopped
    their containers (bounded: anything left is killed through containerd afterwards)."""
    pids = state.get("pids", {})
    alive = {p.name for p in processes(True) if _alive(ctx, state, p)}
    if not {"kube-apiserver", "kubelet", "containerd"} <= alive:
        return
    for name in ("kube-controller-manager", "kube-scheduler"):
        _signal_and_wait(pids.get(name), _by_name(name).executable(ctx), 10)
    c = Cluster(sd, state["ports"], real_node=True)
    c.kubectl_run("delete", "pods", "--all-namespaces", "--grace-period=1", "--wait=false",
                  f"--field-selector=spec.nodeName={realnode.NODE_NAME}", check=False,
                  timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and realnode.running_tasks(ctx):
        time.sleep(0.5)


def down(state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Stop the cluster in ``state_dir`` and remove its state (logs are kept)."""
    sd = paths.resolve_state_dir(state_dir)
    if not sd.exists():
        return []
    with _locked(sd):
        return _stop(sd)


def leftovers(state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """What a real node left on the machine (mounts, netns, cgroups, bridge, rules); empty
    while another cluster's real node runs (those are its own, not leftovers)."""
    sd = paths.resolve_state_dir(state_dir)
    owner = _real_node_owner()
    if owner and owner != sd and (_read_state(owner) or {}).get("real_node"):
        return []
    return realnode.leftovers(components.Ctx(sd, {}, True))


def stale(state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """What an earlier run left that the real node found, could not remove and so does not
    count as its own (``realnode.stale_netns``)."""
    sd = paths.resolve_state_dir(state_dir)
    return [f"netns {n}" for n in realnode.stale_netns(components.Ctx(sd, {}, True))]


# ----------------------------------------------------------------------------- shared use


def acquire(state_dir: str | os.PathLike[str] | None = None, user: int | None = None) -> None:
    """Record that process ``user`` (default: this one) uses the cluster in ``state_dir``."""
    d = paths.resolve_state_dir(state_dir) / "users"
    d.mkdir(parents=True, exist_ok=True)
    (d / str(user or os.getpid())).touch()


def release(state_dir: str | os.PathLike[str] | None = None, user: int | None = None) -> bool:
    """Drop ``user``'s claim; stop the cluster if it was started for tests (owner "pytest")
    and no other live process still uses it. Returns True if it stopped the cluster."""
    sd = paths.resolve_state_dir(state_dir)
    with _locked(sd):
        d = sd / "users"
        (d / str(user or os.getpid())).unlink(missing_ok=True)
        others = [p for p in (d.iterdir() if d.exists() else []) if p.name.isdigit()]
        live = [p for p in others if _proc_alive(int(p.name))]
        for p in set(others) - set(live):
            p.unlink(missing_ok=True)
        state = _read_state(sd) or {}
        if live or state.get("owner") != "pytest":
            return False
        _stop(sd)
        return True
