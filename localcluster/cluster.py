"""Starts, checks and stops a local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, all on loopback, all owned by one state directory.

The state directory (``paths.resolve_state_dir``) holds ``state.json`` (ports and pids),
the PKI, etcd's data, one kubeconfig per client and ``logs/<component>.log``. Several
clusters can run side by side with different state directories; ports are picked free at
``up`` time. ``down`` stops exactly the pids it recorded and keeps only the logs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import build, certs, nodes, paths

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
              "metrics-server")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,Priority,"
    "PodSecurity,ResourceQuota,NodeRestriction,MutatingAdmissionWebhook,"
    "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"
)


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

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

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


def _executable(name: str) -> str:
    """What a component's process runs (its argv[0]); the metrics stand-in is Python."""
    return sys.executable if name == "metrics-server" else str(paths.binary(name))


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


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state directory across processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_ports(names: list[str]) -> dict[str, int]:
    """Ask the kernel for distinct free loopback ports (held open until all are chosen)."""
    socks, ports = [], {}
    try:
        for n in names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports[n] = s.getsockname()[1]
    finally:
        for s in socks:
            s.close()
    return ports


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


def _ssl_context(state_dir: Path, verify: bool = True) -> ssl.SSLContext:
    pki = certs.Pki(state_dir / "pki")
    if verify:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(pki.client_cert("admin")), str(pki.client_key("admin")))
    return ctx


def _http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0
              ) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def _endpoints(ports: dict[str, int]) -> dict[str, str]:
    return {
        "etcd": f"http://127.0.0.1:{ports['etcd']}/health",
        "kube-apiserver": f"https://127.0.0.1:{ports['kube-apiserver']}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{ports['kube-scheduler']}/healthz",
        "kwok": f"http://127.0.0.1:{ports['kwok']}/healthz",
        "metrics-server": f"https://127.0.0.1:{ports.get('metrics-server', 0)}/healthz",
    }


def _check_health(state_dir: Path, name: str, url: str) -> tuple[bool, str]:
    ctx = None
    if url.startswith("https"):
        ctx = _ssl_context(state_dir, verify=name in ("kube-apiserver", "metrics-server"))
    code, body = _http_get(url, ctx)
    body = body.strip()
    if name == "etcd":
        return code == 200 and '"health":"true"' in body.replace(" ", ""), body[:200]
    return code == 200 and body.startswith("ok"), (body or str(code))[:200]


def _write_kubeconfig(path: Path, server: str, pki: certs.Pki, client: str) -> None:
    # JSON is valid YAML; kubectl, client-go and the Python client all read it.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "localcluster", "cluster": {
            "server": server, "certificate-authority": str(pki.ca)}}],
        "users": [{"name": client, "user": {
            "client-certificate": str(pki.client_cert(client)),
            "client-key": str(pki.client_key(client))}}],
        "contexts": [{"name": "localcluster", "context": {
            "cluster": "localcluster", "user": client, "namespace": "default"}}],
        "current-context": "localcluster",
    }
    path.write_text(json.dumps(cfg, indent=2))
    path.chmod(0o600)


def _commands(state_dir: Path, ports: dict[str, int]) -> dict[str, list[str]]:
    pki = certs.Pki(state_dir / "pki")
    b = {n: _executable(n) for n in COMPONENTS}
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
    kc = {n: str(state_dir / f"kubeconfig-{n}") for n in ("controller-manager", "scheduler",
                                                          "kwok")}
    return {
        "etcd": [
            b["etcd"], "--name=localcluster", f"--data-dir={state_dir / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=localcluster={peer_url}", "--initial-cluster-state=new",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ],
        "kube-apiserver": [
            b["kube-apiserver"], f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
            f"--proxy-client-key-file={pki.front_proxy_client_key}",
            # Endpoints may not hold loopback addresses, and nothing runs in a pod here that
            # could reach the API server through the `kubernetes` Service anyway.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ],
        "kube-controller-manager": [
            b["kube-controller-manager"],
            f"--kubeconfig={kc['controller-manager']}",
            f"--authentication-kubeconfig={kc['controller-manager']}",
            f"--authorization-kubeconfig={kc['controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kube-controller-manager']}",
            f"--cert-dir={state_dir / 'serving-controller-manager'}",
            "--leader-elect=false", "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca}",
            f"--cluster-signing-cert-file={pki.ca}", f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--horizontal-pod-autoscaler-sync-period=10s",
            "--profiling=false", "--v=1",
        ],
        "kube-scheduler": [
            b["kube-scheduler"],
            f"--kubeconfig={kc['scheduler']}",
            f"--authentication-kubeconfig={kc['scheduler']}",
            f"--authorization-kubeconfig={kc['scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kube-scheduler']}",
            f"--cert-dir={state_dir / 'serving-scheduler'}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ],
        "kwok": [
            b["kwok"], f"--kubeconfig={kc['kwok']}",
            f"--config={paths.STAGES_DIR / 'node.yaml'}",
            f"--config={paths.STAGES_DIR / 'pod.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
        ],
        "metrics-server": [
            b["metrics-server"], "-m", "localcluster.metrics_server",
            f"--state-dir={state_dir}", f"--port={ports['metrics-server']}",
        ],
    }


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
    code, body = _http_get(cluster.server + path, _ssl_context(cluster.state_dir), timeout=5)
    if code != 200:
        raise ClusterError(f"GET {path}: HTTP {code}: {body[:200]}")
    data: dict[str, Any] = json.loads(body)
    return data


# ----------------------------------------------------------------------------- up/down/status


def status(state_dir: str | os.PathLike[str] | None = None) -> list[ComponentStatus]:
    """Report each component of the cluster in ``state_dir`` (empty list: not running)."""
    sd = paths.resolve_state_dir(state_dir)
    state = _read_state(sd)
    if not state:
        return []
    urls = _endpoints(state["ports"])
    out = []
    # A cluster started by an older localcluster may lack newer components: report what it has.
    recorded = [n for n in COMPONENTS if n in state.get("ports", {})] or list(COMPONENTS)
    for name in recorded:
        pid = state.get("pids", {}).get(name)
        log = sd / "logs" / f"{name}.log"
        alive = _proc_alive(pid, _executable(name))
        healthy, detail = _check_health(sd, name, urls[name]) if alive else (False, "not running")
        st = ComponentStatus(name, pid, alive, healthy, urls[name], detail, log)
        if not healthy:
            st.log_tail = _log_tail(log)
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
        return Cluster(sd, state["ports"], reused=True)
    return None


def up(state_dir: str | os.PathLike[str] | None = None, *, timeout: float = 120,
       out: Callable[[str], None] = lambda _line: None, owner: str | None = None,
       user: int | None = None) -> Cluster:
    """Start the control plane (or reuse a healthy one) and return when it is healthy.

    ``owner`` is recorded when it starts: "pytest" lets the last test session stop it (see
    ``release``); "cli" (the ``up`` command) also claims a reused cluster so tests never stop
    it. ``user`` (a pid) registers that process as a user of the cluster (see ``release``).
    Raises NotBuiltError if the binaries are missing and ClusterError (naming the component
    and its log) if anything fails to become healthy within ``timeout`` seconds.
    """
    missing = build.missing_binaries()
    if missing:
        raise NotBuiltError(
            f"control-plane binaries not built ({', '.join(missing)}); "
            "run: python -m localcluster build"
        )
    sd = paths.resolve_state_dir(state_dir)
    with _locked(sd):
        c = current(sd)
        if c:
            out(f"control plane already running ({c.server}); reusing it")
            state = _read_state(sd) or {}
            if owner == "cli" and state.get("owner") != "cli":
                state["owner"] = "cli"  # someone asked for it by hand: tests must not stop it
                _write_state(sd, state)
        else:
            if _read_state(sd):
                out("stopping the remains of a previous, unhealthy control plane")
                _stop(sd)
            c = _start_retrying_busy_ports(sd, timeout, out, owner or "api")
        if user:
            acquire(sd, user)
        return c


def _start_retrying_busy_ports(sd: Path, timeout: float, out: Callable[[str], None],
                               owner: str, attempts: int = 3) -> Cluster:
    """Start; if a port picked as free was taken before a component bound it, pick new ports."""
    for attempt in range(1, attempts + 1):
        try:
            return _start(sd, timeout, out, owner)
        except ClusterError as e:
            _stop(sd)
            if "address already in use" not in str(e) or attempt == attempts:
                raise
            out(f"  a port was taken meanwhile ({str(e).splitlines()[0]}); retrying on new ports")
        except BaseException:
            _stop(sd)
            raise
    raise AssertionError("unreachable")


def _start(sd: Path, timeout: float, out: Callable[[str], None], owner: str) -> Cluster:
    t0 = time.monotonic()
    deadline = t0 + timeout
    for d in ("etcd-data", "pki", "serving-controller-manager", "serving-scheduler"):
        shutil.rmtree(sd / d, ignore_errors=True)
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    pki = certs.generate(sd / "pki")
    ports = _free_ports(["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager",
                         "kube-scheduler", "kwok", "metrics-server"])
    cluster = Cluster(sd, ports)
    server = cluster.server
    _write_kubeconfig(cluster.kubeconfig, server, pki, "admin")
    for client in ("controller-manager", "scheduler", "kwok"):
        _write_kubeconfig(sd / f"kubeconfig-{client}", server, pki, client)
    cmds = _commands(sd, ports)
    state: dict[str, Any] = {"ports": ports, "pids": {}, "started_at": time.time(),
                             "owner": owner}
    _write_state(sd, state)
    urls = _endpoints(ports)

    def start(name: str) -> None:
        log = open(sd / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n==== localcluster up {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmds[name], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=sd, start_new_session=True,
        )
        log.close()
        state["pids"][name] = proc.pid
        _write_state(sd, state)

    def died(name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            if _proc_alive(state["pids"].get(name), cmds[name][0]):
                return None
            tail = "\n    ".join(_log_tail(sd / "logs" / f"{name}.log", 15))
            return f"{name} exited; see {sd / 'logs' / (name + '.log')}:\n    {tail}"
        return check

    def wait_healthy(name: str) -> None:
        _wait(f"{name} to become healthy", lambda: _check_health(sd, name, urls[name]),
              deadline, died(name))
        out(f"  {name} healthy ({time.monotonic() - t0:.1f} s)")

    start("etcd")
    wait_healthy("etcd")
    start("kube-apiserver")
    wait_healthy("kube-apiserver")
    from localcluster import metrics_server  # lazy: it is also run as `python -m`

    later = ("kube-controller-manager", "kube-scheduler", "kwok", "metrics-server")
    for name in later:
        start(name)
    ca_b64 = base64.b64encode(pki.ca.read_bytes()).decode()
    _kubectl(cluster, "apply", "--server-side", "-f", "-",
             stdin=json.dumps(nodes.pool_manifest()))
    _kubectl(cluster, "apply", "--server-side", "-f", "-",
             stdin=json.dumps(metrics_server.apiservice_manifests(ports["metrics-server"],
                                                                  ca_b64)))
    for name in later:
        wait_healthy(name)

    want = {n.name for n in nodes.DEFAULT_POOL}

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

    def metrics_available() -> tuple[bool, str]:
        svc = api_get(cluster, "/apis/apiregistration.k8s.io/v1/apiservices/"
                      f"{metrics_server.VERSION}.{metrics_server.GROUP}")
        conds = {c["type"]: c for c in svc.get("status", {}).get("conditions", [])}
        avail = conds.get("Available", {})
        return avail.get("status") == "True", str(avail.get("message", ""))

    _wait("the simulated nodes to become Ready", nodes_ready, deadline, died("kwok"))
    _wait("the metrics.k8s.io API", metrics_available, deadline, died("metrics-server"))
    _wait("the default service account", default_sa, deadline, died("kube-controller-manager"))
    out(f"  {len(want)} nodes Ready ({time.monotonic() - t0:.1f} s)")
    return cluster


def _stop(sd: Path, grace: float = 10) -> list[str]:
    """Stop every recorded pid (TERM, then KILL after ``grace`` s); returns what was stopped."""
    state = _read_state(sd) or {}
    stopped = []
    pids: dict[str, int] = state.get("pids", {})
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid and _proc_alive(pid, _executable(name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            stopped.append(name)
    end = time.monotonic() + grace
    for name in stopped:
        pid = pids[name]
        while _proc_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if _proc_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _proc_alive(pid):
                time.sleep(0.05)
    for item in sd.iterdir() if sd.exists() else []:
        if item.name in ("logs", ".lock"):
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return stopped


def down(state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Stop the cluster in ``state_dir`` and remove its state (logs are kept)."""
    sd = paths.resolve_state_dir(state_dir)
    if not sd.exists():
        return []
    with _locked(sd):
        return _stop(sd)


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
