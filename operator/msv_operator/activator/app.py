"""The activator process: reads the cluster, opens and closes the route listeners, serves the
scaler, the metrics and the peers' messages.

Two loops read the Kubernetes API (through ``msv_operator.kube``, in a worker thread, reads
served from the API server's watch cache):

* routes: the routes ConfigMap every ``poll`` seconds -> ``Holder.set_routes`` -> listeners
  opened and closed; a malformed document is logged and the previous routes are kept; a
  route the operator removed keeps its listener for ``retire_seconds`` (forwarding to the
  Service's ready pods), since kube-proxy may still send new connections to the activator
  for a moment after the operator removed its EndpointSlice;
* endpoints: for each routed Service, the Service and its controller-managed EndpointSlices
  -> each route's ready endpoints; every ``poll`` seconds, every ``fast_poll`` seconds while
  a request is held for it, and at once when a request starts being held. The activator's
  own Service gives the peers' addresses the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from msv_contract import scaletozero as stz
from msv_operator import kube as k
from msv_operator.activator import peers as peers_mod
from msv_operator.activator import routes as r
from msv_operator.activator import scaler as scaler_mod
from msv_operator.activator.holder import Holder
from msv_operator.activator.metrics import Metrics
from msv_operator.activator.proxy import DEFAULT_MAX_BODY, Proxy

log = logging.getLogger(__name__)

METRICS_PORT = 9091


@dataclass(frozen=True)
class Config:
    namespace: str
    routes_configmap: str = stz.ROUTES_CONFIGMAP
    routes_key: str = stz.ROUTES_KEY
    bind: str = "0.0.0.0"
    scaler_port: int = stz.SCALER_PORT
    metrics_port: int = METRICS_PORT
    queue: int = stz.DEFAULT_QUEUE
    hold_seconds: float = stz.DEFAULT_HOLD_SECONDS
    max_body: int = DEFAULT_MAX_BODY
    poll_seconds: float = 1.0
    fast_poll_seconds: float = 0.2
    peers_service: str = ""
    """The activator's own Service (its endpoints are the replicas); empty: no peers."""
    pod_name: str = "activator"
    pod_ip: str = ""
    retire_seconds: float = 10.0
    """How long a removed route keeps its listener (kube-proxy's lag after the slice goes);
    a connection there meanwhile is forwarded to a ready pod, never refused."""


class Activator:
    def __init__(self, config: Config, kube: Any) -> None:
        self.config = config
        self.kube = kube
        self.holder = Holder(config.queue, config.hold_seconds)
        self.metrics = Metrics(self.holder.held)
        self.proxy = Proxy(self.holder, self.metrics, bind=config.bind,
                           max_body=config.max_body)
        self.peers = peers_mod.Peers(config.pod_name, self.holder.held, self.holder.changed,
                                     port=config.metrics_port)
        self.scaler = scaler_mod.Scaler(self.peers.counts, self.holder.changed)
        self.routes_read = False
        self._routes_text: str | None = None
        self._routes: dict[int, r.Route] = {}
        self._retiring: dict[int, tuple[r.Route, float]] = {}
        """Removed routes still listening: port -> (route, when its listener closes)."""

    # -- routes ---------------------------------------------------------------------------
    async def sync_routes(self) -> None:
        c = self.config
        cm = await asyncio.to_thread(self.kube.get, "v1", "ConfigMap", c.namespace,
                                     c.routes_configmap)
        text = ((cm or {}).get("data") or {}).get(c.routes_key)
        self.routes_read = True
        now = asyncio.get_running_loop().time()
        expired = any(until <= now for _, until in self._retiring.values())
        if text == self._routes_text and not expired:
            return
        if text != self._routes_text:
            try:
                parsed = r.parse_routes(text)
            except r.RouteError as e:
                log.error("Kept the previous routes: ConfigMap %s/%s: %s", c.namespace,
                          c.routes_configmap, e)
                return
            self._routes_text = text
            for port, route in self._routes.items():
                if port not in parsed:
                    self._retiring[port] = (route, now + c.retire_seconds)
            self._routes = parsed
        for port in list(self._retiring):
            if port in self._routes or self._retiring[port][1] <= now:
                del self._retiring[port]
        routes = {**{p: route for p, (route, _) in self._retiring.items()}, **self._routes}
        opened, closed = self.holder.set_routes(routes)
        for port in closed:
            await self.proxy.close(port)
        for port in opened:
            try:
                await self.proxy.open(port)
            except OSError as e:
                log.error("Cannot listen on port %d for %s/%s: %s", port,
                          routes[port].namespace, routes[port].service, e)
        if opened or closed:
            await self.sync_endpoints()

    # -- endpoints ------------------------------------------------------------------------
    async def _ready(self, namespace: str, service: str, ports: list[int]
                     ) -> dict[int, list[tuple[str, int]]]:
        svc = await asyncio.to_thread(self.kube.get, "v1", "Service", namespace, service)
        slices = await asyncio.to_thread(self.kube.list, r.DISCOVERY_API, "EndpointSlice",
                                         namespace, r.slice_selector(service))
        return {p: r.ready_endpoints(svc, p, slices) for p in ports}

    async def sync_endpoints(self, only_held: bool = False) -> None:
        for (namespace, service), pairs in self.holder.services().items():
            if only_held and not self.holder.holding(namespace, service):
                continue
            try:
                ready = await self._ready(namespace, service, [sp for _, sp in pairs])
            except k.ApiError as e:
                log.warning("Cannot read the endpoints of %s/%s: %s", namespace, service, e)
                continue
            for port, service_port in pairs:
                self.holder.set_endpoints(port, ready[service_port])
        if self.config.peers_service and not only_held:
            try:
                ready = await self._ready(self.config.namespace, self.config.peers_service,
                                          [self.config.scaler_port])
            except k.ApiError as e:
                log.warning("Cannot read the activator's replicas: %s", e)
            else:
                self.peers.addresses = sorted({ip for ip, _ in ready[self.config.scaler_port]
                                               if ip != self.config.pod_ip})

    # -- loops ----------------------------------------------------------------------------
    async def routes_loop(self) -> None:
        while True:
            try:
                await self.sync_routes()
            except k.ApiError as e:
                log.warning("Cannot read the routes ConfigMap: %s", e)
            await asyncio.sleep(self.config.poll_seconds)

    async def endpoints_loop(self) -> None:
        wake = self.holder.changed.subscribe()
        loop = asyncio.get_running_loop()
        last_full = 0.0
        try:
            while True:
                wake.clear()
                full = loop.time() - last_full >= self.config.poll_seconds
                if full:
                    last_full = loop.time()
                await self.sync_endpoints(only_held=not full)
                held = any(s.held for s in self.holder.routes.values())
                wait = self.config.fast_poll_seconds if held else self.config.poll_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
        finally:
            self.holder.changed.unsubscribe(wake)

    # -- the metrics port: /metrics, /healthz, /readyz, the peers' messages ---------------
    def admin_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=self.metrics.exposition(),
                                content_type="text/plain", charset="utf-8")

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            if not self.routes_read:
                return web.Response(status=503, text="routes not read yet")
            return web.Response(text="ok")

        async def peer(request: web.Request) -> web.Response:
            try:
                self.peers.receive(await request.json())
            except (ValueError, peers_mod.PeerError) as e:
                return web.json_response({"error": str(e)}, status=400)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_post(peers_mod.PATH, peer)
        return app

    async def run(self, stop: asyncio.Event) -> None:
        c = self.config
        admin = web.AppRunner(self.admin_app(), access_log=None)
        await admin.setup()
        await web.TCPSite(admin, c.bind, c.metrics_port, reuse_address=True).start()
        grpc_server, _ = await scaler_mod.serve(self.scaler, c.bind, c.scaler_port)
        tasks = [asyncio.create_task(coro) for coro in
                 (self.routes_loop(), self.endpoints_loop(), self.peers.run())]
        log.info("Activator in namespace %s: routes from ConfigMap %s, queue %d, hold %g s",
                 c.namespace, c.routes_configmap, c.queue, c.hold_seconds)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.proxy.shutdown()
            await grpc_server.stop(grace=2)
            await admin.cleanup()
