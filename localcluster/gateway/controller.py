"""The gateway controller: watches Gateway API objects, programs nginx, writes status.

``Controller.run`` lists and watches GatewayClasses, Gateways, HTTPRoutes, Services,
EndpointSlices, Namespaces and XBackendTrafficPolicies (one thread per kind: list, then watch
from the list's resourceVersion; a 410 or any error re-lists after a backoff of 1 s doubling
to 30 s; a cluster without the policies' CRD has none, listed again with that backoff), and
after the first full list of every kind renders (``render``) at most once per ``debounce``
seconds while anything changes. The routing configuration goes to ``nginx.DataPlane.apply``
(written atomically, ``nginx -t``, reload only when the text changed); a text nginx refuses
keeps the old one serving and sets every owned Gateway's ``Programmed=False`` with nginx's
message. It writes status (GatewayClass ``Accepted``; Gateway ``Accepted``/``Programmed``,
listeners, ``addresses`` = the data plane Service's clusterIP; HTTPRoute ``status.parents[]``
and XBackendTrafficPolicy ``status.ancestors[]`` entries of ``CONTROLLER_NAME``, other
controllers' entries kept) only where it changed, and serves ``/healthz`` (200 once nginx
serves a configuration rendered from a full list) and ``/metrics`` (``METRICS``, the retry
budget's counters read from the routing tier at each scrape) on its own port. nginx runs as
its child: when either master dies ``run`` returns 1 and the process exits, so the kubelet
restarts the pod.

``KubeApi`` is the only code here that talks to the API server (the ``kubernetes`` client);
the tests drive ``Controller`` with a fake of it. Started by ``__main__``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from localcluster.gateway import render
from localcluster.gateway.nginx import Applied, NginxError

GROUP = render.GROUP
VERSION = "v1"


@dataclass(frozen=True)
class Kind:
    """One watched kind: how to list/watch it and where its status goes."""

    name: str  # the plural, as the API spells it
    group: str  # "" = core
    version: str
    namespaced: bool
    status: bool = False  # this controller writes its status
    optional: bool = False  # a cluster without its CRD has none of it (not an error)


KINDS = (
    Kind("gatewayclasses", GROUP, VERSION, False, status=True),
    Kind("gateways", GROUP, VERSION, True, status=True),
    Kind("httproutes", GROUP, VERSION, True, status=True),
    Kind("services", "", "v1", True),
    Kind("endpointslices", "discovery.k8s.io", "v1", True),
    Kind("namespaces", "", "v1", False),
    Kind("xbackendtrafficpolicies", render.POLICY_GROUP, "v1alpha1", True, status=True,
         optional=True),
)
KIND = {k.name: k for k in KINDS}

METRICS = {
    "reloads": "msv_gateway_reloads_total",
    "reload_errors": "msv_gateway_reload_errors_total",
    "generation": "msv_gateway_config_generation",
    "routes": "msv_gateway_routes",
    "endpoints": "msv_gateway_upstream_endpoints",
    "watch_restarts": "msv_gateway_watch_restarts_total",
    "requests": "msv_gateway_nginx_requests_total",
    "connections": "msv_gateway_nginx_connections",
    "status_writes": "msv_gateway_status_writes_total",
    "backend_requests": "msv_gateway_backend_requests_total",
    "retries": "msv_gateway_retries_total",
}
"""The series ``/metrics`` serves (docs/gateway.md, Metrics)."""


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


class Conflict(Exception):
    """A status write raced another writer (HTTP 409): the next pass writes again."""


class NotFound(RuntimeError):
    """The API server does not serve the path (HTTP 404): for a list, the kind's CRD is not
    installed."""


class Api(Protocol):
    """What the controller needs of the API server (``KubeApi``; a fake in the tests)."""

    def list(self, kind: Kind) -> tuple[list[dict[str, Any]], str]: ...

    def watch(self, kind: Kind, resource_version: str, timeout: int
              ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def replace_status(self, kind: Kind, obj: Mapping[str, Any]) -> None: ...


class Plane(Protocol):
    """What the controller needs of the data plane (``nginx.DataPlane``)."""

    def start(self, routing_text: str) -> None: ...

    def apply(self, routing_text: str) -> Applied: ...

    def alive(self) -> bool: ...

    def dead(self) -> str: ...


# -- the Kubernetes client ----------------------------------------------------------------------


class KubeApi:
    """``Api`` over the ``kubernetes`` client: raw JSON lists and watches, PUT .../status."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        import kubernetes  # the image has it; the pure modules never import it

        if kubeconfig:
            kubernetes.config.load_kube_config(kubeconfig)
        else:
            kubernetes.config.load_incluster_config()
        self.client = kubernetes.client.ApiClient()

    def _path(self, kind: Kind, namespace: str = "", name: str = "") -> str:
        base = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
        ns = f"/namespaces/{namespace}" if namespace else ""
        return f"{base}{ns}/{kind.name}" + (f"/{name}" if name else "")

    def _call(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
              body: Any = None, timeout: float | tuple[float, float] = 30) -> Any:
        """The urllib3 response of one request, not read yet; Gone/Conflict/RuntimeError
        for a 410/409/other error status."""
        method_, url, headers, payload, _post = self.client.param_serialize(
            method, path, query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self.client.call_api(method_, url, header_params=headers, body=payload,
                                    _request_timeout=timeout)
        if resp.status >= 400:
            text = resp.read().decode("utf-8", "replace")[:500]
            if resp.status == 410:
                raise Gone(text)
            if resp.status == 409:
                raise Conflict(text)
            if resp.status == 404:
                raise NotFound(f"{method} {path}: HTTP 404: {text}")
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text}")
        return resp

    def list(self, kind: Kind) -> tuple[list[dict[str, Any]], str]:
        data = json.loads(self._call("GET", self._path(kind)).read())
        return list(data.get("items") or []), str(data["metadata"].get("resourceVersion", ""))

    def watch(self, kind: Kind, resource_version: str, timeout: int
              ) -> Iterator[tuple[str, dict[str, Any]]]:
        resp = self._call("GET", self._path(kind), [
            ("watch", "true"), ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"), ("timeoutSeconds", timeout)],
            timeout=(10, timeout + 30)).response  # urllib3's, streamed
        try:
            buf = b""
            # as each chunk arrives; a last line without its newline counts too
            for chunk in itertools.chain(resp.stream(64 * 1024), [b"\n"]):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(str(obj.get("message")))
                        raise RuntimeError(f"watch {kind.name}: {obj.get('message', obj)}")
                    yield str(event.get("type")), obj
        finally:
            resp.release_conn()

    def replace_status(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        path = self._path(kind, meta.get("namespace", "") if kind.namespaced else "",
                          meta["name"]) + "/status"
        self._call("PUT", path, body=dict(obj)).read()


# -- the object store ------------------------------------------------------------------------


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an object: everything but managedFields (often most of its bytes)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _okey(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Store:
    """The latest object of each kind by (namespace, name); ``changed`` is set on any change."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k.name: {}
                                                                            for k in KINDS}
        self.synced = {k.name: threading.Event() for k in KINDS}
        self.changed = threading.Event()

    def replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        with self.lock:
            self.objects[kind] = {_okey(o): _slim(o) for o in items}
        self.synced[kind].set()
        self.changed.set()

    def event(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        with self.lock:
            if type_ == "DELETED":
                self.objects[kind].pop(_okey(obj), None)
            else:
                self.objects[kind][_okey(obj)] = _slim(obj)
        self.changed.set()

    def all_synced(self) -> bool:
        return all(e.is_set() for e in self.synced.values())

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            return {k: list(v.values()) for k, v in self.objects.items()}

    def get(self, kind: str, key: tuple[str, str]) -> dict[str, Any] | None:
        with self.lock:
            return self.objects[kind].get(key)

    def get_all(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.objects[kind].values())


# -- the controller ----------------------------------------------------------------------------


@dataclass
class Settings:
    options: render.Options
    service: tuple[str, str] = ("msv-gateway", "msv-gateway")
    """The data plane's Service: its clusterIP goes into the Gateways' status.addresses."""
    controller_name: str = render.CONTROLLER_NAME
    debounce: float = 0.5
    watch_timeout: int = 300
    max_backoff: float = 30.0


@dataclass
class _Stats:
    generation: int = 0
    routes: int = 0
    backends: dict[tuple[str, str, int], int] = field(default_factory=dict)
    watch_restarts: dict[str, int] = field(default_factory=dict)
    status_writes: int = 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(self, api: Api, plane: Plane, settings: Settings,
                 log: Callable[[str], None] | None = None,
                 stub_status: Callable[[], dict[str, int]] | None = None,
                 reload_counts: Callable[[], tuple[int, int]] | None = None,
                 budget_counters: Callable[[], dict[str, dict[str, int]]] | None = None
                 ) -> None:
        self.api, self.plane, self.settings = api, plane, settings
        self.store = Store()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stats = _Stats(watch_restarts={k.name: 0 for k in KINDS})
        self.stopping = threading.Event()
        self.started = False  # nginx serves a configuration rendered from a full list
        self.last_error = ""
        self._stub_status = stub_status
        self._reload_counts = reload_counts or (lambda: (0, 0))
        self._budget_counters = budget_counters
        self._last_render = 0.0
        self._render_lock = threading.Lock()

    # -- watching ------------------------------------------------------------------------

    def watch_kind(self, kind: Kind) -> None:
        """List, then watch from the list's version; re-list after 410 or any error. An
        optional kind the API server does not serve counts as listed and empty, and is
        listed again after the backoff (logged once, until it is served)."""
        backoff = 1.0
        missing = False
        while not self.stopping.is_set():
            try:
                try:
                    items, rv = self.api.list(kind)
                except NotFound:
                    if not kind.optional:
                        raise
                    if not missing:
                        missing = True
                        self.log(f"{kind.name}.{kind.group} is not served (its CRD is not "
                                 "installed): none of them; listing again with a backoff")
                    if self.store.get_all(kind.name) or not self.store.synced[kind.name].is_set():
                        self.store.replace(kind.name, [])
                    if self.stopping.wait(backoff):
                        return
                    backoff = min(self.settings.max_backoff, backoff * 2)
                    continue
                if missing:
                    missing = False
                    self.log(f"{kind.name}.{kind.group} is served now")
                self.store.replace(kind.name, items)
                backoff = 1.0
                while not self.stopping.is_set():
                    for type_, obj in self.api.watch(kind, rv, self.settings.watch_timeout):
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            rv = str(new_rv)
                        if type_ in ("ADDED", "MODIFIED", "DELETED"):
                            self.store.event(kind.name, type_, obj)
                        if self.stopping.is_set():
                            return
                    # the server ended the watch (its timeout): go on from rv
            except Gone:
                self.stats.watch_restarts[kind.name] += 1
                self.log(f"watch {kind.name}: resourceVersion expired; listing again")
            except Exception as e:
                self.stats.watch_restarts[kind.name] += 1
                self.log(f"watch {kind.name}: {type(e).__name__}: {e}; listing again in "
                         f"{backoff:.0f} s")
                if self.stopping.wait(backoff):
                    return
                backoff = min(self.settings.max_backoff, backoff * 2)

    # -- one pass ------------------------------------------------------------------------

    def _options(self, snap: Mapping[str, list[dict[str, Any]]]) -> render.Options:
        opts = self.settings.options
        svc = next((s for s in snap["services"] if _okey(s) == self.settings.service), None)
        ip = str(((svc or {}).get("spec") or {}).get("clusterIP") or "")
        addresses = (ip,) if ip and ip != "None" else ()
        return dataclasses.replace(opts, addresses=addresses)

    def render_once(self) -> render.Rendered:
        """Render the store, serve the result, write the status that changed."""
        with self._render_lock:
            return self._render_once()

    def _render_once(self) -> render.Rendered:
        snap = self.store.snapshot()
        out = render.render(render.Objects(
            gateway_classes=snap["gatewayclasses"], gateways=snap["gateways"],
            routes=snap["httproutes"], services=snap["services"],
            endpoint_slices=snap["endpointslices"], namespaces=snap["namespaces"],
            policies=snap["xbackendtrafficpolicies"]),
            self._options(snap), self.settings.controller_name)
        if not self.started:
            self.plane.start(out.config)
            self.started, applied = True, Applied(True)
        else:
            applied = self.plane.apply(out.config)
        if applied.changed:
            self.stats.generation += 1
            self.log(f"configuration {self.stats.generation} serving "
                     f"({out.attached_routes} routes)")
        if applied.error and applied.error != self.last_error:
            self.log(f"nginx refused the configuration; the previous one keeps serving: "
                     f"{applied.error}")
        self.last_error = applied.error
        self.stats.routes, self.stats.backends = out.attached_routes, out.backends
        self._write_status(out, applied.error)
        return out

    def _write_status(self, out: render.Rendered, nginx_error: str) -> None:
        now = _now()
        for name, status in out.gateway_classes.items():
            self._put(KIND["gatewayclasses"], ("", name), status, now)
        for key, status in out.gateways.items():
            if nginx_error:
                status = render.programmed_false(status, nginx_error)
            self._put(KIND["gateways"], key, status, now)
        snap = self.store.snapshot()
        for route in snap["httproutes"]:
            self._put_entries(KIND["httproutes"], route, "parents", "parentRef",
                              out.routes.get(_okey(route), []), now)
        for policy in snap["xbackendtrafficpolicies"]:
            self._put_entries(KIND["xbackendtrafficpolicies"], policy, "ancestors",
                              "ancestorRef", out.policies.get(_okey(policy), []), now,
                              limit=render.MAX_ANCESTORS)

    def _put_entries(self, kind: Kind, obj: Mapping[str, Any], list_name: str, ref: str,
                     want: list[dict[str, Any]], now: str, limit: int | None = None) -> None:
        """Replace this controller's entries of ``status.<list_name>`` (keyed by ``ref``) with
        ``want``, other controllers' entries kept (at most ``limit`` entries in all)."""
        ours = self.settings.controller_name
        status = obj.get("status") or {}
        entries = list(status.get(list_name) or [])
        mine = [p for p in entries if p.get("controllerName") == ours]
        if not want and not mine:
            return
        old_by_ref = {json.dumps(p.get(ref), sort_keys=True): p for p in mine}
        stamped = []
        for p in want:
            old = old_by_ref.get(json.dumps(p[ref], sort_keys=True), {})
            stamped.append({**p, "conditions": render.stamp_conditions(
                p["conditions"], old.get("conditions") or [], now)})
        others = [p for p in entries if p.get("controllerName") != ours]
        if limit is not None:
            stamped = stamped[:max(0, limit - len(others))]
        self._put(kind, _okey(obj), {**status, list_name: others + stamped}, now, stamp=False)

    def _put(self, kind: Kind, key: tuple[str, str], status: Mapping[str, Any], now: str,
             stamp: bool = True) -> None:
        obj = self.store.get(kind.name, key)
        if obj is None:
            return
        old = obj.get("status") or {}
        new = dict(status)
        if stamp:
            new["conditions"] = render.stamp_conditions(status.get("conditions", []),
                                                        old.get("conditions") or [], now)
            if "listeners" in new:
                old_lis = {lis.get("name"): lis for lis in old.get("listeners") or []}
                new["listeners"] = [{**lis, "conditions": render.stamp_conditions(
                    lis["conditions"], (old_lis.get(lis["name"]) or {}).get("conditions") or [],
                    now)} for lis in new["listeners"]]
        if new == old:
            return
        try:
            self.api.replace_status(kind, {**obj, "status": new})
            self.stats.status_writes += 1
        except Conflict:
            self.store.changed.set()  # the watch brings the newer object; write again then
        except Exception as e:
            self.log(f"status of {kind.name} {'/'.join(filter(None, key))}: "
                     f"{type(e).__name__}: {e}")

    # -- the loop --------------------------------------------------------------------------

    def run(self, sync_timeout: float = 120) -> int:
        """Watch, render and serve until stopped (0) or nginx died (1)."""
        threads = [threading.Thread(target=self.watch_kind, args=(k,), name=f"watch-{k.name}",
                                    daemon=True) for k in KINDS]
        for t in threads:
            t.start()
        deadline = time.monotonic() + sync_timeout
        while not self.store.all_synced():
            if self.stopping.wait(0.1):
                return 0
            if time.monotonic() > deadline:
                missing = [k for k, e in self.store.synced.items() if not e.is_set()]
                self.log(f"could not list {', '.join(missing)} in {sync_timeout:.0f} s "
                         "(RBAC? the Gateway API CRDs?); exiting")
                return 1
        while not self.stopping.is_set():
            if self.started and not self.plane.alive():
                self.log(f"{self.plane.dead() or 'nginx exited'}; exiting so the pod restarts")
                return 1
            if not self.store.changed.wait(1.0):
                continue
            wait = self._last_render + self.settings.debounce - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                break
            self.store.changed.clear()
            self._last_render = time.monotonic()
            try:
                self.render_once()
            except NginxError as e:
                self.log(str(e))
                return 1
        return 0

    def healthy(self) -> tuple[bool, str]:
        if not self.started:
            return False, "waiting for the first configuration"
        if not self.plane.alive():
            return False, self.plane.dead() or "nginx exited"
        return True, "ok"

    # -- metrics ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """The ``METRICS`` series (a prometheus_client collector)."""
        reloads, errors = self._reload_counts()
        yield CounterMetricFamily(METRICS["reloads"].removesuffix("_total"),
                                  "nginx reloads that took effect", value=reloads)
        yield CounterMetricFamily(METRICS["reload_errors"].removesuffix("_total"),
                                  "configurations nginx refused (the previous one kept serving)",
                                  value=errors)
        yield GaugeMetricFamily(METRICS["generation"], "configurations served since the start",
                                value=self.stats.generation)
        yield GaugeMetricFamily(METRICS["routes"], "HTTPRoutes attached to a Gateway",
                                value=self.stats.routes)
        eps = GaugeMetricFamily(METRICS["endpoints"], "ready endpoints of each backend",
                                labels=["namespace", "service", "port"])
        for (ns, svc, port), n in sorted(self.stats.backends.items()):
            eps.add_metric([ns, svc, str(port)], n)
        yield eps
        restarts = CounterMetricFamily(METRICS["watch_restarts"].removesuffix("_total"),
                                       "watches listed again after an error or 410",
                                       labels=["kind"])
        for kind, n in sorted(self.stats.watch_restarts.items()):
            restarts.add_metric([kind], n)
        yield restarts
        yield CounterMetricFamily(METRICS["status_writes"].removesuffix("_total"),
                                  "status subresource writes", value=self.stats.status_writes)
        if self._budget_counters is not None:
            try:
                counters = self._budget_counters()
            except (OSError, ValueError):
                counters = None
            if counters is not None:
                yield from budget_metrics(counters)
        if self._stub_status is not None:
            try:
                st = self._stub_status()
            except (OSError, ValueError, IndexError):
                return
            yield CounterMetricFamily(METRICS["requests"].removesuffix("_total"),
                                      "client requests the edge has read", value=st["requests"])
            conns = GaugeMetricFamily(METRICS["connections"], "client connections by state",
                                      labels=["state"])
            for state in ("reading", "writing", "waiting"):
                conns.add_metric([state], st.get(state, 0))
            yield conns


def budget_metrics(counters: Mapping[str, Mapping[str, int]]) -> Iterator[Any]:
    """The retry budget's series from the routing tier's counters (``Nginx.budget_counters``:
    ``namespace/name`` -> requests, retries_allowed, retries_rejected)."""
    requests = CounterMetricFamily(
        METRICS["backend_requests"].removesuffix("_total"),
        "requests to each backend Service (first tries), as its retry budget counts them",
        labels=["namespace", "service"])
    retries = CounterMetricFamily(
        METRICS["retries"].removesuffix("_total"),
        "retries to each backend Service: allowed by its retry budget or rejected (503)",
        labels=["namespace", "service", "result"])
    for backend, c in sorted(counters.items()):
        ns, _, svc = backend.partition("/")
        requests.add_metric([ns, svc], c.get("requests", 0))
        retries.add_metric([ns, svc, "allowed"], c.get("retries_allowed", 0))
        retries.add_metric([ns, svc, "rejected"], c.get("retries_rejected", 0))
    yield requests
    yield retries


# -- /healthz and /metrics ------------------------------------------------------------------


def serve_http(controller: Controller, port: int, address: str = "") -> ThreadingHTTPServer:
    """``/healthz`` and ``/metrics`` on ``port`` (a daemon thread)."""
    registry = CollectorRegistry()
    registry.register(controller)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, why = controller.healthy()
                body, code, ctype = (why + "\n").encode(), 200 if ok else 503, "text/plain"
            elif self.path == "/metrics":
                body, code = generate_latest(registry), 200
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, code, ctype = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
