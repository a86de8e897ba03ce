"""One HTTP/1.1 listener per route port: each request is held until the route's Service has a
ready pod (``Holder.acquire``), then forwarded to that pod and its answer streamed back
(server-sent events and chunked answers pass through as they come).

The request body is read whole before holding (at most ``max_body`` bytes, 413 beyond): a
held request costs its body in memory, and a body read once can be sent again to another
pod when the first refuses the connection. The answer is never buffered. Refusals are JSON
``{"error": ...}`` (the model server's error form) with ``Retry-After``: 503 when the queue is
full or the hold time ran out, 502 when no ready pod accepted the connection. WebSocket
upgrades and HTTP/2 (the gRPC front end) are not proxied (docs/scale-to-zero.md).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from msv_contract import scaletozero as stz
from msv_operator.activator.holder import Full, Gone, Holder, TimedOut
from msv_operator.activator.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a refused request."""
DEFAULT_MAX_BODY = 64 * 2**20
"""Largest request body held (bytes)."""
CONNECT_SECONDS = 5.0
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "proxy-connection",
})
_ROUTE_PORT: web.AppKey[int] = web.AppKey("route_port", int)


def refusal(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _request_headers(request: web.BaseRequest) -> dict[str, str]:
    drop = HOP_BY_HOP | {h.strip().lower()
                         for h in request.headers.get("Connection", "").split(",")}
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in drop and k.lower() != "content-length"}
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


class Proxy:
    """The listeners and the forwarding; ``open``/``close`` per route port."""

    def __init__(self, holder: Holder, metrics: Metrics, *, bind: str = "0.0.0.0",
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.holder = holder
        self.metrics = metrics
        self.bind = bind
        self.max_body = max_body
        self.runners: dict[int, web.AppRunner] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS),
                connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False))
        return self._session

    async def open(self, port: int) -> None:
        app = web.Application(client_max_size=self.max_body, handler_args={"access_log": None})
        app[_ROUTE_PORT] = port
        app.router.add_route("*", "/{tail:.*}", self.handle)
        # handler_cancellation: a client that hangs up while held leaves the queue at once
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=self.holder.hold_seconds)
        await runner.setup()
        await web.TCPSite(runner, self.bind, port, reuse_address=True).start()
        self.runners[port] = runner
        log.info("Listening on port %d", port)

    async def close(self, port: int) -> None:
        """Stop accepting on ``port``; requests under way finish in the background."""
        runner = self.runners.pop(port, None)
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        task = asyncio.create_task(runner.cleanup())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("Closed port %d", port)

    async def shutdown(self) -> None:
        for port in list(self.runners):
            await self.close(port)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        port = request.app[_ROUTE_PORT]
        state = self.holder.routes.get(port)
        if state is None:
            return refusal(503, "this port routes to no Service any more; retry")
        target = state.route.target
        what = f"{state.route.namespace}/{state.route.service}"
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.result(target, "error")
            return web.json_response(
                {"error": f"request body larger than {self.max_body} bytes, the most the "
                          "activator holds while the model scales up from zero"}, status=413)
        tried: set[tuple[str, int]] = set()
        while True:
            try:
                endpoint, held = await self.holder.acquire(port)
            except Full:
                self.metrics.result(target, "full")
                return refusal(503, f"{what} is scaling up from zero and {self.holder.queue} "
                                    "requests are already waiting; retry later")
            except TimedOut:
                self.metrics.result(target, "timeout")
                log.warning("Held a request to %s for %.0f s without a ready pod", what,
                            self.holder.hold_seconds)
                return refusal(503, f"{what} is scaling up from zero: no pod was ready after "
                                    f"{self.holder.hold_seconds:g} s; retry later")
            except Gone:
                self.metrics.result(target, "error")
                return refusal(503, f"{what} is no longer routed through the activator; retry")
            if endpoint in tried:
                self.metrics.result(target, "error")
                return refusal(502, f"no ready pod of {what} accepted the connection; retry")
            tried.add(endpoint)
            try:
                upstream = await self.session.request(
                    request.method, f"http://{_host(endpoint[0])}:{endpoint[1]}"
                                    f"{request.raw_path}",
                    headers=_request_headers(request), data=body or None,
                    allow_redirects=False)
            except (TimeoutError, aiohttp.ClientConnectorError) as e:
                # not connected: nothing was sent, another ready pod may take it
                log.info("Pod %s:%d of %s did not take a request: %s", *endpoint, what, e)
                continue
            except aiohttp.ClientError as e:
                # sent, then cut: not sent again (a request may not be safe to repeat)
                self.metrics.result(target, "error")
                log.warning("Pod %s:%d of %s failed a request: %s", *endpoint, what, e)
                return refusal(502, f"the pod of {what} closed the connection: {e}")
            self.metrics.result(target, "forwarded")
            if held is not None:
                self.metrics.held_for(target, held)
                log.info("Forwarded a request to %s held %.3f s", what, held)
            return await self._relay(request, upstream, held)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     held: float | None) -> web.StreamResponse:
        async with upstream:
            drop = HOP_BY_HOP | {h.strip().lower()
                                 for h in upstream.headers.get("Connection", "").split(",")}
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in drop:
                    response.headers.add(key, value)
            if held is not None:
                response.headers[stz.HELD_HEADER] = str(round(held * 1000))
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError) as e:
                log.info("Answer cut short: %s", e)
                raise
            await response.write_eof()
            return response


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
