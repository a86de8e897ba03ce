"""The activator (msv_operator.activator): routes and endpoints parsed from Kubernetes objects,
requests held then forwarded to a real loopback upstream, refusals, streaming, listeners
following the routes ConfigMap, KEDA's external scaler over real gRPC, the replicas' shared
counts and the metrics."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from msv_operator import spec, zero
from msv_operator.activator import peers as peers_mod
from msv_operator.activator import routes as r
from msv_operator.activator import scaler as sc
from msv_operator.activator.__main__ import build_parser
from msv_operator.activator.app import Activator, Config
from msv_operator.activator.holder import Holder, Signal
from msv_operator.activator.metrics import Metrics
from msv_operator.activator.proxy import RETRY_AFTER_SECONDS, Proxy

from localcluster.ports import free_port
from msv_contract import scaletozero as stz

NS, SVC, MS = "team", "sentiment", "sentiment"


def route(port: int, variant: str | None = None) -> r.Route:
    return r.Route(port=port, namespace=NS, service=SVC, service_port=80, modelservice=MS,
                   variant=variant)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def upstream_app(release: asyncio.Event | None = None) -> web.Application:
    """The stand-in model pod: echoes requests; /stream sends one event, waits, sends more."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "path": request.path_qs,
                                  "body": (await request.read()).decode(),
                                  "header": request.headers.get("x-test", "")})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        assert release is not None
        await release.wait()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@asynccontextmanager
async def activator_proxy(queue: int = 10, hold: float = 30.0, max_body: int = 1 << 20
                          ) -> AsyncIterator[tuple[Holder, Metrics, int]]:
    holder = Holder(queue, hold)
    metrics = Metrics(holder.held)
    proxy = Proxy(holder, metrics, bind="127.0.0.1", max_body=max_body)
    port = free_port()
    holder.set_routes({port: route(port)})
    await proxy.open(port)
    try:
        yield holder, metrics, port
    finally:
        await proxy.shutdown()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# -- routes and endpoints ---------------------------------------------------------------------
def test_routes_parse_and_bad_fields_are_named() -> None:
    text = json.dumps({"routes": [
        {"port": 20000, "namespace": NS, "service": SVC, "servicePort": 80,
         "modelservice": MS, "variant": None},
        {"port": 20001, "namespace": NS, "service": f"{SVC}-int8", "servicePort": 80,
         "modelservice": MS, "variant": "int8"}]})
    routes = r.parse_routes(text)
    assert routes[20000].target == (NS, MS, "")
    assert routes[20001].target == (NS, MS, "int8")
    assert r.parse_routes(None) == {}
    for bad, field in [({"routes": [{"port": "x"}]}, "routes[0].port"),
                       ({"routes": [{"port": 20000, "servicePort": 80, "namespace": NS,
                                     "service": "", "modelservice": MS}]},
                        "routes[0].service"),
                       ({"routes": {}}, "routes.json.routes")]:
        with pytest.raises(r.RouteError, match=field.replace("[", r"\[").replace("]", r"\]")):
            r.parse_routes(json.dumps(bad))


def _slice(managed_by: str, endpoints: list[tuple[str, bool | None]], port: int = 8080,
           name: str = "http") -> dict[str, Any]:
    return {"metadata": {"labels": {r.MANAGED_BY_LABEL: managed_by,
                                    r.SERVICE_NAME_LABEL: SVC}},
            "addressType": "IPv4", "ports": [{"name": name, "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {} if ready is None
                           else {"ready": ready}} for ip, ready in endpoints]}


def test_ready_endpoints_use_the_resolved_target_port_and_skip_not_ready_and_foreign() -> None:
    service = {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    slices = [_slice(r.CONTROLLER_MANAGED_BY, [("10.0.0.2", True), ("10.0.0.3", False),
                                               ("10.0.0.4", None)]),
              _slice(stz.SLICE_MANAGED_BY, [("10.9.9.9", True)], port=20000)]
    assert r.ready_endpoints(service, 80, slices) == [("10.0.0.2", 8080), ("10.0.0.4", 8080)]
    assert r.ready_endpoints(None, 80, slices) == []
    assert r.slice_selector(SVC) == (f"kubernetes.io/service-name={SVC},endpointslice."
                                     "kubernetes.io/managed-by=endpointslice-controller.k8s.io")


# -- holding and forwarding -------------------------------------------------------------------
def test_a_request_is_held_until_an_endpoint_is_ready_then_forwarded() -> None:
    async def main() -> None:
        async with serve_app(upstream_app()) as up, activator_proxy() as (holder, m, port), \
                aiohttp.ClientSession() as client:
            call = asyncio.create_task(client.post(
                f"http://127.0.0.1:{port}/v2/models/m/infer?x=1", data=b"payload",
                headers={"x-test": "kept"}))
            await wait_for(lambda: holder.held() == Counter({(NS, MS, ""): 1}), "held")
            assert not call.done()
            holder.set_endpoints(port, [("127.0.0.1", up)])
            response = await call
            assert response.status == 200
            assert int(response.headers[stz.HELD_HEADER]) >= 0
            assert await response.json() == {"method": "POST", "path": "/v2/models/m/infer?x=1",
                                              "body": "payload", "header": "kept"}
            assert holder.held() == Counter()
            # once ready, requests go straight through and are not marked held
            direct = await client.get(f"http://127.0.0.1:{port}/v2/health/ready")
            assert direct.status == 200 and stz.HELD_HEADER not in direct.headers
            assert sample(m, f"{stz.REQUESTS}_total", namespace=NS, modelservice=MS,
                          result="forwarded") == 2
            assert sample(m, f"{stz.HOLD_SECONDS}_count", namespace=NS, modelservice=MS) == 1
    run(main())


def test_a_full_queue_answers_503_with_retry_after() -> None:
    async def main() -> None:
        async with activator_proxy(queue=1) as (holder, m, port), \
                aiohttp.ClientSession() as client:
            first = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/v2/health/ready"))
            await wait_for(lambda: sum(holder.held().values()) == 1, "held")
            second = await client.get(f"http://127.0.0.1:{port}/v2/health/ready")
            assert second.status == 503
            assert second.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert "already waiting" in (await second.json())["error"]
            assert sample(m, f"{stz.REQUESTS}_total", namespace=NS, modelservice=MS,
                          result="full") == 1
            first.cancel()  # a client that gives up frees its place
            await wait_for(lambda: holder.held() == Counter(), "the place freed")
            third = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/v2"))
            await wait_for(lambda: sum(holder.held().values()) == 1, "held again")
            third.cancel()
    run(main())


def test_a_request_held_too_long_answers_503_with_a_json_error() -> None:
    async def main() -> None:
        async with activator_proxy(hold=0.2) as (holder, m, port), \
                aiohttp.ClientSession() as client:
            response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                          data=b"{}")
            assert response.status == 503
            assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
            assert "no pod was ready" in (await response.json())["error"]
            assert sample(m, f"{stz.REQUESTS}_total", namespace=NS, modelservice=MS,
                          result="timeout") == 1
            assert holder.held() == Counter()
    run(main())


def test_a_body_over_the_limit_answers_413() -> None:
    async def main() -> None:
        async with activator_proxy(max_body=1024) as (_, m, port), \
                aiohttp.ClientSession() as client:
            response = await client.post(f"http://127.0.0.1:{port}/v2/models/m/infer",
                                          data=b"x" * 4096)
            assert response.status == 413
            assert "1024 bytes" in (await response.json())["error"]
            assert sample(m, f"{stz.REQUESTS}_total", namespace=NS, modelservice=MS,
                          result="error") == 1
    run(main())


def test_streamed_answers_pass_through_as_they_come() -> None:
    async def main() -> None:
        release = asyncio.Event()
        async with serve_app(upstream_app(release)) as up, \
                activator_proxy() as (holder, _, port), aiohttp.ClientSession() as client:
            holder.set_endpoints(port, [("127.0.0.1", up)])
            response = await client.get(f"http://127.0.0.1:{port}/stream")
            assert response.headers["Content-Type"] == "text/event-stream"
            # the first event arrives while the pod still holds back the second
            first = await response.content.readuntil(b"\n\n")
            assert first == b"data: first\n\n" and not release.is_set()
            release.set()
            assert await response.content.read() == b"data: second\n\n"
    run(main())


def test_an_unreachable_pod_answers_502_not_a_hang() -> None:
    async def main() -> None:
        async with activator_proxy() as (holder, m, port), aiohttp.ClientSession() as client:
            holder.set_endpoints(port, [("127.0.0.1", free_port())])
            response = await client.get(f"http://127.0.0.1:{port}/v2")
            assert response.status == 502
            assert sample(m, f"{stz.REQUESTS}_total", namespace=NS, modelservice=MS,
                          result="error") == 1
    run(main())


# -- the app: routes ConfigMap -> listeners, Services -> endpoints ----------------------------
class FakeKube:
    """The two reads the activator makes, answered from dicts."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def get(self, api_version: str, kind: str, namespace: str, name: str
            ) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str
             ) -> list[dict[str, Any]]:
        assert kind == "EndpointSlice" and r.CONTROLLER_MANAGED_BY in label_selector
        service = label_selector.split(",")[0].split("=")[1]
        return self.slices.get((namespace, service), [])

    def routes(self, *ports: int) -> None:
        doc = {"routes": [{"port": p, "namespace": NS, "service": SVC, "servicePort": 80,
                           "modelservice": MS, "variant": None} for p in ports]}
        self.objects[("ConfigMap", "system", stz.ROUTES_CONFIGMAP)] = {
            "data": {stz.ROUTES_KEY: json.dumps(doc)}}


async def connects(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def test_listeners_follow_the_routes_configmap_and_endpoints_follow_the_service() -> None:
    async def main() -> None:
        kube = FakeKube()
        app = Activator(Config(namespace="system", bind="127.0.0.1", retire_seconds=0.3), kube)
        a, b = free_port(), free_port()
        kube.routes(a, b)
        await app.sync_routes()
        assert sorted(app.proxy.runners) == sorted([a, b])
        assert await connects(a) and await connects(b)
        kube.objects[("Service", NS, SVC)] = {"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080}]}}
        kube.slices[(NS, SVC)] = [_slice(r.CONTROLLER_MANAGED_BY, [("10.1.2.3", True)])]
        await app.sync_endpoints()
        assert app.holder.routes[a].endpoints == [("10.1.2.3", 8080)]
        kube.routes(a)
        await app.sync_routes()
        # a removed route keeps listening (kube-proxy may still send to it), with its
        # Service's endpoints, until retire_seconds have passed; then it closes
        assert sorted(app.proxy.runners) == sorted([a, b]) and await connects(b)
        kube.slices[(NS, SVC)] = [_slice(r.CONTROLLER_MANAGED_BY, [("10.1.2.4", True)])]
        await app.sync_endpoints()
        assert app.holder.routes[b].endpoints == [("10.1.2.4", 8080)]
        await asyncio.sleep(0.35)
        await app.sync_routes()
        assert list(app.proxy.runners) == [a]
        assert not await connects(b)
        # a malformed document keeps the routes there are
        kube.objects[("ConfigMap", "system", stz.ROUTES_CONFIGMAP)] = {
            "data": {stz.ROUTES_KEY: "{not json"}}
        await app.sync_routes()
        assert list(app.proxy.runners) == [a]
        await app.proxy.shutdown()
    run(main())


# -- KEDA's external scaler over real gRPC ----------------------------------------------------
def _call(channel: grpc.aio.Channel, rpc: str) -> Any:
    request, response, streaming = sc.METHODS[rpc]
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(f"/{sc.SERVICE}/{rpc}",
                request_serializer=sc.message(request).SerializeToString,
                response_deserializer=sc.message(response).FromString)


def test_the_scaler_reports_held_requests_and_pushes_when_one_is_held() -> None:
    async def main() -> None:
        holder = Holder(10, 30.0)
        port = 20000
        holder.set_routes({port: route(port, "int8")})
        scaler = sc.Scaler(lambda: dict(holder.held()), holder.changed)
        server, bound = await sc.serve(scaler, "127.0.0.1", 0)
        ref = sc.message("ScaledObjectRef")(
            name="sentiment-int8", namespace=NS,
            scalerMetadata={"namespace": NS, "modelservice": MS, "variant": "int8"})
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
                assert (await _call(channel, "IsActive")(ref)).result is False
                spec = await _call(channel, "GetMetricSpec")(ref)
                assert spec.metricSpecs[0].metricName == sc.METRIC
                assert spec.metricSpecs[0].targetSizeFloat == 1.0
                stream = _call(channel, "StreamIsActive")(ref)
                assert (await stream.read()).result is False
                held = asyncio.create_task(holder.acquire(port))
                assert (await stream.read()).result is True  # pushed, not polled
                assert (await _call(channel, "IsActive")(ref)).result is True
                request = sc.message("GetMetricsRequest")(scaledObjectRef=ref,
                                                          metricName=sc.METRIC)
                values = (await _call(channel, "GetMetrics")(request)).metricValues
                assert (values[0].metricValue, values[0].metricValueFloat) == (1, 1.0)
                # another variant of the same ModelService is not active
                other = sc.message("ScaledObjectRef")(
                    name="x", namespace=NS, scalerMetadata={"modelservice": MS})
                assert (await _call(channel, "IsActive")(other)).result is False
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _call(channel, "IsActive")(sc.message("ScaledObjectRef")(name="y"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "modelservice" in (err.value.details() or "")
                stream.cancel()
                held.cancel()
        finally:
            await server.stop(None)
    run(main())


def test_a_variant_sees_the_requests_held_on_its_own_and_on_the_stable_service() -> None:
    counts = {(NS, MS, ""): 2, (NS, MS, "int8"): 1, (NS, "other", ""): 5}
    scaler = sc.Scaler(lambda: counts, Signal())
    assert scaler.count((NS, MS, "int8")) == 3
    assert scaler.count((NS, MS, "baseline")) == 2  # the stable Service may route to it
    assert scaler.count((NS, MS, "")) == 2
    assert scaler.count((NS, "absent", "int8")) == 0


def test_the_operator_and_the_activator_agree_on_routes_slices_and_the_scaler() -> None:
    """What the operator writes (routes ConfigMap, EndpointSlice, ScaledObject trigger) is
    what the activator reads."""
    b = {"metadata": {"name": MS, "namespace": NS, "uid": "u"},
         "spec": {"model": {"uri": "s3://m/x", "framework": "transformers",
                            "task": "text-classification"},
                  "variants": [{"name": "baseline"}, {"name": "int8"}],
                  "traffic": [{"variant": "baseline", "weight": 100}],
                  "autoscaling": {"maxReplicas": 3, "minReplicas": 0}}}
    parsed = spec.parse_spec(b)
    able = zero.Ability(keda=True, activator="msv-system/a", scaler_address="10.0.0.9:9090",
                        activator_ips=("10.1.0.5",), prometheus_url="http://prom:9090")
    so = zero.build_scaled_object({"name": "x"}, parsed, "int8", "x", able, 0, None)
    push = next(t for t in so["spec"]["triggers"] if t["type"] == "external-push")
    assert push["metadata"]["scalerAddress"].endswith(f":{stz.SCALER_PORT}")
    ref = sc.message("ScaledObjectRef")(name="x", namespace=NS, scalerMetadata={
        k: v for k, v in push["metadata"].items() if k != "scalerAddress"})
    assert sc.target_of(ref) == (NS, MS, "int8")
    lo = stz.PORT_RANGE[0]
    routes = zero.assign_ports([], NS, MS, [(SVC, 80, None), (f"{SVC}-int8", 80, "int8")])
    cm = zero.build_routes("msv-system", routes)
    read = r.parse_routes(cm["data"][stz.ROUTES_KEY])
    assert {p: (x.service, x.service_port, x.variant) for p, x in read.items()} == {
        lo: (SVC, 80, None), lo + 1: (f"{SVC}-int8", 80, "int8")}
    held = zero.HeldService(f"{SVC}-int8", "int8")
    sl = zero.build_slice({"name": f"{SVC}-int8-activator", "namespace": NS}, held,
                          {"http": lo + 1}, able.activator_ips)
    assert [p["port"] for p in sl["ports"]] == [lo + 1]
    assert read[sl["ports"][0]["port"]].service == held.service


def test_the_proto_has_keda_field_numbers() -> None:
    ref = sc.message("ScaledObjectRef").DESCRIPTOR
    assert [(f.name, f.number) for f in ref.fields] == [
        ("name", 1), ("namespace", 2), ("scalerMetadata", 3)]
    value = sc.message("MetricValue").DESCRIPTOR
    assert [(f.name, f.number) for f in value.fields] == [
        ("metricName", 1), ("metricValue", 2), ("metricValueFloat", 3)]
    assert ref.file.package == "externalscaler"


# -- replicas share their counts --------------------------------------------------------------
def test_peers_add_up_expire_and_refuse_malformed_messages() -> None:
    now = [0.0]
    own: Counter[tuple[str, str, str]] = Counter({(NS, MS, ""): 1})
    signal_fired: list[bool] = []

    class Sig:
        def fire(self) -> None:
            signal_fired.append(True)

    peers = peers_mod.Peers("a", lambda: own, Sig(), port=1, ttl=3.0,  # type: ignore[arg-type]
                            clock=lambda: now[0])
    peers.receive(peers_mod.encode("b", {(NS, MS, ""): 2, (NS, MS, "int8"): 1}))
    assert peers.counts() == {(NS, MS, ""): 3, (NS, MS, "int8"): 1}
    assert signal_fired == [True]
    peers.receive(peers_mod.encode("a", {(NS, MS, ""): 9}))  # its own echo is ignored
    assert peers.counts()[(NS, MS, "")] == 3
    now[0] = 5.0
    assert peers.counts() == {(NS, MS, ""): 1}
    with pytest.raises(peers_mod.PeerError, match="'held' rows"):
        peers.receive({"id": "c", "held": [["a", "b", 3]]})


def test_a_replica_sends_its_counts_to_the_others_at_once() -> None:
    async def main() -> None:
        kube = FakeKube()
        receiver = Activator(Config(namespace="system", pod_name="b"), kube)
        async with serve_app(receiver.admin_app()) as admin_port:
            holder = Holder(10, 30.0)
            holder.set_routes({20000: route(20000)})
            sender = peers_mod.Peers("a", holder.held, holder.changed, port=admin_port,
                                     interval=30.0)
            sender.addresses = ["127.0.0.1"]
            task = asyncio.create_task(sender.run())
            held = asyncio.create_task(holder.acquire(20000))
            await wait_for(lambda: receiver.scaler.counts().get((NS, MS, "")) == 1,
                           "the other replica knows of the held request")
            held.cancel()
            await wait_for(lambda: receiver.scaler.counts().get((NS, MS, ""), 0) == 0,
                           "the other replica knows it left")
            task.cancel()
            async with aiohttp.ClientSession() as client:
                bad = await client.post(f"http://127.0.0.1:{admin_port}{peers_mod.PATH}",
                                        json={"id": ""})
                assert bad.status == 400
                metrics = await (await client.get(
                    f"http://127.0.0.1:{admin_port}/metrics")).text()
                assert f"# TYPE {stz.HELD} gauge" in metrics
                assert f"# TYPE {stz.REQUESTS}_total counter" in metrics
                assert (await client.get(f"http://127.0.0.1:{admin_port}/readyz")).status \
                    == 503  # the routes were never read
    run(main())


def test_flags_default_to_the_contract() -> None:
    args = build_parser().parse_args([])
    assert (args.queue, args.hold_seconds, args.scaler_port) == (
        stz.DEFAULT_QUEUE, stz.DEFAULT_HOLD_SECONDS, stz.SCALER_PORT)
    assert build_parser().parse_args(["--queue", "5"]).queue == 5
