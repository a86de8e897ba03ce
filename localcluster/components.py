"""What runs in a local cluster: one record per process (command, readiness check, teardown).

``cluster`` starts, checks, restarts and stops processes only through these records, so a new
component is a new ``Process`` here (or in ``realnode`` for the real node's), not new branches
there. ``Ctx`` is what a record needs to build its command: the state directory, the ports
picked at ``up`` and where the API server listens.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localcluster import certs, network, nodes, paths

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,Priority,"
    "PodSecurity,ResourceQuota,NodeRestriction,PodNodeSelector,PodTolerationRestriction,"
    "MutatingAdmissionWebhook,"
    "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"
)


@dataclass(frozen=True)
class Ctx:
    """A cluster's facts, as the records need them."""

    state_dir: Path
    ports: dict[str, int]
    real_node: bool

    @property
    def pki(self) -> certs.Pki:
        return certs.Pki(self.state_dir / "pki")

    @property
    def api_host(self) -> str:
        # With a real node, pods must reach the API server: it listens on the node's bridge.
        return network.NODE_IP if self.real_node else network.LOOPBACK

    @property
    def server(self) -> str:
        return f"https://{self.api_host}:{self.ports['kube-apiserver']}"

    def kubeconfig(self, client: str) -> Path:
        return self.state_dir / ("kubeconfig" if client == "admin" else f"kubeconfig-{client}")

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"


Check = Callable[[Ctx], tuple[bool, str]]


@dataclass(frozen=True)
class Process:
    """One long-running process of the cluster."""

    name: str
    command: Callable[[Ctx], list[str]]
    health: Check
    endpoint: Callable[[Ctx], str]
    ports: tuple[str, ...] = ()  # names of the ports to pick for it at ``up``
    after: tuple[str, ...] = ()  # processes that must be healthy before it starts
    prepare: Callable[[Ctx], None] | None = None  # write its config (before every start)
    cleanup: Callable[[Ctx], None] | None = None  # undo what it left (after it stopped)
    real_node: bool = False  # only in clusters with a real node
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL

    def executable(self, ctx: Ctx) -> str:
        return self.command(ctx)[0]


# ----------------------------------------------------------------------------- checks


def ssl_context(state_dir: Path, verify: bool = True) -> ssl.SSLContext:
    pki = certs.Pki(state_dir / "pki")
    if verify:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(pki.client_cert("admin")), str(pki.client_key("admin")))
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0
             ) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def http_ok(url: Callable[[Ctx], str], verify: bool = False) -> Check:
    """Healthy when GET ``url`` answers 200 with a body starting ``ok``."""
    def check(ctx: Ctx) -> tuple[bool, str]:
        u = url(ctx)
        tls = ssl_context(ctx.state_dir, verify) if u.startswith("https") else None
        code, body = http_get(u, tls)
        body = body.strip()
        return code == 200 and body.startswith("ok"), (body or str(code))[:200]
    return check


def _etcd_health(ctx: Ctx) -> tuple[bool, str]:
    code, body = http_get(_etcd_url(ctx) + "/health")
    return code == 200 and '"health":"true"' in body.replace(" ", ""), body.strip()[:200]


def write_kubeconfig(path: Path, server: str, pki: certs.Pki, client: str) -> None:
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


# ----------------------------------------------------------------------------- control plane


def _bin(name: str) -> str:
    return str(paths.binary(name))


def _etcd_url(ctx: Ctx) -> str:
    return f"http://127.0.0.1:{ctx.ports['etcd']}"


def _etcd(ctx: Ctx) -> list[str]:
    peer = f"http://127.0.0.1:{ctx.ports['etcd-peer']}"
    return [
        _bin("etcd"), "--name=localcluster", f"--data-dir={ctx.state_dir / 'etcd-data'}",
        f"--listen-client-urls={_etcd_url(ctx)}", f"--advertise-client-urls={_etcd_url(ctx)}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=localcluster={peer}", "--initial-cluster-state=new",
        "--unsafe-no-fsync=true", "--log-level=warn",
    ]


def _apiserver(ctx: Ctx) -> list[str]:
    pki = ctx.pki
    args = [
        _bin("kube-apiserver"), f"--etcd-servers={_etcd_url(ctx)}",
        f"--bind-address={ctx.api_host}", f"--advertise-address={ctx.api_host}",
        f"--secure-port={ctx.ports['kube-apiserver']}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={ADMISSION_PLUGINS}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={network.SERVICE_CIDR}",
        f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--requestheader-client-ca-file={pki.front_proxy_ca}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
        "--allow-privileged=true", "--profiling=false", "--v=1",
    ]
    if not ctx.real_node:
        # Endpoints may not hold loopback addresses, and without a real node no pod could
        # reach the API server through the `kubernetes` Service anyway.
        args.append("--endpoint-reconciler-type=none")
    return args


def _served_component(ctx: Ctx, binary: str, client: str) -> list[str]:
    """The flags kube-controller-manager and kube-scheduler share: their kubeconfig for the
    API, authentication and authorization, and a loopback secure port with its own certs."""
    kc = ctx.kubeconfig(client)
    return [
        _bin(binary),
        f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1", f"--secure-port={ctx.ports[binary]}",
        f"--cert-dir={ctx.state_dir / ('serving-' + client)}",
        "--leader-elect=false", "--profiling=false", "--v=1",
    ]


def _controller_manager(ctx: Ctx) -> list[str]:
    return [
        *_served_component(ctx, "kube-controller-manager", "controller-manager"),
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={ctx.pki.sa_key}",
        f"--root-ca-file={ctx.pki.ca}",
        f"--cluster-signing-cert-file={ctx.pki.ca}",
        f"--cluster-signing-key-file={ctx.pki.ca_key}",
        f"--service-cluster-ip-range={network.SERVICE_CIDR}",
        "--horizontal-pod-autoscaler-sync-period=10s",
    ]


def _scheduler(ctx: Ctx) -> list[str]:
    return _served_component(ctx, "kube-scheduler", "scheduler")


def _kwok(ctx: Ctx) -> list[str]:
    return [
        _bin("kwok"), f"--kubeconfig={ctx.kubeconfig('kwok')}",
        f"--config={paths.STAGES_DIR / 'node.yaml'}",
        f"--config={paths.STAGES_DIR / 'pod.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
        f"--cidr={network.KWOK_POD_CIDR}", f"--node-ip={network.LOOPBACK}",
        f"--server-address=127.0.0.1:{ctx.ports['kwok']}",
        "--node-lease-duration-seconds=40",
    ]


def _url(fmt: str, port: str) -> Callable[[Ctx], str]:
    return lambda ctx: fmt.format(host=ctx.api_host, port=ctx.ports.get(port, 0))


CONTROL_PLANE: tuple[Process, ...] = (
    Process("etcd", _etcd, _etcd_health, lambda ctx: _etcd_url(ctx) + "/health",
            ports=("etcd", "etcd-peer")),
    Process("kube-apiserver", _apiserver,
            http_ok(_url("https://{host}:{port}/readyz", "kube-apiserver"), verify=True),
            _url("https://{host}:{port}/readyz", "kube-apiserver"),
            ports=("kube-apiserver",), after=("etcd",)),
    Process("kube-controller-manager", _controller_manager,
            http_ok(_url("https://127.0.0.1:{port}/healthz", "kube-controller-manager")),
            _url("https://127.0.0.1:{port}/healthz", "kube-controller-manager"),
            ports=("kube-controller-manager",), after=("kube-apiserver",)),
    Process("kube-scheduler", _scheduler,
            http_ok(_url("https://127.0.0.1:{port}/healthz", "kube-scheduler")),
            _url("https://127.0.0.1:{port}/healthz", "kube-scheduler"),
            ports=("kube-scheduler",), after=("kube-apiserver",)),
    Process("kwok", _kwok, http_ok(_url("http://127.0.0.1:{port}/healthz", "kwok")),
            _url("http://127.0.0.1:{port}/healthz", "kwok"),
            ports=("kwok",), after=("kube-apiserver",)),
)
